/* Asynchronous device-to-host copies into page-locked memory: cuMemcpyDtoHAsync returns before
 * the data lands (the test checks with CUWIRE_STATS that no call waited for a reply), the data
 * is complete at the next synchronisation, a failing copy reports its error exactly once there,
 * and freeing or unregistering the memory right after issuing a copy waits for it instead of
 * letting it write freed memory. Prints "ALL PASSED" on success. */
#include <cuda.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

#define MIB (1024 * 1024)

static int verify(const char *what, const uint8_t *got, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) {
        uint8_t want = (uint8_t)(i * 7 + seed + (i >> 12));
        if (got[i] != want) {
            printf("FAIL %s: byte %zu is %u, want %u\n", what, i, got[i], want);
            return 1;
        }
    }
    printf("ok %s: %zu bytes\n", what, n);
    return 0;
}

static void fill(uint8_t *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)(i * 7 + seed + (i >> 12));
}

int main(void) {
    const size_t n = 64 * MIB + 12345; /* not a whole number of chunks */
    CUdevice dev;
    CUcontext ctx;
    CUstream s;
    CUdeviceptr d;
    uint8_t *pinned, *src = malloc(n), *registered = malloc(n);
    CHECK(cuInit(0));
    CHECK(cuDeviceGet(&dev, 0));
    CHECK(cuCtxCreate(&ctx, 0, dev));
    CHECK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    CHECK(cuMemAlloc(&d, n));
    fill(src, n, 3);
    CHECK(cuMemcpyHtoD(d, src, n));

    /* 1. Into cuMemAllocHost memory: complete once the stream is synchronised. */
    CHECK(cuMemAllocHost((void **)&pinned, n));
    memset(pinned, 0, n);
    CHECK(cuMemcpyDtoHAsync(pinned, d, n, s));
    /* Other work goes on meanwhile: a memset of another buffer on the default stream. */
    CUdeviceptr other;
    CHECK(cuMemAlloc(&other, MIB));
    CHECK(cuMemsetD8Async(other, 0x5a, MIB, 0));
    CHECK(cuStreamSynchronize(s));
    if (verify("cuMemcpyDtoHAsync into cuMemAllocHost memory", pinned, n, 3)) return 1;

    /* 2. Into a cuMemHostRegister'ed range, at an offset inside it. */
    CHECK(cuMemHostRegister(registered, n, 0));
    memset(registered, 0, n);
    CHECK(cuMemcpyDtoHAsync(registered + 4096, d + 4096, n - 4096, s));
    CHECK(cuCtxSynchronize());
    if (verify("cuMemcpyDtoHAsync into registered memory", registered + 4096, n - 4096, 3 + 4096 * 7 + 1)) return 1;

    /* 3. A failing copy (from a pointer no allocation holds) returns at once; its error comes
     *    at the next synchronisation, exactly once. */
    CUresult r = cuMemcpyDtoHAsync(pinned, (CUdeviceptr)0xdead0000ull, 4096, s);
    printf("failing copy issued: %s\n", name(r));
    if (r != CUDA_SUCCESS) return 1;
    r = cuStreamSynchronize(s);
    printf("first synchronize: %s\n", name(r));
    if (r == CUDA_SUCCESS) return 1;
    r = cuStreamSynchronize(s);
    printf("second synchronize: %s\n", name(r));
    if (r != CUDA_SUCCESS) return 1;

    /* 4. Freeing and unregistering right after issuing copies wait for them to land. */
    CHECK(cuMemcpyDtoHAsync(registered, d, n, s));
    CHECK(cuMemHostUnregister(registered));
    if (verify("cuMemHostUnregister waited for the copy", registered, n, 3)) return 1;
    CHECK(cuMemcpyDtoHAsync(pinned, d, n, s));
    CHECK(cuMemFreeHost(pinned));
    printf("ok cuMemFreeHost right after a copy\n");

    CHECK(cuMemFree(d));
    CHECK(cuMemFree(other));
    CHECK(cuStreamDestroy(s));
    CHECK(cuCtxDestroy(ctx));
    free(src);
    free(registered);
    printf("ALL PASSED\n");
    return 0;
}
