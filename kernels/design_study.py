#!/usr/bin/env python3
"""The measurements behind the codec's design choices (kernels/README.md), on Gaussian
data -- what K/V vectors look like after the randomized Hadamard rotation.

Every row is a quantizer applied to the same 2**17 standard-normal values; the figure is
the relative MSE  sum((x - q(x))^2) / sum(x^2)  (lower is better), with the bits per value
it costs including scales. The turbo rows use the real codec (the NumPy model of
kernels/turbo-ref.c that the tests check bit for bit against the C code).

usage: python kernels/design_study.py [--seed N]      (about a minute on 2 cores)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.kernels import turbo_numpy as codec  # noqa: E402


def f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


def rel_mse(x: np.ndarray, y: np.ndarray) -> float:
    return float(((x - y) ** 2).sum() / (x ** 2).sum())


def nearest(u: np.ndarray, cb: np.ndarray) -> np.ndarray:
    return np.searchsorted((cb[1:] + cb[:-1]) / 2, u)


def lloyd_max(samples: np.ndarray, k: int, iters: int = 40) -> np.ndarray:
    c = np.quantile(samples, (np.arange(k) + 0.5) / k)
    for _ in range(iters):
        idx = nearest(samples, c)
        c = np.bincount(idx, samples, k) / np.maximum(np.bincount(idx, None, k), 1)
    return c


# --- reference designs -----------------------------------------------------------------

def q4_0(x: np.ndarray) -> np.ndarray:
    """upstream q4_0: block 32, fp16 scale = absmax / -8, uniform 16 levels (4.5 bits)"""
    xb = x.reshape(-1, 32)
    mx = np.take_along_axis(xb, np.abs(xb).argmax(1)[:, None], 1)
    d = f16(mx / -8.0)
    inv = np.where(d != 0, 1.0 / np.where(d != 0, d, 1), 0)
    q = np.clip(np.floor(xb * inv + 8.5), 0, 15)
    return ((q - 8) * d).reshape(x.shape)


IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.float32)


def iq4_nl(x: np.ndarray) -> np.ndarray:
    """upstream iq4_nl (simplified): block 32, fp16 scale, its non-uniform table (4.5 bits)"""
    xb = x.reshape(-1, 32)
    mx = np.take_along_axis(xb, np.abs(xb).argmax(1)[:, None], 1)
    d = mx / -127.0
    inv = np.where(d != 0, 1 / np.where(d != 0, d, 1), 0)
    q = IQ4NL[np.abs((xb * inv)[..., None] - IQ4NL).argmin(-1)]
    num, den = (xb * q).sum(1, keepdims=True), (q * q).sum(1, keepdims=True)
    return (q * f16(np.where(den > 0, num / den, 0))).reshape(x.shape)


def lm_block(bits: int, block: int, norm: str, g: np.ndarray, norm_correct: bool = False):  # type: ignore[no-untyped-def]
    """Lloyd-Max codebook for normalized coordinates; one fp16 scale per block:
    norm='l2' (the paper: scale = ||x|| / sqrt(block)) or 'amax' (scale = max |x|)."""
    gb = g.reshape(-1, block)
    s = np.linalg.norm(gb, axis=1, keepdims=True) / np.sqrt(block) if norm == "l2" else np.abs(gb).max(1, keepdims=True)
    cb = lloyd_max((gb / s).ravel(), 1 << bits)

    def q(x: np.ndarray) -> np.ndarray:
        xb = x.reshape(-1, block)
        sc = np.linalg.norm(xb, axis=1, keepdims=True) / np.sqrt(block) if norm == "l2" else np.abs(xb).max(1, keepdims=True)
        sc = f16(sc)
        y = cb[nearest(xb / np.where(sc > 0, sc, 1), cb)] * sc
        if norm_correct:  # rescale each block to the input's L2 norm (the forks' "norm correction")
            ny, nx = np.linalg.norm(y, axis=1, keepdims=True), np.linalg.norm(xb, axis=1, keepdims=True)
            y = y * np.where(ny > 0, nx / np.where(ny > 0, ny, 1), 0)
        return y.reshape(x.shape)
    return q


def turbo(bits: int, lo: int | None = None, hi: int | None = None, cb: np.ndarray | None = None):  # type: ignore[no-untyped-def]
    """the codec, optionally with another scan window or codebook"""
    base = codec.CODECS[bits]
    c = codec.Codec(bits, base.cb if cb is None else cb,
                    ((base.cb[1:] + base.cb[:-1]) / 2).astype(np.float32) if cb is None
                    else ((cb[1:] + cb[:-1]) / 2).astype(np.float32),
                    base.lo if lo is None else lo, base.hi if hi is None else hi)

    def q(x: np.ndarray) -> np.ndarray:
        b, idx = codec.quantize_sub(x.reshape(-1, 32).astype(np.float32), c)
        return (codec.D[b][:, None] * c.cb.astype(np.float32)[idx]).reshape(x.shape)
    return q


def absmax_lm_codebook(bits: int, g: np.ndarray) -> np.ndarray:
    """Lloyd-Max for absmax-normalised sub-blocks of 32, scaled to +-127 (the generator's start)"""
    gb = g.reshape(-1, 32)
    c = lloyd_max((gb / np.abs(gb).max(1, keepdims=True)).ravel(), 1 << bits)
    return np.round(c / np.abs(c).max() * 127).astype(np.int64)


def dot_bias(q, x: np.ndarray, rng: np.random.Generator) -> float:  # type: ignore[no-untyped-def]
    """E[<q(x), y> <x, y>] / E[<x, y>^2] over random y: 1.0 = unbiased logits"""
    xs = x.reshape(-1, 128)[:4096]
    ys = rng.standard_normal(xs.shape).astype(np.float32)
    qx = q(xs)
    a, b = (qx * ys).sum(1), (xs * ys).sum(1)
    return float((a * b).mean() / (b * b).mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal(1 << 17).astype(np.float32)
    train = np.random.default_rng(args.seed + 1).standard_normal(1 << 17).astype(np.float32)

    rows: list[tuple[str, str, float, float | None]] = []

    def add(group: str, name: str, bits: float, q) -> None:  # type: ignore[no-untyped-def]
        rows.append((group, name, bits, rel_mse(x, q(x))))
        print(f"{group:<28} {name:<58} {bits:6.3f}  {rows[-1][3]:.5f}", flush=True)

    print(f"{'group':<28} {'quantizer':<58} {'bits':>6}  rel.MSE")
    add("A. upstream (4.5 bits)", "q4_0: block 32, fp16 absmax scale, uniform", 4.5, q4_0)
    add("A. upstream (4.5 bits)", "iq4_nl: block 32, fp16 scale, non-uniform table", 4.5, iq4_nl)
    for bits in (4, 3, 2):
        add(f"B. {bits}-bit scale layouts", "L2-norm scale per 128 (the paper), Lloyd-Max", bits + 16 / 128, lm_block(bits, 128, "l2", train))
        add(f"B. {bits}-bit scale layouts", "fp16 absmax scale per 64, Lloyd-Max", bits + 16 / 64, lm_block(bits, 64, "amax", train))
        add(f"B. {bits}-bit scale layouts", "fp16 absmax scale per 32, Lloyd-Max", bits + 16 / 32, lm_block(bits, 32, "amax", train))
        add(f"B. {bits}-bit scale layouts", f"turbo{bits}: 8-bit log scale per 32 + scan (shipped)", bits + 8 / 32, turbo(bits))
    for bits in (4, 3, 2):
        c = codec.CODECS[bits]
        add(f"C. turbo{bits} scan window", "first scale only (no search: offset 0)", bits + 0.25, turbo(bits, 0, 0))
        add(f"C. turbo{bits} scan window", f"pinned window {c.lo}..{c.hi}", bits + 0.25, turbo(bits))
        add(f"C. turbo{bits} scan window", "wide window -16..0", bits + 0.25, turbo(bits, -16, 0))
    for bits in (4, 3, 2):
        add(f"D. turbo{bits} codebook", "absmax Lloyd-Max (the generator's start)", bits + 0.25,
            turbo(bits, cb=absmax_lm_codebook(bits, train)))
        add(f"D. turbo{bits} codebook", "Lloyd fixed point of the scan rule (shipped)", bits + 0.25, turbo(bits))
    print()
    print("E. norm correction (rescale each block to the input's L2 norm) -- relative MSE and the")
    print("   bias of dot products <q(x), y> (1.0 = unbiased):")
    for bits in (4, 3, 2):
        plain = lm_block(bits, 128, "l2", train)
        corr = lm_block(bits, 128, "l2", train, norm_correct=True)
        t = turbo(bits)
        for name, q in (("L2 block 128", plain), ("L2 block 128 + norm correction", corr), (f"turbo{bits} (shipped)", t)):
            print(f"   {bits}-bit {name:<36} rel.MSE {rel_mse(x, q(x)):.5f}  dot bias {dot_bias(q, x, np.random.default_rng(9)):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
