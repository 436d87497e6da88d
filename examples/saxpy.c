/* A plain CUDA driver-API program: nothing in it knows about cuwire. Built against cuda.h and
 * linked with -lcuda, it runs on whatever libcuda.so.1 the loader finds: the cuwire shim on a
 * machine without a GPU. It computes y = a*x + y on the device and checks every element. */
#include <cuda.h>
#include <stdio.h>
#include <stdlib.h>
#include <math.h>

static const char *ptx =
    ".version 7.0\n"
    ".target sm_80\n"
    ".address_size 64\n"
    ".visible .entry saxpy(.param .u32 n, .param .f32 a, .param .u64 x, .param .u64 y)\n"
    "{\n"
    "  .reg .pred %p<2>;\n"
    "  .reg .b32 %r<6>;\n"
    "  .reg .f32 %f<5>;\n"
    "  .reg .b64 %rd<8>;\n"
    "  ld.param.u32 %r1, [n];\n"
    "  ld.param.f32 %f1, [a];\n"
    "  ld.param.u64 %rd1, [x];\n"
    "  ld.param.u64 %rd2, [y];\n"
    "  mov.u32 %r2, %ctaid.x;\n"
    "  mov.u32 %r3, %ntid.x;\n"
    "  mov.u32 %r4, %tid.x;\n"
    "  mad.lo.s32 %r5, %r2, %r3, %r4;\n"
    "  setp.ge.u32 %p1, %r5, %r1;\n"
    "  @%p1 bra DONE;\n"
    "  cvta.to.global.u64 %rd3, %rd1;\n"
    "  cvta.to.global.u64 %rd4, %rd2;\n"
    "  mul.wide.u32 %rd5, %r5, 4;\n"
    "  add.s64 %rd6, %rd3, %rd5;\n"
    "  add.s64 %rd7, %rd4, %rd5;\n"
    "  ld.global.f32 %f2, [%rd6];\n"
    "  ld.global.f32 %f3, [%rd7];\n"
    "  fma.rn.f32 %f4, %f1, %f2, %f3;\n"
    "  st.global.f32 [%rd7], %f4;\n"
    "DONE:\n"
    "  ret;\n"
    "}\n";

#define CHECK(call)                                                              \
    do {                                                                         \
        CUresult r_ = (call);                                                    \
        if (r_ != CUDA_SUCCESS) {                                                \
            const char *name_ = "?";                                             \
            cuGetErrorName(r_, &name_);                                          \
            fprintf(stderr, "saxpy: %s failed: %s (%d)\n", #call, name_, r_);    \
            return 1;                                                            \
        }                                                                        \
    } while (0)

int main(void) {
    const unsigned n = 1 << 20;
    const float a = 2.5f;
    CUdevice dev;
    CUcontext ctx;
    CUmodule mod;
    CUfunction fn;
    CUdeviceptr dx, dy;
    CUevent start, stop;
    char name[256];
    int major, minor;
    float ms = 0;

    CHECK(cuInit(0));
    CHECK(cuDeviceGet(&dev, 0));
    CHECK(cuDeviceGetName(name, sizeof name, dev));
    CHECK(cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev));
    CHECK(cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev));
    printf("device 0: %s, compute capability %d.%d\n", name, major, minor);

    CHECK(cuDevicePrimaryCtxRetain(&ctx, dev));
    CHECK(cuCtxSetCurrent(ctx));
    CHECK(cuModuleLoadData(&mod, ptx));
    CHECK(cuModuleGetFunction(&fn, mod, "saxpy"));

    float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
    for (unsigned i = 0; i < n; i++) {
        x[i] = (float)i;
        y[i] = 1.0f;
    }
    CHECK(cuMemAlloc(&dx, n * sizeof(float)));
    CHECK(cuMemAlloc(&dy, n * sizeof(float)));
    CHECK(cuMemcpyHtoD(dx, x, n * sizeof(float)));
    CHECK(cuMemcpyHtoD(dy, y, n * sizeof(float)));

    CHECK(cuEventCreate(&start, CU_EVENT_DEFAULT));
    CHECK(cuEventCreate(&stop, CU_EVENT_DEFAULT));
    unsigned nn = n;
    float aa = a;
    void *args[] = {&nn, &aa, &dx, &dy};
    CHECK(cuEventRecord(start, 0));
    CHECK(cuLaunchKernel(fn, (n + 255) / 256, 1, 1, 256, 1, 1, 0, 0, args, NULL));
    CHECK(cuEventRecord(stop, 0));
    CHECK(cuEventSynchronize(stop));
    CHECK(cuEventElapsedTime(&ms, start, stop));
    CHECK(cuMemcpyDtoH(y, dy, n * sizeof(float)));

    unsigned wrong = 0;
    for (unsigned i = 0; i < n; i++)
        if (fabsf(y[i] - (a * (float)i + 1.0f)) > 1e-3f * fabsf(a * (float)i + 1.0f)) wrong++;
    printf("saxpy over %u elements (a = %.1f) took %.2f ms on the device\n", n, a, ms);
    printf("y[0] = %.1f, y[1] = %.1f, y[2] = %.1f, ..., y[%u] = %.1f\n", y[0], y[1], y[2], n - 1, y[n - 1]);
    printf("%s: %u of %u elements wrong\n", wrong ? "FAILED" : "correct", wrong, n);

    CHECK(cuMemFree(dx));
    CHECK(cuMemFree(dy));
    CHECK(cuModuleUnload(mod));
    CHECK(cuDevicePrimaryCtxRelease(dev));
    free(x);
    free(y);
    return wrong ? 1 : 0;
}
