#!/usr/bin/env python3
"""numba_kernels.py: numba-cuda kernels through the cuwire shim, used by the end-to-end tests.

    python numba_kernels.py

numba-cuda compiles each @cuda.jit kernel to PTX with libNVVM (the nvidia-cuda-nvcc-cu12
wheel), links it with the driver JIT (cuLinkCreate_v2 / cuLinkAddData_v2 / cuLinkComplete,
answered by the shim: nvJitLink is not installed and NUMBA_CUDA_ENABLE_PYNVJITLINK=0), loads
the result with cuLibraryLoadData and launches with cuLaunchKernelEx. Every result is checked
against numpy; the first failure prints "FAIL ..." on stderr and exits 1. Each passed check
prints an "ok ..." line; the last line is "ALL PASSED".

Arrays are small: the emulated device runs PTX on the CPU, and numba's first compile of each
kernel dominates the run time.
"""

import os
import sys
import time
import traceback

# Deliver PTX to the driver's JIT (the emulated device runs PTX, not SASS): never nvJitLink.
os.environ.setdefault("NUMBA_CUDA_ENABLE_PYNVJITLINK", "0")
# Small grids and host arrays are deliberate here: no performance warnings.
os.environ.setdefault("NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS", "0")
os.environ.setdefault("NUMBA_CUDA_WARN_ON_IMPLICIT_COPY", "0")

import numpy as np  # noqa: E402
from numba import cuda, float32  # noqa: E402

T0 = time.monotonic()


def fail(msg):
    sys.stdout.flush()
    print("FAIL " + msg, file=sys.stderr, flush=True)
    sys.exit(1)


def ok(msg):
    print("ok   %-40s (%.1f s)" % (msg, time.monotonic() - T0), flush=True)


def check(name, got, want, **tol):
    if got.shape != want.shape or not np.allclose(got, want, **tol):
        bad = np.argwhere(~np.isclose(got, want, **tol))[:5] if got.shape == want.shape else "shape"
        fail("%s: result differs from numpy (first differing indices %s)\n got  %r\n want %r" % (name, bad, got, want))
    ok(name)


# ---- kernels


@cuda.jit
def saxpy(a, x, y, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a * x[i] + y[i]


BLOCK = 64


@cuda.jit
def reverse_blocks(x, out):
    """Reverses each block's slice through shared memory."""
    tile = cuda.shared.array(BLOCK, dtype=float32)
    t = cuda.threadIdx.x
    base = cuda.blockIdx.x * BLOCK
    tile[t] = x[base + t]
    cuda.syncthreads()
    out[base + t] = tile[BLOCK - 1 - t]


@cuda.jit
def histogram(values, bins):
    i = cuda.grid(1)
    if i < values.size:
        cuda.atomic.add(bins, values[i] % bins.size, 1)


@cuda.jit
def atomic_sum_f32(x, total):
    i = cuda.grid(1)
    if i < x.size:
        cuda.atomic.add(total, 0, x[i])


@cuda.jit
def add_2d(a, b, out):
    i, j = cuda.grid(2)
    if i < out.shape[0] and j < out.shape[1]:
        out[i, j] = a[i, j] * 2 + b[i, j] + i * 100 + j


@cuda.jit
def block_sum(x, partial):
    """Tree reduction in shared memory: one partial sum per block."""
    s = cuda.shared.array(BLOCK, dtype=float32)
    t = cuda.threadIdx.x
    i = cuda.grid(1)
    s[t] = x[i] if i < x.size else float32(0)
    cuda.syncthreads()
    step = BLOCK // 2
    while step > 0:
        if t < step:
            s[t] += s[t + step]
        cuda.syncthreads()
        step //= 2
    if t == 0:
        partial[cuda.blockIdx.x] = s[0]


@cuda.jit(device=True, debug=True, opt=False)
def cubed(v):
    return v * v * v


@cuda.jit(debug=True, opt=False)
def debug_kernel(x, out):
    """With debug=True numba compiles each function to its own PTX and links several PTX
    inputs: the shim combines them into one module."""
    i = cuda.grid(1)
    if i < out.size:
        out[i] = cubed(x[i]) - 1


def main():
    dev = cuda.get_current_device()
    cc = dev.compute_capability
    ok("device %r, compute capability %d.%d" % (dev.name, cc[0], cc[1]))
    rng = np.random.default_rng(7)

    n = 1000
    x = rng.standard_normal(n).astype(np.float32)
    y = rng.standard_normal(n).astype(np.float32)
    out = np.zeros_like(x)
    saxpy[(n + 127) // 128, 128](np.float32(2.5), x, y, out)
    check("saxpy (host arrays)", out, 2.5 * x + y, rtol=1e-6, atol=1e-6)

    d_x, d_y = cuda.to_device(x), cuda.to_device(y)
    d_out = cuda.device_array_like(x)
    saxpy[(n + 127) // 128, 128](np.float32(-1.0), d_x, d_y, d_out)
    check("saxpy (device arrays)", d_out.copy_to_host(), y - x, rtol=1e-6, atol=1e-6)

    blocks = 4
    xs = np.arange(blocks * BLOCK, dtype=np.float32)
    rev = np.zeros_like(xs)
    reverse_blocks[blocks, BLOCK](xs, rev)
    check("shared memory + syncthreads", rev, xs.reshape(blocks, BLOCK)[:, ::-1].ravel())

    values = rng.integers(0, 1000, 2000).astype(np.int32)
    bins = np.zeros(16, dtype=np.int32)
    histogram[(values.size + 127) // 128, 128](values, bins)
    check("atomic.add (int32 histogram)", bins, np.bincount(values % 16, minlength=16).astype(np.int32))

    xf = rng.random(512).astype(np.float32)
    total = np.zeros(1, dtype=np.float32)
    atomic_sum_f32[4, 128](xf, total)
    check("atomic.add (float32 sum)", total, np.array([xf.sum()], dtype=np.float32), rtol=1e-4)

    rows, cols = 37, 45
    a = rng.standard_normal((rows, cols)).astype(np.float32)
    b = rng.standard_normal((rows, cols)).astype(np.float32)
    out2 = np.zeros_like(a)
    add_2d[((rows + 7) // 8, (cols + 15) // 16), (8, 16)](a, b, out2)
    ii, jj = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    check("2-D grid", out2, a * 2 + b + ii * 100 + jj, rtol=1e-5, atol=1e-4)

    m = 3000
    xr = rng.random(m).astype(np.float32)
    nblocks = (m + BLOCK - 1) // BLOCK
    partial = np.zeros(nblocks, dtype=np.float32)
    block_sum[nblocks, BLOCK](xr, partial)
    want = np.array([xr[k * BLOCK:(k + 1) * BLOCK].sum() for k in range(nblocks)], dtype=np.float32)
    check("reduction (per-block partial sums)", partial, want, rtol=1e-5, atol=1e-5)
    if not np.isclose(partial.sum(), xr.sum(), rtol=1e-4):
        fail("reduction total %r != %r" % (partial.sum(), xr.sum()))
    ok("reduction total")

    xd = np.arange(-20, 20, dtype=np.float32)
    outd = np.zeros_like(xd)
    debug_kernel[2, 32](xd, outd)
    check("debug=True (several PTX inputs linked)", outd, xd**3 - 1)

    cuda.synchronize()
    print("ALL PASSED", flush=True)


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except BaseException:  # noqa: BLE001 - report any failure as FAIL
        traceback.print_exc()
        fail("exception: see the traceback above")
