#!/usr/bin/env python3
"""link_api.py: the driver JIT linker (cuLinkCreate_v2, cuLinkAddData_v2, cuLinkAddFile_v2,
cuLinkComplete, cuLinkDestroy) through ctypes on libcuda.so.1, used by the cuwire end-to-end
tests.

    python link_api.py VECADD_PTX

Checks the JIT log buffers and wall time, one and several PTX inputs (a kernel calling a
function that another input defines), a file input, that invalid PTX reaches the program as
CUDA_ERROR_INVALID_PTX from the module load, and the refusals. The first failure prints
"FAIL ..." on stderr and exits 1; the last line is "ALL PASSED".
"""

import ctypes
import struct
import sys

cu = ctypes.CDLL("libcuda.so.1")
c_void_pp = ctypes.POINTER(ctypes.c_void_p)

CUDA_ERROR_INVALID_VALUE = 1
CUDA_ERROR_INVALID_PTX = 218
CUDA_ERROR_INVALID_HANDLE = 400
CUDA_ERROR_NOT_SUPPORTED = 801

CU_JIT_WALL_TIME = 2
CU_JIT_INFO_LOG_BUFFER = 3
CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES = 4
CU_JIT_ERROR_LOG_BUFFER = 5
CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES = 6
CU_JIT_TARGET = 9
CU_JIT_INPUT_PTX = 1
CU_JIT_INPUT_LIBRARY = 4


def fail(msg):
    sys.stdout.flush()
    print("FAIL " + msg, file=sys.stderr, flush=True)
    sys.exit(1)


def ok(msg):
    print("ok   " + msg, flush=True)


def check(name, code, want=0):
    if code != want:
        fail("%s returned %d, expected %d" % (name, code, want))


class Options:
    """A JIT option list with info/error log buffers and the wall time, kept alive as the
    driver requires for the life of a link state."""

    def __init__(self, size=1024, extra=()):
        self.info = ctypes.create_string_buffer(size)
        self.error = ctypes.create_string_buffer(size)
        opts = [
            (CU_JIT_INFO_LOG_BUFFER, ctypes.cast(self.info, ctypes.c_void_p).value),
            (CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES, size),
            (CU_JIT_ERROR_LOG_BUFFER, ctypes.cast(self.error, ctypes.c_void_p).value),
            (CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES, size),
            (CU_JIT_WALL_TIME, 0),
        ] + list(extra)
        self.n = len(opts)
        self.keys = (ctypes.c_int * self.n)(*[k for k, _ in opts])
        self.values = (ctypes.c_void_p * self.n)(*[v for _, v in opts])

    def slot(self, key):
        return self.values[list(self.keys).index(key)] or 0

    def info_text(self):
        return self.info.value.decode()

    def error_text(self):
        return self.error.value.decode()

    def wall_time(self):
        return struct.unpack("<f", struct.pack("<Q", self.slot(CU_JIT_WALL_TIME))[:4])[0]


def link_create(opts):
    state = ctypes.c_void_p()
    check("cuLinkCreate_v2", cu.cuLinkCreate_v2(opts.n, opts.keys, opts.values, ctypes.byref(state)))
    return state


def add_data(state, kind, data, name=b"input", opts=None):
    buf = ctypes.create_string_buffer(data, len(data))
    n, keys, values = (opts.n, opts.keys, opts.values) if opts else (0, None, None)
    return cu.cuLinkAddData_v2(state, kind, buf, ctypes.c_size_t(len(data)), name, n, keys, values)


def complete(state):
    image, size = ctypes.c_void_p(), ctypes.c_size_t()
    check("cuLinkComplete", cu.cuLinkComplete(state, ctypes.byref(image), ctypes.byref(size)))
    return image, size.value


def load(image):
    module = ctypes.c_void_p()
    code = cu.cuModuleLoadData(ctypes.byref(module), image)
    return code, module


def run_kernel(module, name, n, args_of):
    """Runs NAME over n floats: out[i] from a[i], b[i]; returns (a, b, out)."""
    func = ctypes.c_void_p()
    check("cuModuleGetFunction(%s)" % name, cu.cuModuleGetFunction(ctypes.byref(func), module, name))
    a = (ctypes.c_float * n)(*[float(i) for i in range(n)])
    b = (ctypes.c_float * n)(*[float(3 * i + 1) for i in range(n)])
    out = (ctypes.c_float * n)()
    ptrs = []
    for host in (a, b, out):
        d = ctypes.c_uint64()
        check("cuMemAlloc_v2", cu.cuMemAlloc_v2(ctypes.byref(d), ctypes.c_size_t(4 * n)))
        check("cuMemcpyHtoD_v2", cu.cuMemcpyHtoD_v2(d, host, ctypes.c_size_t(4 * n)))
        ptrs.append(d)
    count = ctypes.c_uint32(n)
    params = (ctypes.c_void_p * 4)(*[ctypes.cast(ctypes.byref(p), ctypes.c_void_p) for p in ptrs + [count]])
    check("cuLaunchKernel(%s)" % name, cu.cuLaunchKernel(func, (n + 31) // 32, 1, 1, 32, 1, 1, 0, None, params, None))
    check("cuMemcpyDtoH_v2", cu.cuMemcpyDtoH_v2(out, ptrs[2], ctypes.c_size_t(4 * n)))
    for d in ptrs:
        check("cuMemFree_v2", cu.cuMemFree_v2(d))
    for i in range(n):
        want = args_of(a[i], b[i])
        if out[i] != want:
            fail("%s: out[%d] = %r, expected %r" % (name, i, out[i], want))


KERNEL = b"""
.version 7.0
.target sm_80
.address_size 64

.extern .func (.param .b32 ret) scaled(.param .b32 x);

.visible .entry combine(.param .u64 a, .param .u64 b, .param .u64 c, .param .u32 n)
{
	.reg .pred %p<2>;
	.reg .b32 %r<6>;
	.reg .f32 %f<5>;
	.reg .b64 %rd<11>;
	ld.param.u64 %rd1, [a];
	ld.param.u64 %rd2, [b];
	ld.param.u64 %rd3, [c];
	ld.param.u32 %r1, [n];
	mov.u32 %r2, %ctaid.x;
	mov.u32 %r3, %ntid.x;
	mov.u32 %r4, %tid.x;
	mad.lo.s32 %r5, %r2, %r3, %r4;
	setp.ge.u32 %p1, %r5, %r1;
	@%p1 bra DONE;
	cvta.to.global.u64 %rd4, %rd1;
	cvta.to.global.u64 %rd5, %rd2;
	cvta.to.global.u64 %rd6, %rd3;
	mul.wide.u32 %rd7, %r5, 4;
	add.s64 %rd8, %rd4, %rd7;
	ld.global.f32 %f1, [%rd8];
	add.s64 %rd9, %rd5, %rd7;
	ld.global.f32 %f2, [%rd9];
	{
	.param .b32 x0;
	st.param.f32 [x0], %f2;
	.param .b32 r0;
	call (r0), scaled, (x0);
	ld.param.f32 %f3, [r0];
	}
	add.f32 %f4, %f1, %f3;
	add.s64 %rd10, %rd6, %rd7;
	st.global.f32 [%rd10], %f4;
DONE:
	ret;
}
"""

HELPER = b"""
.version 7.0
.target sm_80
.address_size 64

.visible .func (.param .b32 ret) scaled(.param .b32 x)
{
	.reg .f32 %f<3>;
	ld.param.f32 %f1, [x];
	mul.f32 %f2, %f1, 0f40000000;
	st.param.f32 [ret], %f2;
	ret;
}
"""

BAD_PTX = b""".version 7.0
.target sm_80
.address_size 64
.visible .entry broken()
{
	frobnicate.u32 %r1, 7;
	ret;
}
"""


def main():
    vecadd_path = sys.argv[1]
    vecadd = open(vecadd_path, "rb").read()

    check("cuInit", cu.cuInit(0))
    dev = ctypes.c_int()
    check("cuDeviceGet", cu.cuDeviceGet(ctypes.byref(dev), 0))
    ctx = ctypes.c_void_p()
    check("cuDevicePrimaryCtxRetain", cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev))
    check("cuCtxSetCurrent", cu.cuCtxSetCurrent(ctx))

    # One PTX input: the image is that PTX; logs and wall time are filled.
    opts = Options(extra=[(CU_JIT_TARGET, 80)])
    state = link_create(opts)
    call_opts = Options()
    check("cuLinkAddData_v2(PTX)", add_data(state, CU_JIT_INPUT_PTX, vecadd + b"\0", b"vecadd.ptx", call_opts))
    if "vecadd.ptx" not in call_opts.info_text():
        fail("the call's info log does not name the input: %r" % call_opts.info_text())
    image, size = complete(state)
    info = opts.info_text()
    if "linked by cuwire: 1 PTX input" not in info:
        fail("info log: %r" % info)
    if opts.slot(CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES) != len(info) + 1:
        fail("info log size %d, log is %d bytes" % (opts.slot(CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES), len(info)))
    if opts.error_text() != "" and opts.slot(CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES) != 1024:
        fail("error log written on success: %r" % opts.error_text())
    wall = opts.wall_time()
    if not (0.0 <= wall < 60000.0):
        fail("wall time %r ms" % wall)
    got = ctypes.string_at(image, size)
    if got != vecadd + b"\0":
        fail("the image of one PTX input is not that PTX (%d bytes, expected %d)" % (len(got), len(vecadd) + 1))
    ok("one PTX input: %r, wall time %.3f ms" % (info.splitlines()[-1], wall))
    code, module = load(image)
    check("cuModuleLoadData(linked image)", code)
    check("cuLinkDestroy", cu.cuLinkDestroy(state))
    run_kernel(module, b"vecadd", 100, lambda a, b: a + b)
    ok("vecadd from the linked image")
    check("cuLinkDestroy (twice)", cu.cuLinkDestroy(state), CUDA_ERROR_INVALID_HANDLE)
    ok("cuLinkDestroy twice: CUDA_ERROR_INVALID_HANDLE")

    # Two PTX inputs: a kernel calling a function the other input defines.
    opts = Options()
    state = link_create(opts)
    check("cuLinkAddData_v2(kernel)", add_data(state, CU_JIT_INPUT_PTX, KERNEL, b"kernel.ptx"))
    check("cuLinkAddData_v2(helper)", add_data(state, CU_JIT_INPUT_PTX, HELPER, b"helper.ptx"))
    image, size = complete(state)
    if "linked by cuwire: 2 PTX inputs" not in opts.info_text():
        fail("info log: %r" % opts.info_text())
    code, module = load(image)
    if code != 0:
        fail("cuModuleLoadData(combined PTX) returned %d; the image:\n%s" % (code, ctypes.string_at(image, size).decode()))
    run_kernel(module, b"combine", 70, lambda a, b: a + 2 * b)
    check("cuLinkDestroy", cu.cuLinkDestroy(state))
    ok("two PTX inputs combined: a kernel calling the other input's function")

    # A file input. (The options of cuLinkCreate must outlive the link state: the logs and
    # the wall time are written through them until cuLinkDestroy.)
    opts = Options()
    state = link_create(opts)
    check("cuLinkAddFile_v2", cu.cuLinkAddFile_v2(state, CU_JIT_INPUT_PTX, vecadd_path.encode(), 0, None, None))
    image, size = complete(state)
    code, module = load(image)
    check("cuModuleLoadData(file input)", code)
    check("cuLinkDestroy", cu.cuLinkDestroy(state))
    ok("cuLinkAddFile_v2")

    # Invalid PTX: linked, then refused where it is compiled, as the driver's error.
    opts = Options()
    state = link_create(opts)
    check("cuLinkAddData_v2(bad PTX)", add_data(state, CU_JIT_INPUT_PTX, BAD_PTX))
    image, size = complete(state)
    code, module = load(image)
    check("cuModuleLoadData(invalid PTX)", code, CUDA_ERROR_INVALID_PTX)
    check("cuLinkDestroy", cu.cuLinkDestroy(state))
    ok("invalid PTX: cuModuleLoadData returns CUDA_ERROR_INVALID_PTX")

    # Refusals, with the reason in the error logs.
    opts = Options()
    state = link_create(opts)
    call_opts = Options()
    check("cuLinkAddData_v2(not PTX)", add_data(state, CU_JIT_INPUT_PTX, b"\x7fELF\x02\x01\x01\x00garbage", b"junk", call_opts),
          CUDA_ERROR_INVALID_PTX)
    if "not PTX" not in call_opts.error_text() or "not PTX" not in opts.error_text():
        fail("error logs: %r / %r" % (call_opts.error_text(), opts.error_text()))
    check("cuLinkAddData_v2(library)", add_data(state, CU_JIT_INPUT_LIBRARY, b"!<arch>\n", b"libcudadevrt.a"),
          CUDA_ERROR_NOT_SUPPORTED)
    if "libcudadevrt.a" not in opts.error_text():
        fail("error log: %r" % opts.error_text())
    check("cuLinkDestroy", cu.cuLinkDestroy(state))
    ok("refused: non-PTX text as PTX (%r), a library input" % opts.error_text())

    bad = ctypes.c_int * 1
    values = ctypes.c_void_p * 1
    state = ctypes.c_void_p()
    check("cuLinkCreate_v2(unknown option)", cu.cuLinkCreate_v2(1, bad(999), values(0), ctypes.byref(state)), CUDA_ERROR_INVALID_VALUE)
    ok("cuLinkCreate_v2 with an unknown option: CUDA_ERROR_INVALID_VALUE")

    print("ALL PASSED", flush=True)


if __name__ == "__main__":
    main()
