"""The patch machinery against a small git tree and real format-patch files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import DATA, FakeWorld
from turboctl import proc
from turboctl.build import gitrepo, patches, source
from turboctl.errors import ConfigError, PatchError
from turboctl.ui import UI


@pytest.fixture
def repo(fake_world: FakeWorld, tmp_path: Path) -> tuple[Path, str]:
    tree = tmp_path / "work-tree"
    shutil.copytree(fake_world.tree, tree)
    base = source.import_tree(tree, fake_world.pin, tmp_path / "import.log")
    return tree, base


def apply(repo: tuple[Path, str], series_dir: Path = DATA / "patches", *, force: bool = False,
          tmp: Path | None = None) -> patches.ApplyResult:
    tree, base = repo
    return patches.apply_series(tree, base, patches.load_series(series_dir), force=force,
                                log=tree.parent / "patch.log", ui=UI(quiet=True))


def test_series_parsing_and_upstream_files() -> None:
    series = patches.load_series(DATA / "patches")
    assert [p.name for p in series.patches] == [
        "0001-kv-cache-advertise-the-turbo-cache-types.patch",
        "0002-kv-cache-add-the-turbo-codec.patch",
    ]
    assert all(len(p.sha256) == 64 for p in series.patches)
    # src/turbo.c is created by the series: it has no upstream checksum to verify
    assert series.upstream_files() == ["include/llama.h", "src/llama-kv-cache.cpp"]


def test_cache_types_directive() -> None:
    series = patches.load_series()
    assert series.cache_types == ("turbo2", "turbo3", "turbo4")
    assert patches.load_series(DATA / "patches").cache_types == ()


def test_shipped_series_is_valid_and_pinned() -> None:
    from turboctl.build.pins import load_pin

    series = patches.load_series()
    assert series.patches, "the shipped series lists the TurboQuant patches"
    assert all(p.path.is_file() and len(p.sha256) == 64 for p in series.patches)
    assert [p.name for p in series.patches] == sorted(p.name for p in series.patches)  # NNNN- order
    assert set(series.upstream_files()) <= set(load_pin().files)  # every touched upstream file is pinned


def test_apply_then_idempotent(repo: tuple[Path, str]) -> None:
    tree, base = repo
    first = apply(repo)
    assert first.action == "applied"
    assert first.head != base
    assert "turbo4" in (tree / "include/llama.h").read_text()
    assert (tree / "src/turbo.c").is_file()
    state = patches.read_state(tree)
    assert state is not None and state["base"] == base and state["head"] == first.head
    second = apply(repo)
    assert second.action == "unchanged"
    assert second.head == first.head
    assert gitrepo.dirty_paths(tree) == []


def test_commits_are_deterministic(fake_world: FakeWorld, tmp_path: Path) -> None:
    heads = []
    for name in ("a", "b"):
        tree = tmp_path / name
        shutil.copytree(fake_world.tree, tree)
        base = source.import_tree(tree, fake_world.pin, tmp_path / f"{name}.log")
        heads.append(apply((tree, base)).head)
    assert heads[0] == heads[1]


def test_changed_patch_is_detected_and_reapplied(repo: tuple[Path, str], tmp_path: Path) -> None:
    tree, _ = repo
    first = apply(repo)
    edited = tmp_path / "edited-series"
    shutil.copytree(DATA / "patches", edited)
    p = edited / "0002-kv-cache-add-the-turbo-codec.patch"
    p.write_text(p.read_text().replace("return type + 2;", "return type + 3;"))
    again = apply(repo, edited)
    assert again.action == "reapplied"
    assert "changed: 0002-kv-cache-add-the-turbo-codec.patch" in again.reason
    assert again.head != first.head
    assert "type + 3" in (tree / "src/turbo.c").read_text()


def test_removed_patch_is_detected(repo: tuple[Path, str], tmp_path: Path) -> None:
    tree, _ = repo
    apply(repo)
    shorter = tmp_path / "shorter"
    shutil.copytree(DATA / "patches", shorter)
    (shorter / "series").write_text("0001-kv-cache-advertise-the-turbo-cache-types.patch\n")
    res = apply(repo, shorter)
    assert res.action == "reapplied"
    assert "removed: 0002-kv-cache-add-the-turbo-codec.patch" in res.reason
    assert not (tree / "src/turbo.c").exists()


def test_failing_patch_reports_hunk_and_leaves_base(repo: tuple[Path, str]) -> None:
    tree, base = repo
    with pytest.raises(PatchError) as err:
        apply(repo, DATA / "patches-bad")
    exc = err.value
    assert "0001-kv-cache-halve-the-cache-size.patch does not apply" in exc.message
    assert "the tree was reset to the base" in exc.message
    joined = "\n".join(exc.details)
    assert "hunk for src/llama-kv-cache.cpp at line 1 does not apply" in joined
    assert "+    return (int) (size / 2); // halve it" in joined
    assert exc.log_path is not None and exc.log_path.is_file()
    assert gitrepo.head(tree) == base
    assert gitrepo.dirty_paths(tree) == []
    assert gitrepo.operation_in_progress(tree) is None
    assert patches.read_state(tree) is None


def test_dirty_tree_is_refused_then_forced(repo: tuple[Path, str]) -> None:
    tree, _ = repo
    apply(repo)
    (tree / "src/tool.c").write_text("/* local edit */\n")
    with pytest.raises(PatchError) as err:
        apply(repo)
    assert "has local changes (src/tool.c)" in err.value.message
    assert "--force" in (err.value.hint or "")
    assert (tree / "src/tool.c").read_text() == "/* local edit */\n"  # untouched
    forced = apply(repo, force=True)
    assert forced.action == "applied"
    assert "local edit" not in (tree / "src/tool.c").read_text()


def test_untracked_file_counts_as_dirty(repo: tuple[Path, str]) -> None:
    tree, _ = repo
    (tree / "notes.txt").write_text("mine")
    with pytest.raises(PatchError, match="local changes"):
        apply(repo)


def test_foreign_commit_is_refused(repo: tuple[Path, str]) -> None:
    tree, _ = repo
    (tree / "src/tool.c").write_text("/* someone else's commit */\n")
    gitrepo.run_git(["commit", "-q", "-am", "foreign"], tree, fixed_dates=True, echo=False)
    with pytest.raises(PatchError, match="neither the pinned base"):
        apply(repo)
    assert apply(repo, force=True).action == "applied"


def test_interrupted_am_is_refused(repo: tuple[Path, str]) -> None:
    tree, _ = repo
    bad = DATA / "patches-bad" / "0001-kv-cache-halve-the-cache-size.patch"
    gitrepo.run_git(["am", str(bad)], tree, check=False, echo=False)
    assert gitrepo.operation_in_progress(tree) == "git am / rebase"
    with pytest.raises(PatchError, match="interrupted git am"):
        apply(repo)
    assert apply(repo, force=True).action == "applied"
    assert gitrepo.operation_in_progress(tree) is None


def test_empty_series_records_state(repo: tuple[Path, str], tmp_path: Path) -> None:
    _, base = repo
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "series").write_text(patches.SERIES_HEADER)
    res = apply(repo, empty)
    assert res.head == base
    assert apply(repo, empty).action == "unchanged"
    # the same tree then gets a non-empty series: applied on top of the base
    assert apply(repo).action == "reapplied"


@pytest.mark.parametrize(
    ("series_text", "files", "message"),
    [
        ("missing.patch\n", {}, "patch file 'missing.patch' does not exist"),
        ("../evil.patch\n", {}, "must be a plain file name"),
        ("a.patch\na.patch\n", {"a.patch": "diff --git a/x b/x\n"}, "is listed twice"),
        ("a.patch\n", {"a.patch": "not a patch\n"}, "contains no 'diff --git' section"),
        ("#! cache-types:\n", {}, "series:1: '#! cache-types:' needs KV cache type names"),
        ("#! cache-types: turbo4 Turbo9!\n", {}, "needs KV cache type names \\(e.g. 'turbo4'\\), not 'Turbo9!'"),
    ],
)
def test_bad_series_files(tmp_path: Path, series_text: str, files: dict[str, str],
                          message: str) -> None:
    (tmp_path / "series").write_text(series_text)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message):
        patches.load_series(tmp_path)


def test_missing_series_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="patch series file not found"):
        patches.load_series(tmp_path)


def test_export_round_trip(repo: tuple[Path, str], fake_world: FakeWorld, tmp_path: Path) -> None:
    tree, base = repo
    applied = apply(repo)
    out = tmp_path / "exported"
    out.mkdir()
    (out / "series").write_text("#! cache-types: turbo4\nold.patch\n")  # the series being replaced
    names = patches.export_series(tree, base, out, tmp_path / "export.log")
    assert len(names) == 2
    exported = patches.load_series(out)
    assert exported.cache_types == ("turbo4",)  # kept by the export
    assert [p.name for p in exported.patches] == names
    other = tmp_path / "other"
    shutil.copytree(fake_world.tree, other)
    other_base = source.import_tree(other, fake_world.pin, tmp_path / "o.log")
    res = patches.apply_series(other, other_base, exported, force=False, log=tmp_path / "o.log",
                               ui=UI(quiet=True))
    assert res.head == applied.head  # same patches, same identity and dates → same commits
    assert proc.run(["git", "diff", "--stat", base, res.head], cwd=other, echo=False).output


GGML_H_OK = """
    enum ggml_type {
        GGML_TYPE_F32     = 0,
        GGML_TYPE_F16     = 1,
        // GGML_TYPE_Q4_2 = 4, support has been removed
        GGML_TYPE_Q2_0    = 42,
        GGML_TYPE_TURBO2  = 43, // TurboQuant
        GGML_TYPE_TURBO3  = 44,
        GGML_TYPE_COUNT   = 45,
    };
"""


def _ggml_h(tree: Path, text: str) -> Path:
    header = tree / "ggml" / "include" / "ggml.h"
    header.parent.mkdir(parents=True)
    header.write_text(text)
    return header


def test_type_ids_pass_when_unique(tmp_path: Path) -> None:
    _ggml_h(tmp_path, GGML_H_OK)
    patches.check_type_ids(tmp_path)
    patches.check_type_ids(tmp_path / "not-llama")  # no ggml.h: nothing to check


def test_type_id_collision_fails_loudly(tmp_path: Path) -> None:
    upstream_added = "GGML_TYPE_Q2_0    = 42,\n        GGML_TYPE_Q3_0    = 43,"
    header = _ggml_h(tmp_path, GGML_H_OK.replace("GGML_TYPE_Q2_0    = 42,", upstream_added))
    with pytest.raises(PatchError) as e:
        patches.check_type_ids(tmp_path)
    assert str(e.value) == (f"{header}: KV cache type ids collide after patching: "
                            "GGML_TYPE_Q3_0 and GGML_TYPE_TURBO2 are both 43")
    assert "renumber the series' types after upstream's last id" in (e.value.hint or "")


def test_type_count_must_follow_the_last_type(tmp_path: Path) -> None:
    header = _ggml_h(tmp_path, GGML_H_OK.replace("GGML_TYPE_COUNT   = 45", "GGML_TYPE_COUNT   = 44"))
    with pytest.raises(PatchError, match=r"GGML_TYPE_COUNT is 44, the largest type id is 44"):
        patches.check_type_ids(tmp_path)
    assert header.is_file()
    _ggml_h(tmp_path / "noenum", "int x;\n")
    with pytest.raises(PatchError, match="no `enum ggml_type` found"):
        patches.check_type_ids(tmp_path / "noenum")
