"""The TurboQuant codec in kernels/, compiled standalone, against the NumPy reference."""
from __future__ import annotations

import numpy as np
import pytest

from tests.kernels import turbo_numpy as ref
from tests.kernels.conftest import TurboLib, has_simd_quantizer, q8_0, q8_0_values

BITS = (4, 3, 2)
HEAD_DIMS = (64, 128, 256, 512)
# relative MSE on Gaussian data (rotated K/V are close to Gaussian): the design values
# (kernels/README.md) with a 3 % margin for sampling noise
DESIGN_REL_MSE = {4: 0.00624 * 1.03, 3: 0.02594 * 1.03, 2: 0.10520 * 1.03}


def gaussian(n: int, seed: int, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)


def edge_rows() -> list[np.ndarray]:
    rows = []
    rows.append(np.zeros(128, np.float32))
    one_hot = np.zeros(128, np.float32)
    one_hot[5] = 3.0
    rows.append(one_hot)
    rows.append(np.full(128, -2.5, np.float32))
    rows.append(gaussian(128, 1, 1e-6))      # below the smallest scales
    rows.append(gaussian(128, 2, 1e4))       # large, within f16 range
    big = gaussian(128, 3)
    big[7] = 65504.0                          # f16 max
    rows.append(big)
    huge = gaussian(128, 4)
    huge[9] = 1e30                            # beyond any scale: saturates
    rows.append(huge)
    sub = np.zeros(128, np.float32)
    sub[0] = 1e-30
    rows.append(sub)
    alt = np.tile(np.array([1.0, -1.0], np.float32), 64)
    rows.append(alt)
    return rows


@pytest.mark.parametrize("bits", BITS)
def test_reference_matches_numpy_bit_for_bit(scalar_lib: TurboLib, bits: int) -> None:
    rows = [gaussian(4096, 10 + bits), gaussian(4096, 20 + bits, 37.0), *edge_rows()]
    for x in rows:
        got = scalar_lib.quantize(bits, x, ref=True)
        want = ref.quantize(bits, x)
        assert np.array_equal(got, want), f"turbo{bits}: C reference and NumPy reference differ"
        assert np.array_equal(scalar_lib.dequantize(bits, got, ref=True), ref.dequantize(bits, want))


@pytest.mark.parametrize("bits", BITS)
def test_simd_matches_reference_bit_for_bit(simd_lib: TurboLib, bits: int) -> None:
    for x in [gaussian(64 * 512, 30 + bits), gaussian(64 * 64, 40 + bits, 1e-3), *edge_rows()]:
        q_ref = simd_lib.quantize(bits, x, ref=True)
        q_simd = simd_lib.quantize(bits, x, ref=False)
        assert np.array_equal(q_ref, q_simd), f"turbo{bits}: AVX2 quantize differs from the reference"
        assert np.array_equal(simd_lib.dequantize(bits, q_ref, ref=True), simd_lib.dequantize(bits, q_ref, ref=False))


@pytest.mark.parametrize("bits", BITS)
def test_roundtrip_error_within_design_bound(any_lib: TurboLib, bits: int) -> None:
    x = gaussian(64 * 4096, 50 + bits)
    y = any_lib.dequantize(bits, any_lib.quantize(bits, x, ref=False), ref=False)
    rel = float(((x - y) ** 2).sum() / (x ** 2).sum())
    assert rel <= DESIGN_REL_MSE[bits], f"turbo{bits} relative MSE {rel:.5f} > {DESIGN_REL_MSE[bits]:.5f}"
    # and it is a real quantizer: not lossless, and scale-equivariant on the grid (x * 2 -> y * 2)
    assert rel > DESIGN_REL_MSE[bits] / 2
    y2 = any_lib.dequantize(bits, any_lib.quantize(bits, x * 2, ref=False), ref=False)
    assert np.array_equal(y2, y * 2)


@pytest.mark.parametrize("bits", BITS)
def test_per_value_error_bound(scalar_lib: TurboLib, bits: int) -> None:
    """No value is further from its input than the largest codeword gap (or clipping) allows."""
    x = gaussian(64 * 2048, 60 + bits, 3.0)
    q = scalar_lib.quantize(bits, x, ref=True)
    y = scalar_lib.dequantize(bits, q, ref=True)
    e, _ = ref.unpack(bits, q.reshape(-1, ref.BLOCK_BYTES[bits]))
    d = np.repeat(ref.D[e].reshape(-1), 32)
    cb = ref.CODECS[bits].cb
    half_gap = np.diff(cb).max() / 2
    # inside the codebook range the error is at most half the widest gap; beyond it, the
    # excess over 127 steps (the scan may pick a scale below the clipping-free one)
    bound = d * np.maximum(half_gap, np.abs(x) / np.where(d > 0, d, 1) - 127 + 1e-3)
    assert np.all(np.abs(x - y) <= bound * (1 + 1e-6))


def idempotence_rows(bits: int) -> list[np.ndarray]:
    return [gaussian(64 * 2048, 70 + bits), gaussian(64 * 256, 80 + bits, 1e-5),
            gaussian(64 * 256, 90 + bits, 3e4), *edge_rows()]


@pytest.mark.parametrize("bits", BITS)
def test_requantizing_a_decoded_block_gives_it_back(any_lib: TurboLib, bits: int) -> None:
    """quantize(dequantize(q)) == q bit for bit, for the reference, the SIMD kernels and the
    NumPy model: a block that is dequantized and written back unchanged (a K-shift of cells
    that did not move, a copy) loses nothing."""
    for x in idempotence_rows(bits):
        for ref_path in (True, False):
            q = any_lib.quantize(bits, x, ref=ref_path)
            y = any_lib.dequantize(bits, q, ref=ref_path)
            q2 = any_lib.quantize(bits, y, ref=ref_path)
            bad = np.flatnonzero((q != q2).reshape(-1, q.size // (x.size // 64)).any(axis=1))
            assert bad.size == 0, f"turbo{bits}: {bad.size} of {x.size // 64} blocks change when re-quantized"
        assert np.array_equal(ref.quantize(bits, ref.dequantize(bits, q)), q)


@pytest.mark.parametrize("bits", BITS)
def test_ten_rotation_round_trips_do_not_grow_the_error(any_lib: TurboLib, bits: int) -> None:
    """What a K-shift does to a cell whose position does not change: dequantize, rotate back,
    rotate again (float32, with its rounding), quantize. Ten passes give the first pass's
    blocks back: the error does not compound."""
    head_dim = 128
    r = ref.rotation(head_dim).astype(np.float32)
    x = gaussian(head_dim * 512, 100 + bits).reshape(-1, head_dim) @ r
    q0 = any_lib.quantize(bits, x, ref=False)
    q = q0
    for _ in range(10):
        y = any_lib.dequantize(bits, q, ref=False).reshape(-1, head_dim)
        z = ((y @ r.T) @ r).astype(np.float32)  # un-rotate, (RoPE by 0), rotate
        q = any_lib.quantize(bits, z, ref=False)
    assert np.array_equal(q, q0)


def test_codebooks_satisfy_the_centroid_condition() -> None:
    """Each codeword is (within one int8 unit) the mean of the values the rule maps to it."""
    g = np.random.default_rng(7).standard_normal((1 << 15, 32)).astype(np.float32)
    for bits, c in ref.CODECS.items():
        b, idx = ref.quantize_sub(g, c)
        u = g / ref.D[b][:, None]
        for j, cw in enumerate(c.cb):
            sel = idx == j
            assert sel.sum() > 100
            mean = float(u[sel].mean())
            assert abs(mean - cw) < 1.0, f"turbo{bits} codeword {j}: {cw} but centroid {mean:.2f}"
        assert np.all(np.diff(c.cb) > 0) and np.array_equal(c.cb, -c.cb[::-1])
        assert c.cb[-1] == 127


def test_header_tables_match_their_definition() -> None:
    assert np.array_equal(ref.header_table("turbo_scale"), ref.scale_table())
    assert np.array_equal(ref.header_table("turbo_inv_scale"), ref.inv_scale_table())
    assert np.array_equal(ref.header_table("turbo_thr"), ref.thr_table())
    assert np.all(np.diff(ref.THR[1:]) > 0)
    for c in ref.CODECS.values():
        assert np.array_equal(c.bnd, ((c.cb[1:] + c.cb[:-1]) / 2).astype(np.float32))


def test_first_scale_rule(scalar_lib: TurboLib) -> None:
    for amax in [1e-30, 1e-7, 0.37, 1.0, 127.0, 3000.0, 65504.0, 1e9]:
        b = scalar_lib.first_scale(amax)
        assert b == int(ref.first_scale(np.array([amax], np.float32))[0])
        if amax <= ref.THR[255]:
            assert ref.THR[b] >= np.float32(amax) and (b == 1 or ref.THR[b - 1] < np.float32(amax))
        else:
            assert b == 255


@pytest.mark.parametrize("bits", BITS)
def test_zero_vector(any_lib: TurboLib, bits: int) -> None:
    x = np.zeros(512, np.float32)
    q = any_lib.quantize(bits, x, ref=False)
    blocks = q.reshape(-1, ref.BLOCK_BYTES[bits])
    assert np.all(blocks[:, 0:2] == 0), "a zero sub-block must store scale byte 0"
    y = any_lib.dequantize(bits, q, ref=False)
    assert np.all(y == 0) and not np.any(np.signbit(y) & (y != 0))


@pytest.mark.parametrize("bits", BITS)
def test_nan_and_inf_are_stored_as_zero_and_do_not_spread(any_lib: TurboLib, bits: int) -> None:
    x = gaussian(4 * 128, 70 + bits)
    bad = x.copy()
    bad[3] = np.nan
    bad[70] = np.inf
    bad[200] = -np.inf
    bad[256:384] = np.nan                      # a whole row of NaN
    clean = bad.copy()
    clean[~np.isfinite(clean)] = 0.0
    q_bad = any_lib.quantize(bits, bad, ref=False)
    assert np.array_equal(q_bad, any_lib.quantize(bits, clean, ref=False))
    y = any_lib.dequantize(bits, q_bad, ref=False)
    assert np.all(np.isfinite(y))
    assert np.all(y[256:384] == 0)
    # other rows are untouched by the bad ones
    q_x = any_lib.quantize(bits, x, ref=False).reshape(4, -1)
    assert np.array_equal(q_bad.reshape(4, -1)[3], q_x[3])


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_packing_at_every_head_dim(any_lib: TurboLib, bits: int, head_dim: int) -> None:
    """Rows of n_head x head_dim: exact sizes, no writes past the end (canary), and every
    index and scale unpacks to what the NumPy reference packed."""
    n_head = 3
    x = gaussian(n_head * head_dim, head_dim + bits)
    nbytes = n_head * head_dim // 64 * ref.BLOCK_BYTES[bits]
    assert nbytes * 8 / x.size == {4: 4.25, 3: 3.25, 2: 2.25}[bits]
    buf = np.full(nbytes + 64, 0xA5, dtype=np.uint8)
    import ctypes
    name = f"turbo{bits}_quantize_row"
    f = getattr(any_lib.lib, name)
    f.restype = None
    f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    f(x.ctypes.data, buf.ctypes.data, x.size)
    assert np.all(buf[nbytes:] == 0xA5), "the quantizer wrote past the end of the row"
    q = buf[:nbytes]
    assert np.array_equal(q, ref.quantize(bits, x))
    e, idx = ref.unpack(bits, q.reshape(-1, ref.BLOCK_BYTES[bits]))
    assert np.array_equal(ref.pack(bits, e, idx).reshape(-1), q)
    out = np.full(x.size + 16, 7.0, dtype=np.float32)
    g = getattr(any_lib.lib, f"turbo{bits}_dequantize_row")
    g.restype = None
    g.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    g(q.ctypes.data, out.ctypes.data, x.size)
    assert np.all(out[x.size:] == 7.0), "the dequantizer wrote past the end of the row"
    assert np.array_equal(out[: x.size], ref.dequantize(bits, q))


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_vec_dot_q8_0(any_lib: TurboLib, scalar_lib: TurboLib, bits: int, head_dim: int) -> None:
    rng = np.random.default_rng(head_dim * 10 + bits)
    for _ in range(20):
        x = rng.standard_normal(head_dim).astype(np.float32) * rng.uniform(0.01, 50)
        yv = rng.standard_normal(head_dim).astype(np.float32) * rng.uniform(0.01, 50)
        qx = any_lib.quantize(bits, x, ref=False)
        qy = q8_0(yv)
        want = float(np.dot(ref.dequantize(bits, qx).astype(np.float64), q8_0_values(qy).astype(np.float64)))
        got = any_lib.vec_dot(bits, head_dim, qx, qy)
        gen = scalar_lib.vec_dot(bits, head_dim, qx, qy)
        scale = float(np.abs(ref.dequantize(bits, qx)).sum() * np.abs(q8_0_values(qy)).max()) + 1e-30
        assert abs(got - want) <= 1e-5 * scale
        assert abs(gen - want) <= 1e-5 * scale


def test_rotation_signs_and_orthogonality(scalar_lib: TurboLib) -> None:
    s = scalar_lib.signs(512)
    assert np.array_equal(s, ref.splitmix64_signs(512))
    assert set(np.unique(s)) == {-1.0, 1.0}
    assert 0.4 < (s < 0).mean() < 0.6
    for n in HEAD_DIMS:
        r = ref.rotation(n)
        assert np.allclose(r @ r.T, np.eye(n), atol=1e-12)
        assert np.array_equal(scalar_lib.signs(n), s[:n]), "every head dim uses the same sign prefix"


def test_rotation_makes_outliers_gaussian_like() -> None:
    """Why we rotate: a vector with one huge channel quantizes badly; rotated, it does not."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((256, 128)).astype(np.float32)
    x[:, 17] *= 40.0
    r = ref.rotation(128).astype(np.float32)
    plain = ref.dequantize(4, ref.quantize(4, x)).reshape(x.shape)
    rot = (ref.dequantize(4, ref.quantize(4, x @ r)).reshape(x.shape)) @ r.T
    err_plain = ((x - plain) ** 2).sum() / (x ** 2).sum()
    err_rot = ((x - rot) ** 2).sum() / (x ** 2).sum()
    assert err_rot < err_plain * 0.75


@pytest.mark.parametrize("variant", ["scalar", "avx2"])
def test_under_address_sanitizer(kernel_build_dir, variant: str) -> None:  # type: ignore[no-untyped-def]
    """Every entry point on exactly-sized heap buffers, under ASan + UBSan."""
    import subprocess

    from tests.kernels.conftest import KERNELS, SOURCES, cc, has_avx2, include_flags

    if variant == "avx2" and not has_avx2():
        pytest.skip("this CPU has no AVX2")
    exe = kernel_build_dir / f"asan-check-{variant}"
    flags = ["-std=c11", "-O1", "-g", "-ffp-contract=off", "-fsanitize=address,undefined",
             "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
    if variant == "avx2":
        flags += ["-mavx2", "-mfma", "-mf16c"]
    src = [str(s) for s in SOURCES] + [str(KERNELS.parent / "tests" / "kernels" / "asan_check.c")]
    res = subprocess.run([cc(), *flags, *include_flags(), *src, "-o", str(exe), "-lm"], capture_output=True, text=True)
    if res.returncode != 0 and "sanitize" in res.stderr:
        pytest.skip(f"the compiler has no sanitizer runtime: {res.stderr.strip()[:200]}")
    assert res.returncode == 0, res.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"impl={variant}" in run.stdout and "failures=0" in run.stdout


def test_neon_kernels_under_qemu(kernel_build_dir) -> None:  # type: ignore[no-untyped-def]
    """The aarch64 NEON kernels (what the CPU backend runs on a Mac), cross-compiled and run
    under qemu-user: quantize/dequantize bit-exact with the reference, dot products equal to
    a double-precision sum, exactly-sized buffers."""
    import shutil
    import subprocess

    from tests.kernels.conftest import KERNELS, SOURCES, include_flags

    gcc, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64")
    if not gcc or not qemu:
        pytest.skip("aarch64-linux-gnu-gcc and qemu-aarch64 are needed (Debian: gcc-aarch64-linux-gnu qemu-user)")
    exe = kernel_build_dir / "neon-check"
    src = [str(s) for s in SOURCES] + [str(KERNELS.parent / "tests" / "kernels" / "asan_check.c")]
    res = subprocess.run([gcc, "-std=c11", "-O2", "-ffp-contract=off", "-static", *include_flags(), *src,
                          "-o", str(exe), "-lm"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    run = subprocess.run([qemu, str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "impl=neon" in run.stdout and "failures=0" in run.stdout
    assert has_simd_quantizer(exe, "neon", objdump="aarch64-linux-gnu-objdump"), \
        "the aarch64 build has no NEON quantizer"


def test_metal_helpers_match_the_reference_on_the_host(kernel_build_dir) -> None:  # type: ignore[no-untyped-def]
    """kernels/turbo-metal.h (the Metal quantize/dequantize helpers) compiled by the host C++
    compiler through a small Metal compatibility header: bit for bit the CPU reference."""
    import shutil
    import subprocess

    from tests.kernels.conftest import KERNELS, cc, include_flags

    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if not cxx:
        pytest.skip("no C++ compiler")
    tests_dir = KERNELS.parent / "tests" / "kernels"
    obj = kernel_build_dir / "turbo-ref-for-metal-check.o"
    exe = kernel_build_dir / "metal-host-check"
    res = subprocess.run([cc(), "-std=c11", "-O2", "-ffp-contract=off", "-c", *include_flags(),
                          str(KERNELS / "turbo-ref.c"), "-o", str(obj)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([cxx, "-std=c++17", "-O2", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror",
                          *include_flags(), "-I", str(tests_dir), str(tests_dir / "metal_host_check.cpp"), str(obj),
                          "-o", str(exe)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "failures=0" in run.stdout, run.stdout + run.stderr
