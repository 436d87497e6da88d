/* Fire-and-forget calls and latched errors: 10,000 kernel launches are sent without waiting;
 * the one in the middle asks for more shared memory than the device has, so it fails on the
 * server. The error must come back exactly once, at the next synchronising call, and the
 * launches around it must all have run (a counter kernel). Prints "ALL PASSED" on success. */
#include <cuda.h>
#include <stdio.h>
#include <time.h>

static const char *ptx =
    ".version 7.0\n.target sm_80\n.address_size 64\n"
    ".visible .entry bump(.param .u64 counter)\n"
    "{\n .reg .b32 %r<2>;\n .reg .b64 %rd<3>;\n .reg .pred %p<2>;\n"
    " mov.u32 %r1, %tid.x;\n setp.ne.u32 %p1, %r1, 0;\n @%p1 bra DONE;\n"
    " ld.param.u64 %rd1, [counter];\n cvta.to.global.u64 %rd2, %rd1;\n"
    " atom.global.add.u32 %r1, [%rd2], 1;\n"
    "DONE:\n ret;\n}\n"
    ".visible .entry empty()\n{\n ret;\n}\n";

static const char *name(CUresult r) {
    const char *n = "?";
    cuGetErrorName(r, &n);
    return n;
}

#define CHECK(call)                                                                   \
    do {                                                                              \
        CUresult r_ = (call);                                                         \
        if (r_) {                                                                     \
            printf("FAIL %s: %s\n", #call, name(r_));                                \
            return 1;                                                                 \
        }                                                                             \
    } while (0)

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(void) {
    CUdevice dev;
    CUcontext ctx;
    CUmodule mod;
    CUfunction bump, empty;
    CUdeviceptr counter;
    CHECK(cuInit(0));
    CHECK(cuDeviceGet(&dev, 0));
    CHECK(cuCtxCreate(&ctx, 0, dev));
    CHECK(cuModuleLoadData(&mod, ptx));
    CHECK(cuModuleGetFunction(&bump, mod, "bump"));
    CHECK(cuModuleGetFunction(&empty, mod, "empty"));
    CHECK(cuMemAlloc(&counter, 4));
    CHECK(cuMemsetD32(counter, 0, 1));

    const int n = 10000, bad = 5000;
    void *args[] = {&counter};
    for (int i = 0; i < n; i++) {
        /* Too much dynamic shared memory: the server refuses this one launch. */
        unsigned shared = i == bad ? 1u << 30 : 0;
        CUresult r = cuLaunchKernel(bump, 1, 1, 1, 32, 1, 1, shared, 0, args, NULL);
        if (r) {
            printf("FAIL launch %d returned %s at once; it should be fire-and-forget\n", i, name(r));
            return 1;
        }
    }
    CUresult first = cuCtxSynchronize();
    CUresult second = cuCtxSynchronize();
    unsigned got = 0;
    CHECK(cuMemcpyDtoH(&got, counter, 4));
    printf("first synchronize: %s\nsecond synchronize: %s\ncounter: %u\n", name(first), name(second), got);
    int ok = first != CUDA_SUCCESS && second == CUDA_SUCCESS && got == (unsigned)(n - 1);
    printf("%s latched error reported exactly once, %u of %d launches ran\n", ok ? "ok  " : "FAIL", got, n - 1);

    /* The fire-and-forget rate of an empty kernel, counting the final synchronize. */
    const int m = 20000;
    double t0 = now();
    for (int i = 0; i < m; i++) CHECK(cuLaunchKernel(empty, 1, 1, 1, 1, 1, 1, 0, 0, NULL, NULL));
    CHECK(cuCtxSynchronize());
    double dt = now() - t0;
    printf("rate: %d empty launches + synchronize in %.3f s = %.0f launches/s\n", m, dt, m / dt);
    if (ok) printf("ALL PASSED\n");
    return ok ? 0 : 1;
}
