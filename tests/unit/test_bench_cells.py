"""The cells runner of the served benchmarks (bench/cells.py): every cell of every configuration
measured in order through one server per configuration and stored one by one; a rerun starts no
server; a server that dies mid-run keeps what was stored and the next run resumes from it; the
key holds the settings and the result layout. The servers are stand-ins (served.py has its own
tests); the plan comes from make_plan on a fake build."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from tests.unit.fakebuild import fake_build
from tests.unit.fitfakes import bench_like
from turboctl.bench import cells
from turboctl.bench.served import ServerDied
from turboctl.build.manifest import Manifest
from turboctl.errors import ModelError, UsageError
from turboctl.kv.recipe import RecipePlan
from turboctl.paths import Paths, get_paths
from turboctl.ui import UI

SCHEMA = "turboctl.test.cells/1"


class FakeServer:
    """A BenchServer stand-in: ``answer(label, cell)`` is what it 'measures'; it dies (ServerDied)
    at the cell ``die_at`` names."""

    def __init__(self, cfg: RecipePlan, world: World) -> None:
        self.label = cfg.label
        self.world = world
        self.log = world.tmp / f"server-{cfg.label}.log"

    def __enter__(self) -> FakeServer:
        self.world.started.append(self.label)
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.world.stopped.append(self.label)


class World:
    def __init__(self, tmp: Path, m: Manifest, paths: Paths, model: Path) -> None:
        self.tmp, self.m, self.paths, self.model = tmp, m, paths, model
        self.started: list[str] = []
        self.stopped: list[str] = []
        self.measured: list[tuple[str, str, int]] = []  # label, cell, how many results before it
        self.die_at: tuple[str, str] | None = None

    def plan(self, kv: Sequence[str] = ("f16", "turbo4"), **kw: Any) -> cells.ServedPlan:
        return cells.make_plan(self.m, self.paths, UI(quiet=True), name="cells-test", schema=SCHEMA, model=self.model,
                               kv=kv, defaults=("f16",), context=kw.pop("context", 1024), **kw)

    def measure(self, server: Any, cell: cells.Cell, earlier: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        assert isinstance(server, FakeServer)
        if (server.label, cell.id) == self.die_at:
            raise ServerDied(f"llama-server exited while measuring {cell.id} (test)")
        self.measured.append((server.label, cell.id, len(earlier)))
        return {"answer": f"{server.label}:{cell.id}", "seen": [e["answer"] for e in earlier]}

    def run(self, plan: cells.ServedPlan, cs: Sequence[cells.Cell], version: int = 1) -> list[cells.ConfigCells]:
        return cells.run_cells(plan, self.m, self.paths, UI(quiet=True), cs, self.measure, result_version=version,
                               server=lambda cfg: FakeServer(cfg, self))  # type: ignore[arg-type,return-value]


@pytest.fixture
def world(tmp_path: Path) -> World:
    paths = get_paths()
    m = fake_build(paths.home)
    return World(tmp_path, m, paths, bench_like(tmp_path / "m.gguf"))


CELLS = [cells.Cell("a", {"prompt": "one"}), cells.Cell("b", {"prompt": "two"}), cells.Cell("c", {"prompt": "three"})]


def answers(out: Sequence[cells.ConfigCells]) -> list[list[tuple[str, str, bool]]]:
    return [[(r["cell"], r["answer"], r["cached"]) for r in c.results] for c in out]


def test_every_cell_in_order_through_one_server_per_configuration(world: World) -> None:
    out = world.run(world.plan(), CELLS)
    assert [c.config.label for c in out] == ["f16", "turbo4"]
    assert world.started == world.stopped == ["f16", "turbo4"]
    assert world.measured == [("f16", "a", 0), ("f16", "b", 1), ("f16", "c", 2),
                              ("turbo4", "a", 0), ("turbo4", "b", 1), ("turbo4", "c", 2)]
    assert answers(out) == [[(c.id, f"{label}:{c.id}", False) for c in CELLS] for label in ("f16", "turbo4")]
    # a cell sees the results of the cells before it in its configuration only
    assert out[1].results[2]["seen"] == ["turbo4:a", "turbo4:b"]
    assert out[0].results[0]["server_log"] == str(world.tmp / "server-f16.log") == out[0].server_log


def test_a_rerun_reads_the_store_and_starts_no_server(world: World) -> None:
    first = world.run(world.plan(), CELLS)
    world.started.clear()
    world.measured.clear()
    again = world.run(world.plan(), CELLS)
    assert world.started == [] and world.measured == []
    assert [[(r["cell"], r["answer"], r["seen"]) for r in c.results] for c in again] == \
        [[(r["cell"], r["answer"], r["seen"]) for r in c.results] for c in first]
    assert all(r["cached"] for c in again for r in c.results)
    assert again[0].server_log is None  # no server ran


def test_a_server_that_dies_keeps_what_was_measured_and_the_next_run_resumes(world: World) -> None:
    world.die_at = ("turbo4", "b")
    with pytest.raises(ServerDied, match="while measuring b"):
        world.run(world.plan(), CELLS)
    assert world.started == world.stopped == ["f16", "turbo4"]  # the dead server was still stopped
    assert world.measured == [("f16", "a", 0), ("f16", "b", 1), ("f16", "c", 2), ("turbo4", "a", 0)]
    world.die_at = None
    world.started.clear()
    world.measured.clear()
    out = world.run(world.plan(), CELLS)
    assert world.started == ["turbo4"]  # f16: every cell stored, no server
    assert world.measured == [("turbo4", "b", 1), ("turbo4", "c", 2)]  # b sees the stored a
    assert answers(out)[1] == [("a", "turbo4:a", True), ("b", "turbo4:b", False), ("c", "turbo4:c", False)]
    assert out[1].results[2]["seen"] == ["turbo4:a", "turbo4:b"]


def test_settings_context_and_layout_are_part_of_the_key(world: World) -> None:
    world.run(world.plan(kv=["f16"]), CELLS[:1])
    world.run(world.plan(kv=["f16"]), [cells.Cell("a", {"prompt": "other"})])  # other settings
    world.run(world.plan(kv=["f16"], context=2048), CELLS[:1])                  # other context
    world.run(world.plan(kv=["f16"], extra_args=("--no-repack",)), CELLS[:1])   # other server arguments
    world.run(world.plan(kv=["f16"]), CELLS[:1], version=2)                     # other result layout
    assert len(world.measured) == 5
    world.run(world.plan(kv=["f16"]), CELLS[:1])
    assert len(world.measured) == 5  # the first one again: stored


def test_the_baseline_is_added_when_asked(world: World) -> None:
    plan = world.plan(kv=["turbo3"], need_baseline=True)
    assert [c.label for c in plan.configs] == ["f16", "turbo3"]
    assert plan.baseline is not None and plan.baseline.label == "f16"
    assert plan.notes == ("f16 added: the agreement figures compare every configuration with it",)
    assert [c.label for c in world.plan(kv=["turbo3", "f16"], need_baseline=True).configs] == ["turbo3", "f16"]
    plain = world.plan(kv=["turbo3"])
    assert plain.baseline is None and plain.notes == ()


def test_a_profile_recipe_joins_the_defaults(world: World) -> None:
    plan = world.plan(kv=[], extra_kv=["turbo4/turbo3"])
    assert [c.label for c in plan.configs] == ["f16", "turbo4/turbo3"]


def test_plan_errors(world: World) -> None:
    with pytest.raises(UsageError, match=r"^--ctx 32: expected at least 64 tokens$"):
        world.plan(context=32)
    world.model = world.tmp / "nope.gguf"
    with pytest.raises(ModelError, match=r"model file not found: .*nope\.gguf"):
        world.plan()
