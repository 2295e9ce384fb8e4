"""Memory fit: the machine's budget, the built binary's projection of a server's memory, and the
largest context that fits.

Budget (:func:`machine_budget`):

* macOS on Apple Silicon: the Metal working-set limit. When ``sysctl iogpu.wired_limit_mb`` is
  set (> 0) that is the limit; otherwise macOS's default, Metal's
  ``MTLDevice.recommendedMaxWorkingSetSize``, which no command-line tool prints. It is
  *estimated* here as 2/3 of the unified memory up to 36 GiB and 3/4 above (the figure commonly
  cited for Apple Silicon). That estimate is at or below every published measurement we found:
  16 GB M4 10.67 GB (exo-explore/exo pull 1672), 16 GB M3 11.84 GB (AlexsJones/llmfit pull 754),
  24 GB 17.76 GiB (sgl-project/sglang pull 29949), 128 GiB M5 Max 107.52 GiB (antirez/ds4 pull
  893): on a Mac the estimate errs on the safe side.
* a CUDA build: the free memory of the NVIDIA GPUs (``nvidia-smi``), all of the projection
  counted against it (conservative: host buffers are counted too).
* elsewhere: the available RAM (psutil).

From that base a margin is kept free for everything else (the OS, the server's HTTP threads,
its prompt cache): 10 % of the base, at least 512 MiB and at most 2 GiB.

Projection (:func:`project`): ``llama-fit-params --fit-print on`` of the current build with the
arguments serve passes (:func:`context_args`), which builds the model and context without
allocating them and reports, per buffer type, the bytes of the weights, the context (the KV cache,
and recurrent state where a model has it) and the compute buffers (patch 0014 prints them in
bytes; upstream prints whole MiB). The KV part is checked against the recipe's own arithmetic
(:meth:`turboctl.kv.recipe.RecipePlan.kv_bytes`, through :func:`turboctl.llamalog.compare_plan`):
a difference is an error, never a silently different projection.

llama-server b11312 and parallel slots: with ``-np N`` it keeps one KV stream per slot of
``n_ctx / N`` cells unless ``--kv-unified`` is given; :func:`context_args` passes
``--kv-unified`` whenever N > 1, so the context is one pool of ``n_ctx`` cells that any slot may
fill, and the projection is made for the same layout.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .. import doctor, preflight, proc
from ..build.manifest import Manifest
from ..errors import CommandFailed, DoesNotFit, UsageError, VerificationError
from ..kv.recipe import Recipe, RecipePlan
from ..llamalog import compare_plan, kv_contexts

KIB = 1024
MIB = 1024**2
GIB = 1024**3
LOCAL = "this machine"
CONTEXT_STEP = 1024
MARGIN_FRACTION = 0.10
MARGIN_MIN = 512 * MIB
MARGIN_MAX = 2 * GIB
MAC_SMALL_LIMIT = 36 * GIB  # up to this much unified memory the default share is 2/3, above 3/4
FIT_TIMEOUT_S = 120

BudgetKind = Literal["metal-wired-limit", "metal-default", "cuda-free", "ram-available", "max-memory"]


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n < 10 * GIB else f"{n / GIB:.1f} GiB"


def human(n: int) -> str:
    """Bytes for people: MiB under 1 GiB, else GiB."""
    return f"{n / MIB:.1f} MiB" if n < GIB else _gib(n)


# --------------------------------------------------------------------------- budget
@dataclass(frozen=True)
class DeviceBudget:
    """One device of an RPC worker: its free memory as the worker reports it, less a margin."""

    worker: str   # HOST:PORT
    index: int    # the device's index on that worker
    free: int
    bytes: int

    @property
    def name(self) -> str:
        return rpc_device_name(self.worker, self.index)


def rpc_device_name(worker: str, index: int) -> str:
    """The name llama.cpp gives the buffer type of device ``index`` of an RPC worker:
    ``RPC<index>[HOST:PORT]``."""
    return f"RPC{index}[{worker}]"


@dataclass(frozen=True)
class Budget:
    bytes: int    # everything: this machine's share plus the RPC devices'
    source: str  # e.g. "available RAM 21.3 GiB - margin 2.0 GiB"
    kind: BudgetKind = "ram-available"
    base: int = 0
    margin: int = 0
    devices: tuple[DeviceBudget, ...] = ()  # RPC worker devices (serve --rpc, a profile's workers)

    @property
    def local(self) -> int:
        """This machine's share of :attr:`bytes`."""
        return self.bytes - sum(d.bytes for d in self.devices)


def margin_for(base: int) -> int:
    """The bytes kept free out of ``base``: 10 %, at least 512 MiB, at most 2 GiB."""
    return int(min(MARGIN_MAX, max(MARGIN_MIN, base * MARGIN_FRACTION)))


def mac_default_working_set(unified_memory: int) -> int:
    """The estimated default Metal working-set limit (recommendedMaxWorkingSetSize) of a Mac
    with this much unified memory: 2/3 up to 36 GiB, 3/4 above (see the module docstring)."""
    if unified_memory <= MAC_SMALL_LIMIT:
        return unified_memory * 2 // 3
    return unified_memory * 3 // 4


def parse_nvidia_free(output: str | None) -> int | None:
    """Free bytes over all GPUs from ``nvidia-smi --query-gpu=memory.free
    --format=csv,noheader,nounits`` (MiB per line), or None when unreadable."""
    if not output or not output.strip():
        return None
    total = 0
    for line in output.strip().splitlines():
        value = line.strip().split()[0] if line.strip() else ""
        if not value.isdigit():
            return None
        total += int(value) * MIB
    return total


def _with_margin(base: int, what: str, kind: BudgetKind) -> Budget:
    margin = margin_for(base)
    return Budget(max(0, base - margin), f"{what} {_gib(base)} - margin {_gib(margin)}", kind, base, margin)


def machine_budget(probe: doctor.Probe | None = None, *, backend: str = "cpu") -> Budget:
    """The memory a server may use on this machine (see the module docstring)."""
    p = probe or doctor.Probe.current()
    if p.system == "Darwin" and p.machine == "arm64":
        wired = doctor.parse_sysctl_value(p.run(["sysctl", "iogpu.wired_limit_mb"]))
        if wired and wired.isdigit() and int(wired) > 0:
            return _with_margin(int(wired) * MIB, f"Metal wired limit (iogpu.wired_limit_mb={wired})",
                                "metal-wired-limit")
        mem_raw = doctor.parse_sysctl_value(p.run(["sysctl", "-n", "hw.memsize"]))
        mem = int(mem_raw) if mem_raw and mem_raw.isdigit() else p.memory()[0]
        share = "2/3" if mem <= MAC_SMALL_LIMIT else "3/4"
        return _with_margin(mac_default_working_set(mem),
                            f"Metal default working set (estimated: {share} of {_gib(mem)} unified memory)",
                            "metal-default")
    if backend == "cuda":
        free = None
        if p.which("nvidia-smi"):
            free = parse_nvidia_free(p.run(["nvidia-smi", "--query-gpu=memory.free",
                                            "--format=csv,noheader,nounits"]))
        if free is not None:
            return _with_margin(free, "free GPU memory (nvidia-smi)", "cuda-free")
    _total, available = p.memory()
    what = "available RAM" if backend != "cuda" else "available RAM (nvidia-smi unreadable)"
    return _with_margin(available, what, "ram-available")


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def parse_size(text: str, option: str = "--max-memory") -> int:
    """``24G``, ``512M``, ``1.5GiB``, ``1000000`` (bytes) → bytes (powers of 1024)."""
    m = _SIZE.match(text)
    if not m or float(m[1]) <= 0:
        raise UsageError(f"{option} {text}: expected a size such as 24G, 512M or 1.5GiB")
    scale = {"": 1, "k": KIB, "m": MIB, "g": GIB, "t": GIB * 1024}[m[2].lower()]
    return int(float(m[1]) * scale)


def capped(budget: Budget, limit: int, text: str) -> Budget:
    """The budget, never above the user's ``--max-memory`` (no margin taken off a limit the user set)."""
    if limit >= budget.bytes:
        return budget
    return Budget(limit, f"--max-memory {text.strip()} (this machine allows {_gib(budget.bytes)})", "max-memory",
                  limit, 0)


def pooled(budget: Budget, workers: Sequence[tuple[str, Sequence[int]]]) -> Budget:
    """This machine's budget plus what RPC workers have free (``(HOST:PORT, free bytes per
    device)`` each, as they report it at the check), each device with its own margin: the model
    and its KV cache are split across the devices, and each device must hold its own part
    (:func:`overs`)."""
    if not workers:
        return budget
    devices = tuple(DeviceBudget(addr, i, free, max(0, free - margin_for(free)))
                    for addr, frees in workers for i, free in enumerate(frees))
    shown = ", ".join(f"{addr} {_gib(sum(frees))} free" for addr, frees in workers)
    return Budget(budget.bytes + sum(d.bytes for d in devices), f"{budget.source} + RPC workers ({shown}; margin each)",
                  budget.kind, budget.base + sum(d.free for d in devices),
                  budget.margin + sum(margin_for(d.free) for d in devices), budget.devices + devices)


# --------------------------------------------------------------------------- the binary's projection
@dataclass(frozen=True)
class BufferBytes:
    """One buffer type of the projection, as llama-fit-params reports it."""

    buffer: str
    device: str
    host: bool
    model: int
    context: int
    compute: int

    @property
    def total(self) -> int:
        return self.model + self.context + self.compute


@dataclass(frozen=True)
class Projection:
    context: int          # the context asked for
    weights: int
    kv: int               # the KV caches (exactly the recipe's bytes at n_ctx cells)
    compute: int
    total: int            # weights + kv + state + compute
    devices: tuple[BufferBytes, ...]
    n_ctx: int = 0        # the context llama.cpp sizes (padded to 256, a multiple of the slots)
    parallel: int = 1
    state: int = 0        # context memory that is not KV (recurrent state of hybrid models)
    args: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    def device_parts(self) -> dict[str, tuple[int, int, int]]:
        """(model, context, compute) bytes per device: ``this machine`` (every buffer that is not an
        RPC device's: CPU, host, local GPUs), then each RPC device by its buffer name
        ``RPC<i>[HOST:PORT]``."""
        out = {LOCAL: (0, 0, 0)}
        for b in self.devices:
            key = b.buffer if _RPC_BUFFER.match(b.buffer) else LOCAL
            m, c, x = out.get(key, (0, 0, 0))
            out[key] = (m + b.model, c + b.context, x + b.compute)
        return out

    def per_device(self) -> dict[str, int]:
        """Bytes per device (:meth:`device_parts` summed)."""
        return {k: sum(v) for k, v in self.device_parts().items()}

    def breakdown(self) -> str:
        state = f" + state {human(self.state)}" if self.state else ""
        return (f"weights {human(self.weights)} + KV {human(self.kv)}{state} + compute {human(self.compute)} "
                f"= {human(self.total)}")


@dataclass(frozen=True)
class DeviceUse:
    """One device's part of a projection against its share of the budget."""

    device: str
    bytes: int    # weights + context + compute
    budget: int
    weights: int = 0
    context: int = 0  # the KV cache (and recurrent state)
    compute: int = 0

    @property
    def fits(self) -> bool:
        return self.bytes <= self.budget


def device_use(p: Projection, budget: Budget) -> list[DeviceUse]:
    """Each device's projected bytes against its share of the budget: this machine first, then the
    RPC devices in the budget's order (a device the projection does not use shows 0 bytes). An RPC
    buffer of a device the budget does not know has a budget of 0 (it cannot fit)."""
    parts = p.device_parts()

    def use(name: str, share: int) -> DeviceUse:
        m, c, x = parts.pop(name, (0, 0, 0))
        return DeviceUse(name, m + c + x, share, m, c, x)

    uses = [use(LOCAL, budget.local), *(use(d.name, d.bytes) for d in budget.devices)]
    return uses + [use(name, 0) for name in list(parts)]


def overs(p: Projection, budget: Budget) -> list[DeviceUse]:
    """The devices whose part of the projection is over their share (empty: it fits). Without RPC
    devices that is the whole projection against the whole budget."""
    return [u for u in device_use(p, budget) if not u.fits]


def load(p: Projection, budget: Budget) -> float:
    """The fullest device's bytes over its share (<= 1: it fits)."""
    uses = device_use(p, budget)
    return max((u.bytes / u.budget) if u.budget > 0 else (float("inf") if u.bytes else 0.0) for u in uses)


def over_text(p: Projection, budget: Budget) -> str:
    """Why a projection does not fit, for an error: the whole of it against the budget, or the
    devices over their shares."""
    over = overs(p, budget)
    if not budget.devices:
        return (f"needs {human(p.total)} ({p.breakdown()}), over the budget of {human(budget.bytes)} "
                f"({budget.source})")
    parts = "; ".join(f"{u.device} {human(u.bytes)} of {human(u.budget)}" for u in over)
    return (f"needs {human(p.total)} ({p.breakdown()}) and is over on {parts} (budget {human(budget.bytes)}: "
            f"{budget.source})")


_CTX_LINE = re.compile(r"llama_fit_params: projected context: n_ctx (\d+), n_ctx_seq (\d+), n_seq_max (\d+)")
_RPC_BUFFER = re.compile(r"^RPC\d+\[.+\]$")
_BYTES_LINE = re.compile(r"llama_fit_params: projected bytes: (.+?) \(device (.+?), (host|device)\): "
                         r"model (\d+), context (\d+), compute (\d+)")


def parse_projection(output: str) -> tuple[tuple[int, int, int], list[BufferBytes]]:
    """(n_ctx, n_ctx_seq, n_seq_max) and the buffers of the last projection in ``output``."""
    ctx = list(_CTX_LINE.finditer(output))
    if not ctx:
        raise VerificationError(
            "llama-fit-params printed no 'projected context' line: this build lacks the byte projection",
            hint="rebuild with this turboctl's patch series (turboctl build)")
    last = ctx[-1]
    bufs = [BufferBytes(m[1], m[2], m[3] == "host", int(m[4]), int(m[5]), int(m[6]))
            for m in _BYTES_LINE.finditer(output, last.end())]
    if not bufs:
        raise VerificationError("llama-fit-params printed no 'projected bytes' lines after its context line",
                                hint="rebuild with this turboctl's patch series (turboctl build)")
    return (int(last[1]), int(last[2]), int(last[3])), bufs


def help_flags(help_text: str) -> dict[str, bool]:
    """Every flag a llama.cpp program's ``--help`` lists → whether it takes a value."""
    out: dict[str, bool] = {}
    for line in help_text.splitlines():
        # "-c,    --ctx-size N      size of ...": the flags end at the first wide gap not after a comma
        first = re.split(r"(?<![,\s])\s{2,}", line.strip(), maxsplit=1)[0] if line.startswith("-") else ""
        if not first or first.startswith("--- ") or first.startswith("-----"):
            continue
        names = [n.strip() for n in first.split(",")]
        takes_value = False
        flags = []
        for n in names:
            name, _, meta = n.partition(" ")
            if name.startswith("-"):
                flags.append(name)
            takes_value = takes_value or bool(meta.strip())
        for f in flags:
            out[f] = takes_value
    return out


def memory_args(extra: Sequence[str], flags: Mapping[str, bool]) -> tuple[list[str], list[str]]:
    """Split a server's extra arguments into those llama-fit-params knows (they may change the
    projection: --no-repack, -ub, -ngl, ...) and those it does not (server-only: skipped)."""
    kept: list[str] = []
    skipped: list[str] = []
    i = 0
    while i < len(extra):
        arg = extra[i]
        name = arg.split("=", 1)[0]
        has_inline = "=" in arg and name.startswith("--")
        takes = flags.get(name)
        n = 1
        if not has_inline and i + 1 < len(extra) and (takes or (takes is None and not extra[i + 1].startswith("-"))):
            n = 2
        group = list(extra[i:i + n])
        (kept if takes is not None else skipped).extend(group)
        i += n
    return kept, skipped


def context_args(recipe: Recipe, context: int, *, parallel: int = 1, batch_size: int | None = None) -> list[str]:
    """The context-shaping arguments serve gives llama-server, and the projection llama-fit-params:
    ``-c N -np P [--kv-unified] -fa on -ctk K -ctv V [--kv-adaptive M] [--kv-layers R] [-b B]``."""
    args = ["-c", str(context), "-np", str(parallel)]
    if parallel > 1:
        args.append("--kv-unified")
    args += recipe.llama_args()
    if batch_size is not None:
        args += ["-b", str(batch_size)]
    return args


Runner = Callable[[Sequence[str], Mapping[str, str] | None], tuple[int, str]]
_LOG_ERROR = re.compile(r"^(?:\d+\.\d+\.\d+\.\d+ )?E (.+)$")


def failure_reason(output: str, rc: int) -> tuple[str, list[str]]:
    """Why a llama.cpp program failed: its first error-level log line (``E ...``, e.g. ``K cache type
    q8_0 with block size 32 does not divide n_embd_head_k=80``), else its last line naming an error;
    and the lines naming errors (for the details)."""
    lines = [ln.strip() for ln in output.splitlines() if re.search(r"error|failed|invalid", ln, re.IGNORECASE)]
    logged = [m[1].strip() for ln in output.splitlines() if (m := _LOG_ERROR.match(ln.strip()))]
    if logged:
        return logged[0], [*logged, *lines][-10:]
    return (lines[-1] if lines else f"exit code {rc}"), lines[-10:]


def _run_binary(args: Sequence[str], env: Mapping[str, str] | None) -> tuple[int, str]:
    """One llama-fit-params run; a run that hangs is stopped and run once more (a projection
    takes well under a second; one b11312 run in a CI slow suite hung before logging a line,
    not reproduced in 300 runs since), and a second hang is the error."""
    res = proc.run(list(args), env=env, check=False, echo=False, timeout=FIT_TIMEOUT_S)
    if res.timed_out:
        first = res.output
        res = proc.run(list(args), env=env, check=False, echo=False, timeout=FIT_TIMEOUT_S)
        if res.timed_out:  # said first: it is why, whatever the killed program logged before
            return res.returncode, (f"E did not finish within {FIT_TIMEOUT_S:g} s, twice (stopped)\n"
                                    f"{first}\n{res.output}")
    return res.returncode, res.output


class Projector:
    """The binary's projections for one model, recipe and server shape, cached by context."""

    def __init__(self, m: Manifest, model: Path, plan: RecipePlan, *, parallel: int = 1,
                 batch_size: int | None = None, extra_args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, runner: Runner | None = None) -> None:
        self.binary = preflight.tool(m, "llama-fit-params")
        self.model = model
        self.plan = plan
        self.parallel = parallel
        self.batch_size = batch_size
        self.extra_args = tuple(extra_args)
        self.env = dict(env) if env else None
        self.runner = runner or _run_binary
        self.cache: dict[int, Projection] = {}
        self._memory_args: tuple[list[str], list[str]] | None = None

    def _split_extra(self) -> tuple[list[str], list[str]]:
        if self._memory_args is None:
            if not self.extra_args:
                self._memory_args = ([], [])
            else:
                rc, text = self.runner([str(self.binary), "--help"], self.env)
                self._memory_args = memory_args(self.extra_args, help_flags(text) if rc == 0 else {})
        return self._memory_args

    def __call__(self, context: int) -> Projection:
        if context in self.cache:
            return self.cache[context]
        kept, skipped = self._split_extra()
        args = [*context_args(self.plan.recipe, context, parallel=self.parallel, batch_size=self.batch_size), *kept]
        cmd = [str(self.binary), "-m", str(self.model), "--fit-print", "on", "-v", *args]
        rc, output = self.runner(cmd, self.env)
        if rc != 0:
            why, lines = failure_reason(output, rc)
            raise CommandFailed(f"llama-fit-params could not project {self.model.name} at context {context} "
                                f"with KV {self.plan.label}: {why}", details=lines,
                                hint="the arguments were: " + " ".join(args))
        proj = self._projection(context, output, args, skipped)
        self.cache[context] = proj
        return proj

    def _projection(self, context: int, output: str, args: list[str], skipped: list[str]) -> Projection:
        (n_ctx, _n_ctx_seq, _n_seq), bufs = parse_projection(output)
        contexts = kv_contexts(output)
        if not contexts:
            raise VerificationError("llama-fit-params logged no KV cache lines (-v): cannot check the KV part",
                                    hint="rebuild with this turboctl's patch series (turboctl build)")
        last = contexts[-1]
        compare_plan(self.plan, output, context=len(contexts) - 1)  # per-layer types and bytes, per cache
        kv = last.total_bytes or 0
        if not any(la.swa for la in self.plan.layout.owned()):
            k, v = self.plan.kv_bytes(n_ctx)
            if k + v != kv:
                raise VerificationError(
                    f"llama-fit-params projects {kv} bytes of KV cache at {n_ctx} cells, the recipe "
                    f"{self.plan.label} holds {k + v}", hint="the patch series and turboctl disagree: rebuild "
                                                              "with this turboctl (turboctl build)")
        weights = sum(b.model for b in bufs)
        context_bytes = sum(b.context for b in bufs)
        compute = sum(b.compute for b in bufs)
        if context_bytes < kv:
            raise VerificationError(f"llama-fit-params projects {context_bytes} bytes of context memory, less "
                                    f"than its own KV caches ({kv})")
        state = context_bytes - kv
        notes = (f"not passed to llama-fit-params (server-only): {' '.join(skipped)}",) if skipped else ()
        return Projection(context, weights, kv, compute, weights + context_bytes + compute, tuple(bufs),
                          n_ctx=n_ctx, parallel=self.parallel, state=state, args=tuple(args), notes=notes)


def project(m: Manifest, model: Path, plan: RecipePlan, context: int, *, parallel: int = 1,
            batch_size: int | None = None, extra_args: Sequence[str] = (),
            env: Mapping[str, str] | None = None, runner: Runner | None = None) -> Projection:
    """The built binary's projection of a server with this recipe and context."""
    return Projector(m, model, plan, parallel=parallel, batch_size=batch_size, extra_args=extra_args,
                     env=env, runner=runner)(context)


# --------------------------------------------------------------------------- context search
def candidates(n_ctx_train: int) -> list[int]:
    """The contexts ``auto`` may pick: multiples of 1024 up to the training context (the training
    context itself when it is below 1024)."""
    if n_ctx_train < CONTEXT_STEP:
        return [n_ctx_train] if n_ctx_train > 0 else []
    return [k * CONTEXT_STEP for k in range(1, n_ctx_train // CONTEXT_STEP + 1)]


def search_largest(fits: Callable[[int], tuple[bool, float]], values: Sequence[int], budget: float) -> int | None:
    """The largest of ``values`` (ascending) for which ``fits`` holds, assuming it holds for a prefix.
    ``fits(v)`` → (fits, total bytes). The guess is interpolated from the totals at the bracket
    (the KV part is linear in the context, compute piecewise linear), followed by a check of its
    neighbour; bisection when that does not close the bracket. Few calls: 2 when everything or
    nothing fits, typically 4-5 otherwise."""
    if not values:
        return None
    hi = len(values) - 1
    ok_hi, t_hi = fits(values[hi])
    if ok_hi:
        return values[hi]
    lo = 0
    ok_lo, t_lo = fits(values[lo])
    if not ok_lo:
        return None
    bisect = False
    while hi - lo > 1:
        if bisect or t_hi <= t_lo:
            g = (lo + hi) // 2
        else:
            g = lo + int((budget - t_lo) * (hi - lo) / (t_hi - t_lo))
            g = min(max(g, lo + 1), hi - 1)
        ok, t = fits(values[g])
        if ok:
            lo, t_lo = g, t
            nb = g + 1
        else:
            hi, t_hi = g, t
            nb = g - 1
        if bisect or hi - lo <= 1:
            bisect = False
            continue
        # the neighbour on the other side of the guess: closes the bracket when the guess was right
        ok, t = fits(values[nb])
        if ok:
            lo, t_lo = nb, t
        else:
            hi, t_hi = nb, t
        bisect = True
    return values[lo]


def largest_context(m: Manifest, model: Path, plan: RecipePlan, budget: Budget, *, n_ctx_train: int,
                    parallel: int = 1, batch_size: int | None = None, extra_args: Sequence[str] = (),
                    env: Mapping[str, str] | None = None, projector: Projector | None = None) -> int | None:
    """The largest context (a multiple of 1024, at most ``n_ctx_train``) whose projection fits the
    budget, or None when not even the smallest fits."""
    proj = projector or Projector(m, model, plan, parallel=parallel, batch_size=batch_size,
                                  extra_args=extra_args, env=env)

    def fits(ctx: int) -> tuple[bool, float]:  # the fullest device's load: 1.0 is its share
        p = proj(ctx)
        return not overs(p, budget), load(p, budget)

    return search_largest(fits, candidates(n_ctx_train), 1.0)


def fit(m: Manifest, model: Path, plan: RecipePlan, context: int | Literal["auto"], budget: Budget, *,
        n_ctx_train: int, parallel: int = 1, batch_size: int | None = None, extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None, projector: Projector | None = None) -> Projection:
    """The projection at ``context`` (or at the largest context that fits, for ``auto``);
    DoesNotFit when it exceeds the budget, naming the largest context that would fit."""
    proj = projector or Projector(m, model, plan, parallel=parallel, batch_size=batch_size,
                                  extra_args=extra_args, env=env)
    best = None
    if context == "auto":
        best = largest_context(m, model, plan, budget, n_ctx_train=n_ctx_train, projector=proj)
        if best is None:
            smallest = candidates(n_ctx_train)[:1]
            need = (f": context {smallest[0]} {over_text(proj(smallest[0]), budget)}" if smallest else
                    f", over the budget of {human(budget.bytes)} ({budget.source})")
            raise DoesNotFit(
                f"{model.name} with KV {plan.label} does not fit at any context{need}",
                hint="free memory, use a smaller model or a KV recipe with fewer bits")
        return proj(best)
    p = proj(context)
    if not overs(p, budget):
        return p
    best = largest_context(m, model, plan, budget, n_ctx_train=n_ctx_train, projector=proj)
    largest = (f"the largest context that fits is {best}" if best is not None
               else "nothing fits, not even context " + str((candidates(n_ctx_train) or [context])[0]))
    raise DoesNotFit(
        f"{model.name} at context {context} with KV {plan.label} {over_text(p, budget)}; {largest}",
        hint=f"use context: {best} (or auto), or a KV recipe with fewer bits" if best is not None else
        "free memory, use a smaller model or a KV recipe with fewer bits")
