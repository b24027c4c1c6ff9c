"""The batched Q4_1 kernels that scripts/patches/ add to llama.cpp, called directly in the built library:
GEMV (one activation row) and GEMM (rows in groups of 4), the SIMD versions and the portable C ones, against
a float64 product of the same quantized weights and activations. Weights are laid out as the repack does it
(8 rows interleaved 8 bytes at a time, nibbles unsigned, each block's d and m kept). Shapes cover the model's
(576 and 1536 wide), the AVX-512 path (16 rows and 16 columns at a time) and its AVX2 remainder."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration

Q4_1 = np.dtype([("d", "<f2"), ("m", "<f2"), ("qs", "u1", 16)])
Q8_0 = np.dtype([("d", "<f2"), ("qs", "i1", 32)])
Q8_0X4 = np.dtype([("d", "<f2", 4), ("qs", "i1", 128)])
Q4_1X8 = np.dtype([("d", "<f2", 8), ("m", "<f2", 8), ("qs", "u1", 128)])
KERNEL = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]


@pytest.fixture(scope="module")
def ggml():
    import llama_cpp

    lib_dir = os.environ.get("LLAMA_CPP_LIB_PATH") or str(Path(llama_cpp.__file__).parent / "lib")
    lib = ctypes.CDLL(str(Path(lib_dir) / "libggml-cpu.so"))
    lib.ggml_cpu_init()  # the fp16 tables the kernels read
    for name in ("quantize_row_q4_1", "quantize_row_q8_0", "ggml_quantize_mat_q8_0_4x8"):
        getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    for kind in ("gemv", "gemm"):
        for suffix in ("", "_generic"):
            getattr(lib, f"ggml_{kind}_q4_1_8x8_q8_0{suffix}").argtypes = KERNEL
    return lib


def ptr(a: np.ndarray) -> int:
    return a.ctypes.data


def q4_1_rows(lib, w: np.ndarray) -> np.ndarray:
    out = np.zeros((w.shape[0], w.shape[1] // 32), Q4_1)
    for r in range(w.shape[0]):
        lib.quantize_row_q4_1(ptr(w[r]), ptr(out[r]), w.shape[1])
    return out


def interleave(wq: np.ndarray) -> np.ndarray:
    """8 rows' blocks side by side, their quants 8 bytes from each row in turn (make_block_q4_1x8)."""
    nc, nb = wq.shape
    out = np.zeros((nc // 8, nb), Q4_1X8)
    out["d"] = wq["d"].reshape(nc // 8, 8, nb).transpose(0, 2, 1)
    out["m"] = wq["m"].reshape(nc // 8, 8, nb).transpose(0, 2, 1)
    out["qs"] = wq["qs"].reshape(nc // 8, 8, nb, 2, 8).transpose(0, 2, 3, 1, 4).reshape(nc // 8, nb, 128)
    return out


def dequant_q4_1(wq: np.ndarray) -> np.ndarray:
    q = np.concatenate([wq["qs"] & 0x0F, wq["qs"] >> 4], axis=-1).astype(np.float64)  # element j, j + 16
    return (wq["d"].astype(np.float64)[..., None] * q + wq["m"].astype(np.float64)[..., None]).reshape(len(wq), -1)


def reference(wq: np.ndarray, d: np.ndarray, qa: np.ndarray) -> np.ndarray:
    """rows x cols in float64 from the quantized operands: d (rows, blocks), qa (rows, blocks, 32)."""
    a = (d.astype(np.float64)[..., None] * qa.astype(np.float64)).reshape(len(d), -1)
    return a @ dequant_q4_1(wq).T


def problem(n: int, nc: int, nr: int, seed: int):
    rng = np.random.default_rng(seed)
    w = (rng.normal(0.01, 0.05, (nc, n))).astype(np.float32)
    x = rng.normal(0, 1, (nr, n)).astype(np.float32)
    x[:, rng.choice(n, 3, replace=False)] *= 200  # a few massive activation channels, as real models have
    return w, x


SHAPES = [(576, 64, 1), (576, 72, 4), (576, 64, 16), (576, 72, 16), (1536, 576, 20), (576, 1536, 32)]


@pytest.mark.parametrize(("n", "nc", "nr"), SHAPES)
@pytest.mark.parametrize("suffix", ["", "_generic"])
def test_gemv_matches_float64(ggml, n, nc, nr, suffix):
    w, x = problem(n, nc, nr, seed=n + nc + nr)
    wq = q4_1_rows(ggml, w)
    packed = interleave(wq)
    a = np.zeros((nr, n // 32), Q8_0)
    for r in range(nr):
        ggml.quantize_row_q8_0(ptr(x[r]), ptr(a[r]), n)
    out = np.zeros((nr, nc), np.float32)
    for r in range(nr):
        getattr(ggml, f"ggml_gemv_q4_1_8x8_q8_0{suffix}")(n, ptr(out[r]), nc, ptr(packed), ptr(a[r]), 1, nc)
    ref = reference(wq, a["d"], a["qs"])
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize(("n", "nc", "nr"), [s for s in SHAPES if s[2] % 4 == 0])
@pytest.mark.parametrize("suffix", ["", "_generic"])
def test_gemm_matches_float64(ggml, n, nc, nr, suffix):
    w, x = problem(n, nc, nr, seed=n * nc + nr)
    wq = q4_1_rows(ggml, w)
    packed = interleave(wq)
    nb = n // 32
    a = np.zeros((nr // 4, nb), Q8_0X4)
    for y in range(nr // 4):
        ggml.ggml_quantize_mat_q8_0_4x8(ptr(x[4 * y:]), ptr(a[y]), n)
    out = np.zeros((nr, nc), np.float32)
    getattr(ggml, f"ggml_gemm_q4_1_8x8_q8_0{suffix}")(n, ptr(out), nc, ptr(packed), ptr(a), nr, nc)
    # q8_0x4 holds 4 chunks of 8 quants per row per block: (groups, blocks, chunk, row, 8) -> rows, blocks, 32
    qa = a["qs"].reshape(nr // 4, nb, 4, 4, 8).transpose(0, 3, 1, 2, 4).reshape(nr, nb, 32)
    d = a["d"].transpose(0, 2, 1).reshape(nr, nb)
    ref = reference(wq, d, qa)
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()
    # the same rows through GEMV (how a batch's last rows run) give the same numbers
    a1 = np.zeros((nr, nb), Q8_0)
    for r in range(nr):
        ggml.quantize_row_q8_0(ptr(x[r]), ptr(a1[r]), n)
    assert (a1["qs"] == qa).all() and (a1["d"] == d).all()
    one = np.zeros(nc, np.float32)
    getattr(ggml, f"ggml_gemv_q4_1_8x8_q8_0{suffix}")(n, ptr(one), nc, ptr(packed), ptr(a1[nr - 1]), 1, nc)
    np.testing.assert_allclose(one, out[nr - 1], rtol=0, atol=1e-6 * np.abs(ref).max())
