/* Pitched allocations, 2-D copies, host functions in a stream, host registration. */
#include <cuda.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>

static int failures = 0;
#define EXPECT(cond, ...)                \
    do {                                 \
        if (cond) printf("ok   ");       \
        else {                           \
            printf("FAIL ");             \
            failures++;                  \
        }                                \
        printf(__VA_ARGS__);             \
        printf("\n");                    \
    } while (0)

static int order[4], n_order = 0;
static void CUDA_CB host_fn(void *p) { order[n_order++] = *(int *)p; }
static CUresult seen_status = (CUresult)-1;
static void CUDA_CB stream_cb(CUstream s, CUresult status, void *p) {
    (void)s;
    seen_status = status;
    order[n_order++] = *(int *)p;
}

int main(void) {
    CUdevice dev;
    CUcontext ctx;
    CUstream st;
    if (cuInit(0) || cuDeviceGet(&dev, 0) || cuCtxCreate(&ctx, 0, dev) || cuStreamCreate(&st, 0)) {
        printf("FAIL setup\n");
        return 1;
    }
    /* A 100 x 37-byte image in pitched device memory. */
    const size_t w = 100, h = 37;
    CUdeviceptr d, d2;
    size_t pitch = 0, pitch2 = 0;
    CUresult r = cuMemAllocPitch(&d, &pitch, w, h, 4);
    EXPECT(r == CUDA_SUCCESS && pitch >= w && pitch % 512 == 0, "cuMemAllocPitch: pitch %zu", pitch);
    cuMemAllocPitch(&d2, &pitch2, w, h, 4);
    unsigned char *host = malloc(w * h), *back = malloc(w * h);
    for (size_t i = 0; i < w * h; i++) host[i] = (unsigned char)(i * 7 + 3);
    CUDA_MEMCPY2D c;
    memset(&c, 0, sizeof c);
    c.srcMemoryType = CU_MEMORYTYPE_HOST; c.srcHost = host; c.srcPitch = w;
    c.dstMemoryType = CU_MEMORYTYPE_DEVICE; c.dstDevice = d; c.dstPitch = pitch;
    c.WidthInBytes = w; c.Height = h;
    r = cuMemcpy2D(&c);
    EXPECT(r == CUDA_SUCCESS, "cuMemcpy2D host -> pitched device");
    memset(&c, 0, sizeof c);
    c.srcMemoryType = CU_MEMORYTYPE_DEVICE; c.srcDevice = d; c.srcPitch = pitch;
    c.dstMemoryType = CU_MEMORYTYPE_DEVICE; c.dstDevice = d2; c.dstPitch = pitch2;
    c.WidthInBytes = w; c.Height = h;
    r = cuMemcpy2DAsync(&c, st);
    EXPECT(r == CUDA_SUCCESS, "cuMemcpy2DAsync device -> device");
    cuStreamSynchronize(st);
    memset(&c, 0, sizeof c);
    c.srcMemoryType = CU_MEMORYTYPE_DEVICE; c.srcDevice = d2; c.srcPitch = pitch2;
    c.dstMemoryType = CU_MEMORYTYPE_HOST; c.dstHost = back; c.dstPitch = w;
    c.WidthInBytes = w; c.Height = h;
    r = cuMemcpy2D(&c);
    EXPECT(r == CUDA_SUCCESS && memcmp(host, back, w * h) == 0, "cuMemcpy2D pitched device -> host: every byte back");
    /* A sub-rectangle: rows 5..14, bytes 10..49 of the device image. */
    unsigned char sub[10 * 40];
    memset(&c, 0, sizeof c);
    c.srcMemoryType = CU_MEMORYTYPE_DEVICE; c.srcDevice = d; c.srcPitch = pitch; c.srcXInBytes = 10; c.srcY = 5;
    c.dstMemoryType = CU_MEMORYTYPE_HOST; c.dstHost = sub; c.dstPitch = 40;
    c.WidthInBytes = 40; c.Height = 10;
    r = cuMemcpy2D(&c);
    int sub_ok = r == CUDA_SUCCESS;
    for (int y = 0; y < 10 && sub_ok; y++)
        for (int x = 0; x < 40; x++) sub_ok &= sub[y * 40 + x] == host[(5 + y) * w + 10 + x];
    EXPECT(sub_ok, "cuMemcpy2D of a sub-rectangle");

    /* Host functions run at their point in the stream, in order. */
    int one = 1, two = 2, three = 3;
    cuMemsetD8Async(d, 0, pitch * h, st);
    r = cuLaunchHostFunc(st, host_fn, &one);
    CUresult r2 = cuStreamAddCallback(st, stream_cb, &two, 0);
    CUresult r3 = cuLaunchHostFunc(st, host_fn, &three);
    cuStreamSynchronize(st);
    EXPECT(r == 0 && r2 == 0 && r3 == 0 && n_order == 3 && order[0] == 1 && order[1] == 2 && order[2] == 3 && seen_status == CUDA_SUCCESS,
           "cuLaunchHostFunc / cuStreamAddCallback ran in stream order (%d calls)", n_order);

    /* Host registration. */
    void *buf = malloc(1 << 20);
    r = cuMemHostRegister(buf, 1 << 20, 0);
    r2 = cuMemHostRegister((char *)buf + 4096, 4096, 0);
    r3 = cuMemHostUnregister(buf);
    CUresult r4 = cuMemHostUnregister(buf);
    EXPECT(r == 0 && r2 == CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED && r3 == 0 && r4 == CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED,
           "cuMemHostRegister / Unregister (%d %d %d %d)", r, r2, r3, r4);
    free(buf);
    /* Pointer attributes: device memory, page-locked host memory, and a pointer nobody knows. */
    unsigned mt = 0;
    CUcontext pctx = NULL;
    CUdeviceptr start = 0;
    r = cuPointerGetAttribute(&mt, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, d + 100);
    r2 = cuPointerGetAttribute(&pctx, CU_POINTER_ATTRIBUTE_CONTEXT, d + 100);
    r3 = cuPointerGetAttribute(&start, CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, d + 100);
    EXPECT(r == 0 && r2 == 0 && r3 == 0 && mt == CU_MEMORYTYPE_DEVICE && pctx == ctx && start == d,
           "cuPointerGetAttribute on device memory: type %u, its context, range start", mt);
    void *pinned = NULL;
    cuMemAllocHost(&pinned, 4096);
    r = cuPointerGetAttribute(&mt, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, (CUdeviceptr)(uintptr_t)pinned + 8);
    EXPECT(r == 0 && mt == CU_MEMORYTYPE_HOST, "cuPointerGetAttribute on page-locked host memory: type %u", mt);
    int local = 0;
    r = cuPointerGetAttribute(&mt, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, (CUdeviceptr)(uintptr_t)&local);
    EXPECT(r == CUDA_ERROR_INVALID_VALUE, "cuPointerGetAttribute on an unknown pointer: %d", r);
    CUpointer_attribute attrs[2] = {CU_POINTER_ATTRIBUTE_MEMORY_TYPE, CU_POINTER_ATTRIBUTE_CONTEXT};
    unsigned mt2 = 99;
    CUcontext c2 = (CUcontext)(uintptr_t)0x1234567800000001ull;
    void *data[2] = {&mt2, &c2};
    r = cuPointerGetAttributes(2, attrs, data, (CUdeviceptr)(uintptr_t)&local);
    EXPECT(r == 0 && mt2 == 0 && c2 == NULL, "cuPointerGetAttributes on an unknown pointer reads zero");
    cuMemFreeHost(pinned);

    /* cuFuncSetAttribute: more dynamic shared memory than the default 48 KiB, then a launch
     * that uses it. */
    static const char *smem_ptx =
        ".version 7.0\n.target sm_80\n.address_size 64\n"
        ".extern .shared .align 4 .b8 dyn[];\n"
        ".visible .entry fill(.param .u64 out)\n{\n .reg .b32 %r<3>;\n .reg .b64 %rd<3>;\n"
        " mov.u32 %r1, %tid.x;\n mov.u32 %r2, dyn;\n st.shared.u32 [%r2+80000], %r1;\n bar.sync 0;\n"
        " ld.shared.u32 %r1, [%r2+80000];\n ld.param.u64 %rd1, [out];\n cvta.to.global.u64 %rd2, %rd1;\n"
        " st.global.u32 [%rd2], %r1;\n ret;\n}\n";
    CUmodule smod;
    CUfunction sfn;
    CUdeviceptr sout;
    int maxdyn = 0;
    if (cuModuleLoadData(&smod, smem_ptx) || cuModuleGetFunction(&sfn, smod, "fill") || cuMemAlloc(&sout, 4)) {
        printf("FAIL shared-memory module\n");
        failures++;
    } else {
        void *sargs[] = {&sout};
        r = cuLaunchKernel(sfn, 1, 1, 1, 1, 1, 1, 96 * 1024, 0, sargs, NULL);
        r2 = cuCtxSynchronize();
        EXPECT(r != CUDA_SUCCESS || r2 != CUDA_SUCCESS, "96 KiB of dynamic shared memory without opting in fails (%d, %d)", r, r2);
        r = cuFuncSetAttribute(sfn, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, 96 * 1024);
        cuFuncGetAttribute(&maxdyn, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, sfn);
        r2 = cuLaunchKernel(sfn, 1, 1, 1, 1, 1, 1, 96 * 1024, 0, sargs, NULL);
        r3 = cuCtxSynchronize();
        unsigned got = 7;
        cuMemcpyDtoH(&got, sout, 4);
        EXPECT(r == 0 && maxdyn == 96 * 1024 && r2 == 0 && r3 == 0 && got == 0, "after cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES) it runs (%d %d %d, read %u)", r, r2, r3, got);
        r = cuFuncSetAttribute(sfn, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, 1 << 30);
        EXPECT(r == CUDA_ERROR_INVALID_VALUE, "more than the device allows is CUDA_ERROR_INVALID_VALUE");
    }
    cuMemFree(d);
    cuMemFree(d2);
    if (!failures) printf("ALL PASSED\n");
    return failures ? 1 : 0;
}
