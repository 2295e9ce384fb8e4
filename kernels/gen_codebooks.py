#!/usr/bin/env python3
"""Generate kernels/turbo-codebooks.h: the constants of the TurboQuant KV codec.

The codec quantizes the *rotated* K/V coordinates (a randomized Hadamard rotation makes
them close to i.i.d. Gaussian) in sub-blocks of 32 values. Each sub-block stores one byte
``b`` that selects a scale on a logarithmic grid, ``d(b) = 2**((b - SCALE_BIAS) / 8)``
(``b == 0`` means the whole sub-block is zero), and one ``bits``-bit index per value into
a symmetric int8 codebook whose largest entry is 127. A value is reconstructed as
``d(b) * codebook[index]``.

The scale rule (see turbo-ref.c): ``e0`` is the smallest grid step with
``d(e0) * 127 >= amax`` (so nothing clips); the quantizer then tries the grid steps
``e0 + lo .. e0 + hi`` (the *scan window*), rounds every value to the nearest codeword at
each, and keeps the step with the smallest squared error.

This script finds, per bit width, the codebook that is a fixed point of Lloyd's algorithm
for the distribution that *this* scale rule produces on Gaussian sub-blocks (the centroid
condition: every inner codeword is the mean, in codebook units, of the values assigned to
it; the outermost pair is anchored at +-127, where its own centroid lands within a unit),
and the scan window that captures the rule's choices. The result is deterministic
(seeded) and pinned: the tests re-run this script and compare with the committed header.

usage: gen_codebooks.py [--check] [--out PATH]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

QK_SUB = 32            # values per scale
GRID = 8               # scale steps per octave
SCALE_BIAS = 183       # d(255) * 127 ~= 65504 (the largest f16): the range of an f16 KV cache
CB_MAX = 127
SEED = 20261129
N_BLOCKS = 1 << 16     # Gaussian training sub-blocks
ITERS = 8             # Lloyd iterations per round
ROUNDS = 3            # rounds of (choose the window, iterate)
SPREADS = (1.0, 1.05, 1.1, 1.15)  # starting spreads of the inner codewords
WIDE = (-16, 0)        # the window searched when choosing the pinned window
COVER = 0.999          # pinned window covers this share of the choices of the wide scan
IDEMPOTENT = (-1, 0)   # offsets every window holds, so that quantize(dequantize(q)) == q
ROT_SEED = 0x7475726230713F2D  # rotation sign seed (documented in kernels/README.md)


def scale_lut() -> np.ndarray:
    b = np.arange(256, dtype=np.float64)
    d = np.where(b == 0, 0.0, 2.0 ** ((b - SCALE_BIAS) / GRID))
    return d.astype(np.float32)


def inv_lut() -> np.ndarray:
    b = np.arange(256, dtype=np.float64)
    inv = np.where(b == 0, 0.0, 2.0 ** (-(b - SCALE_BIAS) / GRID))
    return inv.astype(np.float32)


def thr_lut() -> np.ndarray:
    """THR[b] = float32(d(b) * 127): e0 = smallest b >= 1 with THR[b] >= amax."""
    b = np.arange(256, dtype=np.float64)
    t = np.where(b == 0, 0.0, 2.0 ** ((b - SCALE_BIAS) / GRID) * CB_MAX)
    return t.astype(np.float32)


def boundaries(cb: np.ndarray) -> np.ndarray:
    c = cb.astype(np.float32)
    return ((c[1:] + c[:-1]) * np.float32(0.5)).astype(np.float32)


def quantize_scan(x: np.ndarray, cb: np.ndarray, lo: int, hi: int):
    """Vectorised model of the C reference rule on sub-blocks x [n, 32] (float32).

    Returns (b [n], idx [n, 32], offset [n]) where offset = b - e0.
    """
    x = np.where(np.isfinite(x), x, 0).astype(np.float32)
    d, inv, thr = scale_lut(), inv_lut(), thr_lut()
    bnd = boundaries(cb)
    cbf = cb.astype(np.float32)
    amax = np.abs(x).max(axis=1)
    e0 = np.searchsorted(thr[1:], amax, side="left") + 1  # first b>=1 with thr[b] >= amax
    e0 = np.clip(e0, 1, 255)
    n = x.shape[0]
    best_err = np.full(n, np.inf, dtype=np.float32)
    best_b = np.zeros(n, dtype=np.int64)
    best_idx = np.zeros(x.shape, dtype=np.int64)
    for off in range(hi, lo - 1, -1):  # descending b; strictly better replaces
        b = np.clip(e0 + off, 1, 255)
        u = x * inv[b][:, None]
        idx = np.searchsorted(bnd, u, side="left")  # = number of boundaries strictly below u
        r = d[b][:, None] * cbf[idx]
        err = ((x - r) ** 2).sum(axis=1, dtype=np.float32)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_b = np.where(better, b, best_b)
        best_idx[better] = idx[better]
    zero = amax == 0
    best_b[zero] = 0
    best_idx[zero] = len(cb) // 2
    return best_b, best_idx, best_b - e0


def choose_window(g: np.ndarray, cb: np.ndarray) -> tuple[int, int]:
    """The smallest window that holds COVER of the offsets a wide scan chooses, widened to
    hold the offsets -1 and 0 (IDEMPOTENT).

    Why -1 and 0: a decoded sub-block's largest value is d(b) * 127 (the quantizer never
    picks a scale above e0, so its largest value always lands on the outer codeword), and the
    rule puts that block's e0 at b or b + 1 (turbo_thr[b] and the float product
    d(b) * 127 may differ by an ulp). With b in the window at zero error, re-quantizing a
    decoded block gives the block back bit for bit, so a K-shift (dequantize, rotate,
    quantize) of cells that did not move does not add error every time it runs.
    """
    _, _, off = quantize_scan(g, cb, *WIDE)
    vals, counts = np.unique(off, return_counts=True)
    chosen, acc = [], 0
    for j in np.argsort(-counts, kind="stable"):
        chosen.append(int(vals[j]))
        acc += counts[j]
        if acc >= COVER * len(off):
            break
    return min(min(chosen), IDEMPOTENT[0]), max(max(chosen), IDEMPOTENT[1])


def lloyd_step(g: np.ndarray, cb: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """One Lloyd update of the (float) codebook for the scan rule: the centroid condition."""
    k = len(cb)
    b, idx, _ = quantize_scan(g, np.round(cb), lo, hi)
    s = np.broadcast_to(scale_lut().astype(np.float64)[b][:, None], g.shape)
    num = np.bincount(idx.ravel(), (s * g).ravel(), k)
    den = np.bincount(idx.ravel(), (s * s).ravel(), k)
    c = np.where(den > 0, num / np.maximum(den, 1e-300), cb)
    c = (c - c[::-1]) / 2  # symmetric
    # the outermost codewords anchor the scale grid (e0 is chosen so that +-127 does not clip);
    # at the fixed point their own centroids land within a fraction of a unit of +-127 anyway
    c[0], c[-1] = -CB_MAX, CB_MAX
    return c


def lloyd(bits: int, rng: np.random.Generator) -> tuple[np.ndarray, int, int, float]:
    k = 1 << bits
    g = rng.standard_normal((N_BLOCKS, QK_SUB)).astype(np.float32)
    probe = g[: N_BLOCKS // 8]
    # start: Lloyd-Max for absmax-normalised Gaussian sub-blocks
    u = (g / np.abs(g).max(axis=1, keepdims=True)).ravel()
    c = np.quantile(u, (np.arange(k) + 0.5) / k)
    for _ in range(20):
        bd = (c[1:] + c[:-1]) / 2
        idx = np.searchsorted(bd, u)
        c = np.bincount(idx, u, k) / np.maximum(np.bincount(idx, None, k), 1)
    c0 = c / np.abs(c).max() * CB_MAX
    # Lloyd's algorithm has several fixed points here: start from a few spreads of the
    # inner codewords and keep the best result
    best: tuple[float, np.ndarray, int, int] | None = None
    for spread in SPREADS:
        cb = c0 * spread
        cb[0], cb[-1] = -CB_MAX, CB_MAX
        for _ in range(ROUNDS):
            window = choose_window(probe, np.round(cb))
            for _ in range(ITERS):
                cb = lloyd_step(g, cb, *window)
        cbi = np.round(cb).astype(np.int64)
        lo, hi = choose_window(probe, cbi)
        b, idx, _ = quantize_scan(g, cbi, lo, hi)
        r = scale_lut()[b][:, None] * cbi.astype(np.float32)[idx]
        rel = float(((g - r) ** 2).sum() / (g ** 2).sum())
        if best is None or rel < best[0]:
            best = (rel, cbi, lo, hi)
    assert best is not None
    rel, cbi, lo, hi = best
    return cbi, lo, hi, rel


def fmt_floats(a: np.ndarray, per_line: int = 4) -> str:
    items = [f"{float(v):.9g}f" if np.isfinite(v) else "0.0f" for v in a]
    items = [i if ("." in i or "e" in i) else i.replace("f", ".0f") for i in items]
    lines = []
    for i in range(0, len(items), per_line):
        lines.append("    " + ", ".join(items[i:i + per_line]) + ",")
    return "\n".join(lines)


def render() -> str:
    rng = np.random.default_rng(SEED)
    out = []
    w = out.append
    w("// turbo-codebooks.h: constants of the TurboQuant KV codec.")
    w("// GENERATED by kernels/gen_codebooks.py -- do not edit; re-run the script and commit.")
    w("// Plain C99; also valid Metal. Every table has internal linkage (TURBO_CONST is")
    w("// `static constant` in Metal, `static const` in C), so a header included by several")
    w("// Metal libraries or .air files defines no symbol twice.")
    w("#pragma once")
    w("")
    w("#ifndef TURBO_CONST")
    w("#  if defined(__METAL_VERSION__)")
    w("#    define TURBO_CONST static constant")
    w("#  else")
    w("#    define TURBO_CONST static const")
    w("#  endif")
    w("#endif")
    w("")
    w(f"#define TURBO_QK_SUB      {QK_SUB}   // values per scale byte")
    w(f"#define TURBO_GRID        {GRID}    // scale steps per octave")
    w(f"#define TURBO_SCALE_BIAS  {SCALE_BIAS}  // d(b) = 2^((b - TURBO_SCALE_BIAS)/TURBO_GRID), d(0) = 0")
    w(f"#define TURBO_ROT_SEED    0x{ROT_SEED:016X}ull // rotation sign stream seed")
    w("")
    stats = []
    for bits in (4, 3, 2):
        cb, lo, hi, rel = lloyd(bits, rng)
        stats.append((bits, rel))
        k = 1 << bits
        w(f"// {bits}-bit codebook: Lloyd fixed point for the scan rule on Gaussian sub-blocks;")
        w(f"// relative MSE on the training data {rel:.5f} (window {lo}..{hi}).")
        w(f"TURBO_CONST signed char turbo_cb{bits}[{k}] = {{ " + ", ".join(str(int(v)) for v in cb) + " };")
        bd = boundaries(cb)
        w(f"TURBO_CONST float turbo_bnd{bits}[{k - 1}] = {{ " + ", ".join(f"{float(v):.1f}f" for v in bd) + " };")
        w(f"#define TURBO_SCAN_LO{bits} ({lo})")
        w(f"#define TURBO_SCAN_HI{bits} ({hi})")
        w("")
    w("// d(b): the scale of a sub-block with scale byte b")
    w("TURBO_CONST float turbo_scale[256] = {")
    w(fmt_floats(scale_lut()))
    w("};")
    w("")
    w("// 1/d(b) (0 for b = 0), used to map values onto the codebook")
    w("TURBO_CONST float turbo_inv_scale[256] = {")
    w(fmt_floats(inv_lut()))
    w("};")
    w("")
    w("// float(d(b) * 127): the first b >= 1 with turbo_thr[b] >= amax is the smallest scale that does not clip")
    w("TURBO_CONST float turbo_thr[256] = {")
    w(fmt_floats(thr_lut()))
    w("};")
    w("")
    for bits, rel in stats:
        print(f"turbo{bits}: relative MSE on Gaussian training sub-blocks {rel:.5f}", file=sys.stderr)
    return "\n".join(out).rstrip("\n") + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 if the committed header differs")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("turbo-codebooks.h"))
    args = ap.parse_args()
    text = render()
    if args.check:
        cur = args.out.read_text() if args.out.exists() else ""
        if cur != text:
            print(f"{args.out} is stale: run kernels/gen_codebooks.py and commit the result", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date", file=sys.stderr)
        return 0
    tmp = args.out.with_suffix(".h.tmp")
    tmp.write_text(text)
    tmp.replace(args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
