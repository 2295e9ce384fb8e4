"""NumPy reference of the TurboQuant KV codec (kernels/turbo-ref.c), bit for bit.

Every arithmetic step is done in float32 in the same order as the C reference, so the two
must produce identical bytes. Constants are read from kernels/turbo-codebooks.h (the scale
tables are recomputed here and checked against the header by the tests).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

KERNELS = Path(__file__).resolve().parents[2] / "kernels"
HEADER = KERNELS / "turbo-codebooks.h"
QK = 64
SUB = 32
BLOCK_BYTES = {4: 34, 3: 26, 2: 18}


def _array(text: str, name: str) -> list[str]:
    m = re.search(name + r"\[\d+\]\s*=\s*\{([^}]*)\}", text)
    if not m:
        raise ValueError(f"{name} not found in {HEADER}")
    return [t.strip() for t in m.group(1).split(",") if t.strip()]


def _define(text: str, name: str) -> int:
    m = re.search(r"#define\s+" + name + r"\s+\(?(-?[0-9A-Fa-fx]+)", text)
    if not m:
        raise ValueError(f"{name} not found in {HEADER}")
    return int(m.group(1).rstrip("ulUL"), 0)


@dataclass(frozen=True)
class Codec:
    bits: int
    cb: np.ndarray          # int8 codebook (as int64)
    bnd: np.ndarray         # float32 decision boundaries
    lo: int
    hi: int

    @property
    def k(self) -> int:
        return 1 << self.bits


_TEXT = HEADER.read_text()
SCALE_BIAS = _define(_TEXT, "TURBO_SCALE_BIAS")
GRID = _define(_TEXT, "TURBO_GRID")
ROT_SEED = int(re.search(r"TURBO_ROT_SEED\s+0x([0-9A-Fa-f]+)", _TEXT).group(1), 16)  # type: ignore[union-attr]
CODECS = {
    bits: Codec(
        bits,
        np.array([int(v) for v in _array(_TEXT, f"turbo_cb{bits}")], dtype=np.int64),
        np.array([float(v.rstrip("f")) for v in _array(_TEXT, f"turbo_bnd{bits}")], dtype=np.float32),
        _define(_TEXT, f"TURBO_SCAN_LO{bits}"),
        _define(_TEXT, f"TURBO_SCAN_HI{bits}"),
    )
    for bits in (4, 3, 2)
}


def header_table(name: str) -> np.ndarray:
    return np.array([float(v.rstrip("f")) for v in _array(_TEXT, name)], dtype=np.float32)


def scale_table() -> np.ndarray:
    b = np.arange(256, dtype=np.float64)
    return np.where(b == 0, 0.0, 2.0 ** ((b - SCALE_BIAS) / GRID)).astype(np.float32)


def inv_scale_table() -> np.ndarray:
    b = np.arange(256, dtype=np.float64)
    return np.where(b == 0, 0.0, 2.0 ** (-(b - SCALE_BIAS) / GRID)).astype(np.float32)


def thr_table() -> np.ndarray:
    b = np.arange(256, dtype=np.float64)
    return np.where(b == 0, 0.0, 2.0 ** ((b - SCALE_BIAS) / GRID) * 127).astype(np.float32)


D, INV, THR = scale_table(), inv_scale_table(), thr_table()


def first_scale(amax: np.ndarray) -> np.ndarray:
    e0 = np.searchsorted(THR[1:], amax, side="left") + 1
    return np.minimum(e0, 255)


def quantize_sub(x: np.ndarray, c: Codec) -> tuple[np.ndarray, np.ndarray]:
    """x [n, 32] float32 -> (scale bytes [n], indices [n, 32])"""
    x = np.where(np.isfinite(x), x, np.float32(0)).astype(np.float32)
    n = x.shape[0]
    amax = np.abs(x).max(axis=1)
    e0 = first_scale(amax)
    cbf = c.cb.astype(np.float32)
    best_err = np.zeros(n, dtype=np.float32)
    best_b = np.full(n, -1, dtype=np.int64)
    best_idx = np.zeros((n, SUB), dtype=np.int64)
    for off in range(c.hi, c.lo - 1, -1):
        b = np.clip(e0 + off, 1, 255)
        u = x * INV[b][:, None]
        idx = np.searchsorted(c.bnd, u, side="left")
        r = D[b][:, None] * cbf[idx]
        e = x - r
        with np.errstate(over="ignore"):  # saturated blocks: inf errors, as in C
            e2 = e * e
        lane = e2[:, 0:8] + e2[:, 8:16]
        lane = lane + e2[:, 16:24]
        lane = lane + e2[:, 24:32]
        err = ((lane[:, 0] + lane[:, 4]) + (lane[:, 2] + lane[:, 6])) + ((lane[:, 1] + lane[:, 5]) + (lane[:, 3] + lane[:, 7]))
        take = (best_b < 0) | (err < best_err)
        best_err = np.where(take, err, best_err)
        best_b = np.where(take, b, best_b)
        best_idx[take] = idx[take]
    zero = amax == 0
    best_b[zero] = 0
    best_idx[zero] = c.k // 2
    return best_b.astype(np.uint8), best_idx


def pack(bits: int, e: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """e [nb, 2], idx [nb, 64] -> bytes [nb, BLOCK_BYTES]"""
    nb = e.shape[0]
    out = np.zeros((nb, BLOCK_BYTES[bits]), dtype=np.uint8)
    out[:, 0:2] = e
    if bits == 4:
        out[:, 2:34] = (idx[:, :32] | (idx[:, 32:] << 4)).astype(np.uint8)
    else:
        qs = np.zeros((nb, 16), dtype=np.int64)
        for g in range(4):
            qs |= (idx[:, 16 * g:16 * (g + 1)] & 3) << (2 * g)
        out[:, 2:18] = qs.astype(np.uint8)
        if bits == 3:
            hb = (idx >> 2) & 1
            out[:, 18:26] = np.packbits(hb.astype(np.uint8), axis=1, bitorder="little")
    return out


def unpack(bits: int, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    e = blocks[:, 0:2].astype(np.int64)
    if bits == 4:
        qs = blocks[:, 2:34].astype(np.int64)
        idx = np.concatenate([qs & 15, qs >> 4], axis=1)
    else:
        qs = blocks[:, 2:18].astype(np.int64)
        idx = np.concatenate([(qs >> (2 * g)) & 3 for g in range(4)], axis=1)
        if bits == 3:
            hb = np.unpackbits(blocks[:, 18:26], axis=1, bitorder="little").astype(np.int64)
            idx |= hb << 2
    return e, idx


def quantize(bits: int, x: np.ndarray) -> np.ndarray:
    """x [..., k] float32 (k % 64 == 0) -> bytes [n_blocks * BLOCK_BYTES]"""
    c = CODECS[bits]
    xs = np.asarray(x, dtype=np.float32).reshape(-1, SUB)
    b, idx = quantize_sub(xs, c)
    return pack(bits, b.reshape(-1, 2), idx.reshape(-1, QK)).reshape(-1)


def dequantize(bits: int, data: np.ndarray) -> np.ndarray:
    c = CODECS[bits]
    blocks = np.asarray(data, dtype=np.uint8).reshape(-1, BLOCK_BYTES[bits])
    e, idx = unpack(bits, blocks)
    d = np.repeat(D[e], SUB, axis=1)
    return (d * c.cb.astype(np.float32)[idx]).reshape(-1).astype(np.float32)


def splitmix64_signs(n: int, seed: int = ROT_SEED) -> np.ndarray:
    mask = (1 << 64) - 1
    state = seed
    out = np.empty(n, dtype=np.float32)
    word = 0
    for i in range(n):
        if i % 64 == 0:
            state = (state + 0x9E3779B97F4A7C15) & mask
            z = state
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
            word = z ^ (z >> 31)
        out[i] = -1.0 if (word >> (i % 64)) & 1 else 1.0
    return out


def hadamard(n: int) -> np.ndarray:
    h = np.array([[1.0]])
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h / np.sqrt(n)


def rotation(n: int) -> np.ndarray:
    """The randomized Hadamard rotation R = diag(s) H: rotated = x @ R."""
    return splitmix64_signs(n).astype(np.float64)[:, None] * hadamard(n)
