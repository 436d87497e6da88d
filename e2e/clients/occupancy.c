/* Occupancy calculators and context limits, answered by the shim from the function and device
 * attributes it already holds. argv[1]: a PTX file with a `vecadd` kernel. */
#include <cuda.h>
#include <stdio.h>
#include <stdlib.h>

static int failures = 0;
#define EXPECT(cond, ...)                     \
    do {                                      \
        if (cond) {                           \
            printf("ok   " __VA_ARGS__);      \
        } else {                              \
            printf("FAIL " __VA_ARGS__);      \
            failures++;                       \
        }                                     \
        printf("\n");                         \
    } while (0)

static size_t smem_for(int block) { return (size_t)block * 4; }

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    FILE *f = fopen(argv[1], "rb");
    if (!f) return 2;
    static char ptx[1 << 16];
    size_t n = fread(ptx, 1, sizeof ptx - 1, f);
    ptx[n] = 0;
    fclose(f);
    CUdevice dev;
    CUcontext ctx;
    CUmodule mod;
    CUfunction fn;
    if (cuInit(0) || cuDeviceGet(&dev, 0) || cuCtxCreate(&ctx, 0, dev) || cuModuleLoadData(&mod, ptx) ||
        cuModuleGetFunction(&fn, mod, "vecadd")) {
        printf("FAIL setup\n");
        return 1;
    }
    int per_sm = 0, threads_per_sm = 0;
    cuDeviceGetAttribute(&threads_per_sm, CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR, dev);
    CUresult r = cuOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fn, 256, 0);
    EXPECT(r == CUDA_SUCCESS && per_sm > 0 && per_sm <= threads_per_sm / 256, "blocks of 256 per SM: %d (at most %d)", per_sm,
           threads_per_sm / 256);
    int huge = -1;
    r = cuOccupancyMaxActiveBlocksPerMultiprocessor(&huge, fn, 256, 1 << 30);
    EXPECT(r == CUDA_SUCCESS && huge == 0, "with 1 GiB of dynamic shared memory per block: %d", huge);
    int grid = 0, block = 0;
    r = cuOccupancyMaxPotentialBlockSize(&grid, &block, fn, NULL, 0, 0);
    EXPECT(r == CUDA_SUCCESS && block >= 32 && block <= 1024 && block % 32 == 0 && grid > 0, "potential block size %d, min grid %d", block,
           grid);
    r = cuOccupancyMaxPotentialBlockSize(&grid, &block, fn, smem_for, 0, 128);
    EXPECT(r == CUDA_SUCCESS && block <= 128 && block > 0, "with a block-size limit of 128 and a shared-memory callback: %d", block);
    size_t v = 0;
    r = cuCtxGetLimit(&v, CU_LIMIT_STACK_SIZE);
    EXPECT(r == CUDA_SUCCESS && v == 1024, "default stack size %zu", v);
    r = cuCtxSetLimit(CU_LIMIT_STACK_SIZE, 4096);
    cuCtxGetLimit(&v, CU_LIMIT_STACK_SIZE);
    EXPECT(r == CUDA_SUCCESS && v == 4096, "stack size set and read back: %zu", v);
    r = cuCtxSetLimit((CUlimit)99, 1);
    EXPECT(r == CUDA_ERROR_UNSUPPORTED_LIMIT, "an unknown limit is CUDA_ERROR_UNSUPPORTED_LIMIT (%d)", r);
    r = cuFuncSetCacheConfig(fn, CU_FUNC_CACHE_PREFER_SHARED);
    EXPECT(r == CUDA_SUCCESS, "cuFuncSetCacheConfig accepted");
    if (!failures) printf("ALL PASSED\n");
    return failures ? 1 : 0;
}
