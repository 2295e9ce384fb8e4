#!/usr/bin/env python3
"""Where the GPU time of a decode step goes, from a scripts/cuda_trace.cpp timeline.

    python scripts/cuda_trace_report.py trace.csv [--gap-us 40] [--top 15] [--json]

The timeline is cut into steps at GPU idle gaps longer than --gap-us (between two tokens the
GPU waits for the host). The steps with the most common (non-zero) kernel count are the decode steps;
for those it reports the mean wall time per step (start to next start), the time the GPU was
busy (the union of kernel/copy intervals), the idle time inside the step, the copies, the
kernels by total time, the longest idle gaps with the operations on either side, and the host
runtime calls by total time.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import csv
import itertools
import json
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Event:
    kind: str
    start: int
    end: int
    name: str
    nbytes: int

    @property
    def dur(self) -> int:
        return self.end - self.start


def short(name: str) -> str:
    return re.sub(r"\(.*", "", name)[:80]


def load(path: Path) -> tuple[list[Event], list[Event]]:
    gpu: list[Event] = []
    host: list[Event] = []
    with path.open(newline="") as f:
        for n, row in enumerate(csv.DictReader(f), start=2):
            try:
                ev = Event(row["kind"], int(row["start_ns"]), int(row["end_ns"]), row["name"], int(row["bytes"] or 0))
            except (KeyError, ValueError, TypeError) as e:
                raise SystemExit(f"cuda_trace_report: {path}, line {n}: not a cuda_trace record ({e})") from None
            (host if ev.kind == "runtime" else gpu).append(ev)
    gpu.sort(key=lambda e: e.start)
    host.sort(key=lambda e: e.start)
    return gpu, host


def steps_of(gpu: list[Event], gap_ns: int) -> list[list[Event]]:
    steps: list[list[Event]] = []
    last_end = None
    for ev in gpu:
        if last_end is None or ev.start - last_end > gap_ns:
            steps.append([])
        steps[-1].append(ev)
        last_end = ev.end if last_end is None else max(last_end, ev.end)
    return steps


def busy(step: list[Event]) -> int:
    total, cur_s, cur_e = 0, None, None
    for ev in step:
        if cur_e is None or ev.start > cur_e:
            if cur_e is not None and cur_s is not None:
                total += cur_e - cur_s
            cur_s, cur_e = ev.start, ev.end
        else:
            cur_e = max(cur_e, ev.end)
    if cur_e is not None and cur_s is not None:
        total += cur_e - cur_s
    return total


def report(gpu: list[Event], host: list[Event], gap_us: float, top: int) -> dict[str, object]:
    steps = steps_of(gpu, int(gap_us * 1000))
    if not steps:
        raise SystemExit("cuda_trace_report: the trace has no GPU activity")
    counts = collections.Counter(sum(1 for e in s if e.kind == "kernel") for s in steps)
    counts.pop(0, None)  # copies only (model loading)
    if not counts:
        raise SystemExit("cuda_trace_report: the trace has no kernels")
    n_common = counts.most_common(1)[0][0]
    idx = [i for i, s in enumerate(steps) if sum(1 for e in s if e.kind == "kernel") == n_common and i + 1 < len(steps)]
    if not idx:
        raise SystemExit("cuda_trace_report: no complete step with the common kernel count")
    walls = [steps[i + 1][0].start - steps[i][0].start for i in idx]
    spans = [max(e.end for e in steps[i]) - steps[i][0].start for i in idx]
    busies = [busy(steps[i]) for i in idx]
    n = len(idx)
    by_kernel: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    copies: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0])
    gaps: dict[tuple[str, str], list[int]] = collections.defaultdict(lambda: [0, 0])
    api: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    host_starts = [h.start for h in host]
    for i in idx:
        s = steps[i]
        for ev in s:
            if ev.kind == "kernel":
                by_kernel[short(ev.name)][0] += 1
                by_kernel[short(ev.name)][1] += ev.dur
            else:
                c = copies[f"{ev.kind} {ev.name}"]
                c[0] += 1
                c[1] += ev.dur
                c[2] += ev.nbytes
        end = s[0].end
        for a, b in itertools.pairwise(s):
            end = max(end, a.end)
            if b.start > end:
                g = gaps[(short(a.name), short(b.name))]
                g[0] += 1
                g[1] += b.start - end
        # host is sorted by start: the calls of this step are one slice of it
        t0, t1 = s[0].start, steps[i + 1][0].start
        for h in host[bisect.bisect_left(host_starts, t0):bisect.bisect_left(host_starts, t1)]:
            api[h.name][0] += 1
            api[h.name][1] += h.dur

    def per_step(v: int) -> float:
        return round(v / n / 1000, 2)

    return {
        "steps": n,
        "kernels_per_step": n_common,
        "wall_us": round(statistics.mean(walls) / 1000, 1),
        "gpu_span_us": round(statistics.mean(spans) / 1000, 1),
        "gpu_busy_us": round(statistics.mean(busies) / 1000, 1),
        "idle_in_step_us": round((statistics.mean(spans) - statistics.mean(busies)) / 1000, 1),
        "kernels": [
            {"name": k, "per_step": round(c / n, 1), "us_per_step": per_step(t), "us_each": round(t / c / 1000, 2)}
            for k, (c, t) in sorted(by_kernel.items(), key=lambda x: -x[1][1])[:top]
        ],
        "copies": [
            {"what": k, "per_step": round(c / n, 1), "us_per_step": per_step(t), "bytes_per_step": b // n}
            for k, (c, t, b) in sorted(copies.items(), key=lambda x: -x[1][1])
        ],
        "gaps": [
            {"after": a, "before": b, "per_step": round(c / n, 1), "us_per_step": per_step(t)}
            for (a, b), (c, t) in sorted(gaps.items(), key=lambda x: -x[1][1])[:top]
        ],
        "host_api": [
            {"call": k, "per_step": round(c / n, 1), "us_per_step": per_step(t)}
            for k, (c, t) in sorted(api.items(), key=lambda x: -x[1][1])[:top]
        ],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace", type=Path)
    ap.add_argument("--gap-us", type=float, default=40.0)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if not a.trace.is_file():
        print(f"cuda_trace_report: {a.trace} is not a file", file=sys.stderr)
        return 2
    r = report(*load(a.trace), a.gap_us, a.top)
    if a.json:
        print(json.dumps(r, indent=1))
        return 0
    print(f"{r['steps']} steps of {r['kernels_per_step']} kernels: wall {r['wall_us']} us/step, GPU span "
          f"{r['gpu_span_us']} us, busy {r['gpu_busy_us']} us, idle inside the step {r['idle_in_step_us']} us")
    for key in ("kernels", "copies", "gaps", "host_api"):
        print(f"{key}:")
        for row in r[key]:  # type: ignore[attr-defined]
            print("  " + "  ".join(f"{k}={v}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
