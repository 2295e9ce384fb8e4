#!/usr/bin/env python3
"""The speed table of scripts/cuda_speed's JSON files: tokens/s per cache setting and depth,
the ratio to f16, and the fraction of the bandwidth-bound ideal.

  python scripts/cuda_speed_report.py --model M.gguf --bandwidth bw.json DIR [DIR ...]

Ideal (generation): one token reads every weight once (all tensors but token_embd, of which
one row is read) plus the whole KV cache at that depth (n_layer x n_head_kv x head_dim x 2 x
depth values at the type's bytes per value; the recipe's first and last two layers hold q8_0
V), at the measured copy bandwidth (scripts/cuda_copy_bw.cu: bytes read + written per second
of a device-to-device copy). Prompt processing has no such bound here (it is compute-bound);
its column is the ratio to f16 only. Writes a Markdown table to stdout.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import gguf

BYTES_PER_VALUE = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "turbo4": 34 / 64, "turbo3": 26 / 64,
                   "turbo2": 18 / 64}
ORDER = ["f16", "q8_0", "q4_0", "turbo4", "turbo3", "turbo2", "recipe"]


def model_bytes(path: Path) -> tuple[int, dict[str, int]]:
    """(bytes read per token by the weights, hparams)"""
    r = gguf.GGUFReader(str(path))
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()

    def num(key: str) -> int:
        f = r.fields[f"{arch}.{key}"]
        return int(f.parts[f.data[0]][0])

    weights = sum(int(t.n_bytes) for t in r.tensors if t.name != "token_embd.weight")
    hp = {"n_layer": num("block_count"), "n_head_kv": num("attention.head_count_kv"),
          "head_dim": num("attention.key_length")}
    return weights, hp


def kv_bytes(setting: str, depth: int, hp: dict[str, int]) -> float:
    per_layer = hp["n_head_kv"] * hp["head_dim"] * depth
    if setting == "recipe":  # turbo4 K everywhere; q8_0 V on the first and last 2 layers (mode 7)
        n_q8 = 4
        return per_layer * (hp["n_layer"] * BYTES_PER_VALUE["turbo4"] +
                            (hp["n_layer"] - n_q8) * BYTES_PER_VALUE["turbo4"] + n_q8 * BYTES_PER_VALUE["q8_0"])
    return per_layer * hp["n_layer"] * 2 * BYTES_PER_VALUE[setting]


def load(dirs: list[Path]) -> dict[tuple[str, str, int], float]:
    """(setting, pp|tg, depth) -> tokens/s (the last file read wins)"""
    out: dict[tuple[str, str, int], float] = {}
    for d in dirs:
        for f in sorted(d.glob("*.json")):
            try:
                rows = json.loads(f.read_text())
            except json.JSONDecodeError as e:
                raise SystemExit(f"{f}: not llama-bench JSON ({e})") from None
            if not isinstance(rows, list) or not all(isinstance(r, dict) and "n_depth" in r for r in rows):
                raise SystemExit(f"{f}: not llama-bench JSON (a list of test results); keep only those in {d}")
            for row in rows:
                kind = "pp" if row["n_prompt"] else "tg"
                out[(f.stem, kind, int(row["n_depth"]))] = float(row["avg_ts"])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--bandwidth", type=Path, required=True, help="scripts/cuda_copy_bw.cu's JSON line")
    ap.add_argument("dirs", type=Path, nargs="+")
    args = ap.parse_args(argv)
    bw = float(json.loads(args.bandwidth.read_text())["bandwidth_gbs"]) * 1e9
    weights, hp = model_bytes(args.model)
    data = load(args.dirs)
    depths = sorted({k[2] for k in data})
    print(f"weights read per token: {weights / 2**30:.2f} GiB; copy bandwidth {bw / 1e9:.0f} GB/s\n")
    print("| cache | depth | tg128 t/s | tg vs f16 | tg / ideal | pp512 t/s | pp vs f16 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for s in ORDER:
        for d in depths:
            tg = data.get((s, "tg", d))
            pp = data.get((s, "pp", d))
            if tg is None and pp is None:
                continue
            f_tg = data.get(("f16", "tg", d))
            f_pp = data.get(("f16", "pp", d))
            ideal = bw / (weights + kv_bytes(s, d, hp))
            cells = [s, f"{d // 1024}K" if d else "0",
                     f"{tg:.1f}" if tg else "-",
                     f"{tg / f_tg:.2f}x" if tg and f_tg else "-",
                     f"{tg / ideal:.0%}" if tg else "-",
                     f"{pp:.0f}" if pp else "-",
                     f"{pp / f_pp:.2f}x" if pp and f_pp else "-"]
            print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
