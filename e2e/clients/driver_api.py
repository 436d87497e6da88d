#!/usr/bin/env python3
"""driver_api.py: the CUDA driver API through cuda-python (cuda.bindings.driver),
used by the cuwire end-to-end tests.

    python driver_api.py PTX_PATH [--launch]

cuda-bindings dlopens libcuda.so.1 by name and resolves every driver function
with cuGetProcAddress_v2, so this exercises the shim's proc-address table.
Every call is checked; the first failure prints "FAIL ..." (with the CUresult
name) on stderr and exits 1. Each passed check prints an "ok ..." line; the
last line is "ALL PASSED".

Environment: CUWIRE_E2E_CC_MAJOR (default 8; "any" to skip that check).
"""

import ctypes
import os
import random
import sys
import traceback

from cuda.bindings import driver as cu

MIB = 1 << 20
SUCCESS = cu.CUresult.CUDA_SUCCESS


def fail(msg):
    sys.stdout.flush()
    print("FAIL " + msg, file=sys.stderr, flush=True)
    sys.exit(1)


def ok(msg):
    print("ok   " + msg, flush=True)


def result_name(err):
    try:
        e2, name = cu.cuGetErrorName(err)
        if e2 == SUCCESS and name:
            return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # noqa: BLE001 - only for the message
        pass
    return "CUresult %d" % int(err)


def call(name, *args):
    """Calls cu.NAME(*args); fails on any CUresult but CUDA_SUCCESS.
    Returns None, the single value, or a tuple of values."""
    out = getattr(cu, name)(*args)
    err, values = out[0], out[1:]
    if err != SUCCESS:
        fail("%s%r returned %s" % (name, args, result_name(err)))
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def call_fails_with(expected, name, *args):
    err = getattr(cu, name)(*args)[0]
    if err != expected:
        fail("%s%r returned %s, expected %s"
             % (name, args, result_name(err), result_name(expected)))


def expect(cond, msg):
    if not cond:
        fail("expected " + msg)


def handle(h):
    """The numeric value of a driver handle (NULL -> 0)."""
    return int(h) if h is not None else 0


def compare(what, got, want):
    got, want = bytes(got), bytes(want)
    if len(got) != len(want):
        fail("%s: %d bytes, expected %d" % (what, len(got), len(want)))
    if got != want:
        i = next(i for i in range(len(got)) if got[i] != want[i])
        fail("%s: byte %d of %d differs: got 0x%02x, expected 0x%02x"
             % (what, i, len(got), got[i], want[i]))


def dptr(base, offset=0):
    return cu.CUdeviceptr(int(base) + offset)


def check_device(dev):
    name = call("cuDeviceGetName", 256, dev)
    name = bytes(name).split(b"\0", 1)[0].decode(errors="replace")
    expect(name != "", "a device name")
    ok("cuDeviceGetName: %s" % name)

    u1 = bytes(call("cuDeviceGetUuid_v2", dev).bytes)
    u2 = bytes(call("cuDeviceGetUuid_v2", dev).bytes)
    u3 = bytes(call("cuDeviceGetUuid", dev).bytes)
    expect(u1 == u2, "the same UUID twice")
    expect(u1 == u3, "cuDeviceGetUuid and _v2 to agree")
    ok("cuDeviceGetUuid_v2: %s" % u1.hex())

    total = call("cuDeviceTotalMem", dev)
    expect(total >= 64 * MIB, "total memory >= 64 MiB, got %d" % total)
    ok("cuDeviceTotalMem: %d MiB" % (total // MIB))

    env = os.environ.get("CUWIRE_E2E_CC_MAJOR", "8")
    cc_major = None if env == "any" else int(env)
    A = cu.CUdevice_attribute
    attrs = [
        (A.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, 1, cc_major),
        (A.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, 0, None),
        (A.CU_DEVICE_ATTRIBUTE_WARP_SIZE, 1, 32),
        (A.CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK, 1, 1024),
        (A.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 1, None),
        (A.CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X, 1, 1024),
        (A.CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y, 1, 1024),
        (A.CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z, 1, 64),
        (A.CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X, 1, 2147483647),
        (A.CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y, 1, 65535),
        (A.CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK, 49152, None),
        (A.CU_DEVICE_ATTRIBUTE_TOTAL_CONSTANT_MEMORY, 1, 65536),
        (A.CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK, 1, None),
        (A.CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR, 1, None),
        (A.CU_DEVICE_ATTRIBUTE_CLOCK_RATE, 1, None),
        (A.CU_DEVICE_ATTRIBUTE_PCI_BUS_ID, 0, None),
    ]
    values = {}
    for attr, minimum, exact in attrs:
        v1 = call("cuDeviceGetAttribute", attr, dev)
        v2 = call("cuDeviceGetAttribute", attr, dev)
        label = attr.name if hasattr(attr, "name") else str(attr)
        expect(v1 == v2, "%s twice the same, got %d then %d" % (label, v1, v2))
        expect(v1 >= minimum, "%s >= %d, got %d" % (label, minimum, v1))
        if exact is not None:
            expect(v1 == exact, "%s == %d, got %d" % (label, exact, v1))
        values[attr] = v1
        ok("cuDeviceGetAttribute %s = %d (twice)" % (label, v1))

    major, minor = call("cuDeviceComputeCapability", dev)
    expect((major, minor) == (values[A.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR],
                              values[A.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR]),
           "cuDeviceComputeCapability to match the attributes")
    ok("cuDeviceComputeCapability: %d.%d" % (major, minor))


def check_primary_context(dev):
    pctx = call("cuDevicePrimaryCtxRetain", dev)
    expect(handle(pctx) != 0, "a primary context")
    _flags, active = call("cuDevicePrimaryCtxGetState", dev)
    expect(active == 1, "the primary context active after retain")
    again = call("cuDevicePrimaryCtxRetain", dev)
    expect(handle(again) == handle(pctx), "the same primary context twice")
    call("cuDevicePrimaryCtxRelease", dev)
    _flags, active = call("cuDevicePrimaryCtxGetState", dev)
    expect(active == 1, "the primary context active while retained once")
    call("cuDevicePrimaryCtxRelease", dev)
    _flags, active = call("cuDevicePrimaryCtxGetState", dev)
    expect(active == 0, "the primary context inactive after the last release")
    ok("primary context retain x2 / get state / release x2")


def check_contexts(dev):
    expect(handle(call("cuCtxGetCurrent")) == 0, "no current context yet")
    ctx = call("cuCtxCreate", 0, dev)
    expect(handle(ctx) != 0, "a context")
    expect(handle(call("cuCtxGetCurrent")) == handle(ctx), "the new context current")
    expect(int(call("cuCtxGetDevice")) == int(dev), "cuCtxGetDevice to be the device")
    ok("cuCtxCreate / cuCtxGetCurrent / cuCtxGetDevice")

    ctx2 = call("cuCtxCreate", 0, dev)
    expect(handle(ctx2) != handle(ctx), "two different contexts")
    expect(handle(call("cuCtxGetCurrent")) == handle(ctx2), "the second context current")
    expect(handle(call("cuCtxPopCurrent")) == handle(ctx2), "pop to return the second")
    expect(handle(call("cuCtxGetCurrent")) == handle(ctx), "the first current after pop")
    call("cuCtxPushCurrent", ctx2)
    expect(handle(call("cuCtxGetCurrent")) == handle(ctx2), "push to make it current")
    expect(handle(call("cuCtxPopCurrent")) == handle(ctx2), "pop after push")
    expect(handle(call("cuCtxGetCurrent")) == handle(ctx), "the stack restored")
    ok("cuCtxPushCurrent / cuCtxPopCurrent keep stack order")

    call("cuCtxSetCurrent", ctx2)
    expect(handle(call("cuCtxGetCurrent")) == handle(ctx2), "cuCtxSetCurrent(ctx2)")
    call("cuCtxSetCurrent", ctx)
    expect(handle(call("cuCtxGetCurrent")) == handle(ctx), "cuCtxSetCurrent(ctx)")
    ok("cuCtxSetCurrent")

    api = call("cuCtxGetApiVersion", ctx)
    expect(api > 0, "an API version")
    ok("cuCtxGetApiVersion: %d" % api)
    call("cuCtxSynchronize")
    ok("cuCtxSynchronize")

    call("cuCtxDestroy", ctx2)
    expect(handle(call("cuCtxGetCurrent")) == handle(ctx), "ctx still current")
    ok("cuCtxDestroy of a non-current context")
    return ctx


def check_memory():
    free0, total = call("cuMemGetInfo")
    expect(0 < total and free0 <= total, "free <= total, got %d of %d" % (free0, total))
    ok("cuMemGetInfo: %d MiB free of %d MiB" % (free0 // MIB, total // MIB))

    big = 64 * MIB
    d1 = call("cuMemAlloc", big)
    expect(int(d1) != 0, "a device pointer")
    free1, total1 = call("cuMemGetInfo")
    expect(total1 == total, "total unchanged")
    expect(free1 + big <= free0, "free to drop by 64 MiB: %d -> %d" % (free0, free1))
    ok("cuMemAlloc 64 MiB; free dropped by %d MiB" % ((free0 - free1) // MIB))
    d2 = call("cuMemAlloc", big)
    expect(int(d2) != int(d1), "two different allocations")

    src = random.Random(0xC0FFEE).randbytes(big)
    dst = bytearray(big)
    call("cuMemcpyHtoD", d1, src, big)
    call("cuMemcpyDtoH", dst, d1, big)
    compare("64 MiB HtoD/DtoH round trip", dst, src)
    ok("cuMemcpyHtoD + cuMemcpyDtoH of 64 MiB, every byte compared")

    call("cuMemcpyDtoD", d2, d1, big)
    dst = bytearray(big)
    call("cuMemcpyDtoH", dst, d2, big)
    compare("64 MiB DtoD copy", dst, src)
    ok("cuMemcpyDtoD of 64 MiB, every byte compared")
    del src, dst

    # Memsets, read back; D8 at unaligned offsets.
    n = MIB
    d = call("cuMemAlloc", n)
    want = bytearray(n)
    call("cuMemsetD8", d, 0, n)
    call("cuMemsetD8", dptr(d, 3), 0xAB, 1001)
    call("cuMemsetD8", dptr(d, 4097), 0x5C, 7)
    want[3:1004] = b"\xab" * 1001
    want[4097:4104] = b"\x5c" * 7
    host = bytearray(n)
    call("cuMemcpyDtoH", host, d, n)
    compare("cuMemsetD8 (offsets 3 and 4097)", host, want)
    ok("cuMemsetD8 incl. unaligned offsets, read back")

    call("cuMemsetD16", dptr(d, 4098), 0xBEEF, 1000)
    want[4098:4098 + 2000] = b"\xef\xbe" * 1000
    call("cuMemcpyDtoH", host, d, n)
    compare("cuMemsetD16", host, want)
    ok("cuMemsetD16, read back")

    call("cuMemsetD32", dptr(d, 65536), 0xDEADBEEF, 4096)
    want[65536:65536 + 4 * 4096] = b"\xef\xbe\xad\xde" * 4096
    call("cuMemcpyDtoH", host, d, n)
    compare("cuMemsetD32", host, want)
    ok("cuMemsetD32, read back")
    call("cuMemFree", d)
    return free0, [d1, d2]


def check_pinned_streams_events():
    n = 4 * MIB
    h1 = call("cuMemAllocHost", n)
    h2 = call("cuMemHostAlloc", n, cu.CU_MEMHOSTALLOC_PORTABLE)
    expect(int(h1) != 0 and int(h2) != 0 and int(h1) != int(h2), "two pinned buffers")
    pattern = random.Random(0x1234).randbytes(n)
    ctypes.memmove(int(h1), pattern, n)
    ctypes.memset(int(h2), 0, n)
    ok("cuMemAllocHost / cuMemHostAlloc")

    d = call("cuMemAlloc", n)
    s = call("cuStreamCreate", cu.CUstream_flags.CU_STREAM_NON_BLOCKING)
    s2 = call("cuStreamCreateWithPriority", cu.CUstream_flags.CU_STREAM_DEFAULT, 0)
    expect(handle(s) != handle(s2), "two streams")
    ok("cuStreamCreate / cuStreamCreateWithPriority")
    e1 = call("cuEventCreate", cu.CUevent_flags.CU_EVENT_DEFAULT)
    e2 = call("cuEventCreate", cu.CUevent_flags.CU_EVENT_DEFAULT)
    ok("cuEventCreate x2")

    call("cuEventRecord", e1, s)
    call("cuMemcpyHtoDAsync", d, int(h1), n, s)
    call("cuMemcpyDtoHAsync", int(h2), d, n, s)
    call("cuEventRecord", e2, s)
    call("cuStreamWaitEvent", s2, e2, 0)
    call("cuStreamSynchronize", s2)
    call("cuEventSynchronize", e2)
    call("cuEventQuery", e2)
    call("cuStreamSynchronize", s)
    call("cuStreamQuery", s)
    call("cuStreamQuery", s2)
    compare("async copies through pinned memory", ctypes.string_at(int(h2), n), pattern)
    ok("cuMemcpyHtoDAsync / cuMemcpyDtoHAsync through pinned memory, every byte")
    ok("cuEventRecord / cuStreamWaitEvent / cuEventSynchronize / cuEventQuery / "
       "cuStreamSynchronize / cuStreamQuery")

    ms = call("cuEventElapsedTime", e1, e2)
    expect(ms >= 0.0, "elapsed time >= 0, got %f" % ms)
    ok("cuEventElapsedTime: %.3f ms" % ms)

    call("cuEventDestroy", e1)
    call("cuEventDestroy", e2)
    call("cuStreamDestroy", s)
    call("cuStreamDestroy", s2)
    call("cuMemFree", d)
    call("cuMemFreeHost", h1)
    call("cuMemFreeHost", h2)
    ok("cuEventDestroy / cuStreamDestroy / cuMemFree / cuMemFreeHost")


def check_launch(f):
    n = 1 << 20
    nbytes = 4 * n
    a = (ctypes.c_float * n)(*[(i % 1000) * 0.5 for i in range(n)])
    b = (ctypes.c_float * n)(*[(i // 1000) * 2.0 for i in range(n)])
    c = (ctypes.c_float * n)()
    da = call("cuMemAlloc", nbytes)
    db = call("cuMemAlloc", nbytes)
    dc = call("cuMemAlloc", nbytes)
    call("cuMemcpyHtoD", da, ctypes.addressof(a), nbytes)
    call("cuMemcpyHtoD", db, ctypes.addressof(b), nbytes)
    call("cuMemsetD32", dc, 0, n)
    s = call("cuStreamCreate", cu.CUstream_flags.CU_STREAM_DEFAULT)

    block = 256
    grid = (n + block - 1) // block
    params = ((da, db, dc, n), (None, None, None, ctypes.c_uint))
    call("cuLaunchKernel", f, grid, 1, 1, block, 1, 1, 0, s, params, 0)
    call("cuStreamSynchronize", s)
    call("cuMemcpyDtoH", ctypes.addressof(c), dc, nbytes)
    # Sums of these values are exact in float32, so compare exactly.
    for i in range(n):
        want = ctypes.c_float(a[i] + b[i]).value
        if c[i] != want:
            fail("vecadd (kernelParams): c[%d] = %r, expected %r" % (i, c[i], want))
    ok("cuLaunchKernel vecadd (kernelParams), %d elements checked" % n)

    # The `extra` form (constants from cuda.h: BUFFER_POINTER=1, BUFFER_SIZE=2,
    # END=0), with n - 3 so the kernel's bounds check matters.
    call("cuMemsetD32", dc, 0, n)
    n2 = n - 3
    buf = (ctypes.c_ubyte * 28)()
    ctypes.c_uint64.from_buffer(buf, 0).value = int(da)
    ctypes.c_uint64.from_buffer(buf, 8).value = int(db)
    ctypes.c_uint64.from_buffer(buf, 16).value = int(dc)
    ctypes.c_uint32.from_buffer(buf, 24).value = n2
    size = ctypes.c_size_t(28)
    extra = (ctypes.c_void_p * 5)(1, ctypes.addressof(buf), 2, ctypes.addressof(size), 0)
    call("cuLaunchKernel", f, grid, 1, 1, block, 1, 1, 0, 0, None, ctypes.addressof(extra))
    call("cuCtxSynchronize")
    call("cuMemcpyDtoH", ctypes.addressof(c), dc, nbytes)
    for i in range(n):
        want = ctypes.c_float(a[i] + b[i]).value if i < n2 else 0.0
        if c[i] != want:
            fail("vecadd (extra): c[%d] = %r, expected %r" % (i, c[i], want))
    ok("cuLaunchKernel vecadd (extra buffer), %d elements checked, tail untouched" % n)

    call("cuStreamDestroy", s)
    for p in (da, db, dc):
        call("cuMemFree", p)


def check_modules(ptx_path, launch):
    with open(ptx_path, "rb") as fh:
        ptx = fh.read() + b"\0"
    mod = call("cuModuleLoadData", ptx)
    f = call("cuModuleGetFunction", mod, b"vecadd")
    expect(handle(f) != 0, "a function handle")
    call_fails_with(cu.CUresult.CUDA_ERROR_NOT_FOUND, "cuModuleGetFunction", mod,
                    b"no_such_kernel")
    ok("cuModuleLoadData (PTX) / cuModuleGetFunction(vecadd); unknown name -> NOT_FOUND")

    g, gsize = call("cuModuleGetGlobal", mod, b"counter")
    expect(int(g) != 0 and gsize == 4, "a 4-byte global, got %d bytes" % gsize)
    counter = ctypes.c_uint32(0)
    call("cuMemcpyDtoH", ctypes.addressof(counter), g, 4)
    expect(counter.value == 42, "counter == 42, got %d" % counter.value)
    counter.value = 7
    call("cuMemcpyHtoD", g, ctypes.addressof(counter), 4)
    counter.value = 0
    call("cuMemcpyDtoH", ctypes.addressof(counter), g, 4)
    expect(counter.value == 7, "counter == 7 after writing it, got %d" % counter.value)
    ok("cuModuleGetGlobal(counter): 4 bytes, initialized to 42, writable")

    A = cu.CUfunction_attribute
    maxthreads = call("cuFuncGetAttribute", A.CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, f)
    expect(maxthreads > 0, "MAX_THREADS_PER_BLOCK > 0")
    ok("cuFuncGetAttribute(MAX_THREADS_PER_BLOCK) = %d" % maxthreads)

    mod2 = call("cuModuleLoad", os.fsencode(ptx_path))
    f2 = call("cuModuleGetFunction", mod2, b"vecadd")
    g2, _ = call("cuModuleGetGlobal", mod2, b"counter")
    expect(int(g2) != int(g), "each module to have its own global")
    call("cuMemcpyDtoH", ctypes.addressof(counter), g2, 4)
    expect(counter.value == 42, "second module's counter == 42, got %d" % counter.value)
    ok("cuModuleLoad (file path) gives a module with its own globals")

    if launch:
        check_launch(f2)

    call("cuModuleUnload", mod2)
    call("cuModuleUnload", mod)
    ok("cuModuleUnload x2")


def main(argv):
    args = [a for a in argv[1:] if a != "--launch"]
    launch = "--launch" in argv[1:]
    if len(args) != 1:
        fail("usage: %s PTX_PATH [--launch]" % argv[0])
    ptx_path = args[0]

    call("cuInit", 0)
    ok("cuInit")
    version = call("cuDriverGetVersion")
    expect(version >= 12090, "driver version >= 12090, got %d" % version)
    ok("cuDriverGetVersion: %d" % version)
    count = call("cuDeviceGetCount")
    expect(count >= 1, "at least one device, got %d" % count)
    ok("cuDeviceGetCount: %d" % count)
    dev = call("cuDeviceGet", 0)
    call_fails_with(cu.CUresult.CUDA_ERROR_INVALID_DEVICE, "cuDeviceGet", count)
    ok("cuDeviceGet(0); cuDeviceGet(%d) -> CUDA_ERROR_INVALID_DEVICE" % count)

    check_device(dev)
    check_primary_context(dev)
    ctx = check_contexts(dev)
    free0, allocations = check_memory()
    check_pinned_streams_events()
    check_modules(ptx_path, launch)

    for p in allocations:
        call("cuMemFree", p)
    free1, _ = call("cuMemGetInfo")
    expect(free1 >= free0, "free memory back to %d, got %d" % (free0, free1))
    ok("cuMemFree of everything; free memory back to %d MiB" % (free1 // MIB))

    call("cuCtxDestroy", ctx)
    expect(handle(call("cuCtxGetCurrent")) == 0, "no current context after destroying it")
    ok("cuCtxDestroy")
    print("ALL PASSED", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except SystemExit:
        raise
    except BaseException:  # noqa: BLE001 - report any Python-level error as a failure
        sys.stdout.flush()
        print("FAIL unexpected Python exception:", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
