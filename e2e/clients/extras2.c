/* 3-D copies, stream-ordered allocation and memory pools, JIT logs of module loads,
 * context-local storage destructors, mapped host memory (refused), primary-context state and
 * PCI bus ids, module unloading.
 *
 *   extras2 VECADD_PTX          everything; run against a pool where the tenant has a quota
 *   extras2 VECADD_PTX rows     one large 3-D copy each way (the test counts its messages)
 */
#include <cuda.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
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
        fflush(stdout);                  \
    } while (0)

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc(n + 1);
    if (fread(s, 1, n, f) != (size_t)n) n = 0;
    s[n] = 0;
    fclose(f);
    return s;
}

/* ---- 3-D copies, against a CPU model */

/* A pitched volume: `pitch` bytes per row, `height` rows per slice, `depth` slices. */
typedef struct {
    size_t pitch, height, depth;
} Vol;

static size_t vol_size(Vol v) { return v.pitch * v.height * v.depth; }

/* What the driver does, on the CPU: w x h x d bytes from (sx, sy, sz) of src to (dx, dy, dz) of dst. */
static void model_copy(unsigned char *dst, Vol dv, size_t dx, size_t dy, size_t dz, const unsigned char *src, Vol sv, size_t sx,
                       size_t sy, size_t sz, size_t w, size_t h, size_t d) {
    for (size_t k = 0; k < d; k++)
        for (size_t j = 0; j < h; j++)
            memcpy(dst + ((dz + k) * dv.height + dy + j) * dv.pitch + dx, src + ((sz + k) * sv.height + sy + j) * sv.pitch + sx, w);
}

static CUDA_MEMCPY3D desc(CUmemorytype st, const void *sh, CUdeviceptr sd, Vol sv, size_t sx, size_t sy, size_t sz, CUmemorytype dt,
                          void *dh, CUdeviceptr dd, Vol dv, size_t dx, size_t dy, size_t dz, size_t w, size_t h, size_t d) {
    CUDA_MEMCPY3D c;
    memset(&c, 0, sizeof c);
    c.srcMemoryType = st; c.srcHost = sh; c.srcDevice = sd; c.srcPitch = sv.pitch; c.srcHeight = sv.height;
    c.srcXInBytes = sx; c.srcY = sy; c.srcZ = sz;
    c.dstMemoryType = dt; c.dstHost = dh; c.dstDevice = dd; c.dstPitch = dv.pitch; c.dstHeight = dv.height;
    c.dstXInBytes = dx; c.dstY = dy; c.dstZ = dz;
    c.WidthInBytes = w; c.Height = h; c.Depth = d;
    return c;
}

static void fill(unsigned char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(i * 131 + seed * 7 + (i >> 8));
}

static void copies_3d(CUstream st) {
    CUresult r;
    /* Host volume 50 x 9 x 5; device volumes 128 x 12 x 6 and 40 x 8 x 5. */
    Vol hv = {50, 9, 5}, dv = {128, 12, 6}, dv2 = {40, 8, 5};
    unsigned char *host = malloc(vol_size(hv)), *m1 = calloc(1, vol_size(dv)), *m2 = calloc(1, vol_size(dv2));
    unsigned char *back = malloc(vol_size(dv)), *back2 = malloc(vol_size(dv2));
    fill(host, vol_size(hv), 1);
    CUdeviceptr d1, d2;
    if (cuMemAlloc(&d1, vol_size(dv)) || cuMemAlloc(&d2, vol_size(dv2)) || cuMemsetD8(d1, 0, vol_size(dv)) || cuMemsetD8(d2, 0, vol_size(dv2))) {
        printf("FAIL 3-D setup\n");
        failures++;
        return;
    }
    /* Host (3, 1, 1) -> device (10, 2, 1): 30 bytes x 7 rows x 4 slices. */
    CUDA_MEMCPY3D c = desc(CU_MEMORYTYPE_HOST, host, 0, hv, 3, 1, 1, CU_MEMORYTYPE_DEVICE, NULL, d1, dv, 10, 2, 1, 30, 7, 4);
    r = cuMemcpy3D(&c);
    model_copy(m1, dv, 10, 2, 1, host, hv, 3, 1, 1, 30, 7, 4);
    cuMemcpyDtoH(back, d1, vol_size(dv));
    EXPECT(r == CUDA_SUCCESS && memcmp(back, m1, vol_size(dv)) == 0, "cuMemcpy3D host -> device with offsets and pitches: every byte as the CPU model (%d)", r);
    /* Device (10, 2, 1) -> device (0, 1, 0) of another layout, asynchronously on a stream. */
    c = desc(CU_MEMORYTYPE_DEVICE, NULL, d1, dv, 10, 2, 1, CU_MEMORYTYPE_DEVICE, NULL, d2, dv2, 0, 1, 0, 30, 7, 4);
    r = cuMemcpy3DAsync(&c, st);
    model_copy(m2, dv2, 0, 1, 0, m1, dv, 10, 2, 1, 30, 7, 4);
    CUresult r2 = cuStreamSynchronize(st);
    cuMemcpyDtoH(back2, d2, vol_size(dv2));
    EXPECT(r == CUDA_SUCCESS && r2 == CUDA_SUCCESS && memcmp(back2, m2, vol_size(dv2)) == 0, "cuMemcpy3DAsync device -> device between layouts");
    /* Host -> device asynchronously (the host buffer may be reused at once), then device -> host
     * of a sub-box into a pitched host volume. */
    unsigned char *src2 = malloc(vol_size(hv));
    fill(src2, vol_size(hv), 9);
    c = desc(CU_MEMORYTYPE_HOST, src2, 0, hv, 0, 0, 0, CU_MEMORYTYPE_DEVICE, NULL, d2, dv2, 5, 0, 2, 35, 8, 3);
    r = cuMemcpy3DAsync(&c, st);
    model_copy(m2, dv2, 5, 0, 2, src2, hv, 0, 0, 0, 35, 8, 3);
    memset(src2, 0xEE, vol_size(hv));
    Vol ov = {64, 10, 4};
    unsigned char *out = malloc(vol_size(ov)), *mo = malloc(vol_size(ov));
    memset(out, 0x5A, vol_size(ov));
    memset(mo, 0x5A, vol_size(ov));
    c = desc(CU_MEMORYTYPE_DEVICE, NULL, d2, dv2, 4, 1, 1, CU_MEMORYTYPE_HOST, out, 0, ov, 7, 2, 1, 33, 6, 3);
    r2 = cuMemcpy3D(&c);
    model_copy(mo, ov, 7, 2, 1, m2, dv2, 4, 1, 1, 33, 6, 3);
    EXPECT(r == CUDA_SUCCESS && r2 == CUDA_SUCCESS && memcmp(out, mo, vol_size(ov)) == 0,
           "cuMemcpy3DAsync host -> device, then cuMemcpy3D device -> host into a pitched host box (nothing else touched)");
    /* Unified addresses, and host -> host. */
    memset(back2, 0, vol_size(dv2));
    c = desc(CU_MEMORYTYPE_UNIFIED, NULL, d2, dv2, 0, 0, 0, CU_MEMORYTYPE_UNIFIED, NULL, (CUdeviceptr)(uintptr_t)back2, dv2, 0, 0, 0, 40, 8, 5);
    r = cuMemcpy3D(&c);
    EXPECT(r == CUDA_SUCCESS && memcmp(back2, m2, vol_size(dv2)) == 0, "cuMemcpy3D with CU_MEMORYTYPE_UNIFIED on both sides (%d)", r);
    memset(out, 0, vol_size(ov));
    memset(mo, 0, vol_size(ov));
    c = desc(CU_MEMORYTYPE_HOST, host, 0, hv, 1, 2, 3, CU_MEMORYTYPE_HOST, out, 0, ov, 2, 3, 1, 20, 5, 2);
    r = cuMemcpy3D(&c);
    model_copy(mo, ov, 2, 3, 1, host, hv, 1, 2, 3, 20, 5, 2);
    EXPECT(r == CUDA_SUCCESS && memcmp(out, mo, vol_size(ov)) == 0, "cuMemcpy3D host -> host");
    /* 2-D copies go the same way. */
    CUDA_MEMCPY2D c2;
    memset(&c2, 0, sizeof c2);
    c2.srcMemoryType = CU_MEMORYTYPE_DEVICE; c2.srcDevice = d1; c2.srcPitch = dv.pitch; c2.srcXInBytes = 10; c2.srcY = 2 + dv.height;
    c2.dstMemoryType = CU_MEMORYTYPE_HOST; c2.dstHost = out; c2.dstPitch = 30;
    c2.WidthInBytes = 30; c2.Height = 7;
    r = cuMemcpy2D(&c2);
    int ok2 = r == CUDA_SUCCESS;
    for (int y = 0; y < 7 && ok2; y++) ok2 &= memcmp(out + y * 30, m1 + (dv.height + 2 + y) * dv.pitch + 10, 30) == 0;
    EXPECT(ok2, "cuMemcpy2D of one slice of the 3-D box");
    /* Refusals: arrays are not supported, a pitch narrower than a row or a height smaller than
     * the copy's is invalid; the program goes on. */
    c = desc(CU_MEMORYTYPE_HOST, host, 0, hv, 0, 0, 0, CU_MEMORYTYPE_ARRAY, NULL, 0, dv, 0, 0, 0, 8, 2, 2);
    c.dstArray = (CUarray)(uintptr_t)0x1000;
    r = cuMemcpy3D(&c);
    EXPECT(r == CUDA_ERROR_NOT_SUPPORTED, "cuMemcpy3D to a CUDA array: CUDA_ERROR_NOT_SUPPORTED (%d)", r);
    c = desc(CU_MEMORYTYPE_HOST, host, 0, hv, 0, 0, 0, CU_MEMORYTYPE_DEVICE, NULL, d1, dv, 0, 0, 0, 60, 2, 2);
    r = cuMemcpy3D(&c);
    c = desc(CU_MEMORYTYPE_HOST, host, 0, hv, 0, 0, 0, CU_MEMORYTYPE_DEVICE, NULL, d1, dv, 0, 0, 0, 8, 10, 2);
    r2 = cuMemcpy3D(&c);
    c = desc(CU_MEMORYTYPE_HOST, host, 0, hv, 0, 0, 0, CU_MEMORYTYPE_DEVICE, NULL, d1, dv, 0, 0, 3, 8, 2, 4);
    CUresult r3 = cuMemcpy3D(&c);
    EXPECT(r == CUDA_ERROR_INVALID_VALUE && r2 == CUDA_ERROR_INVALID_VALUE && r3 == CUDA_ERROR_INVALID_VALUE,
           "pitch < width, srcHeight < Height, a box past the allocation: CUDA_ERROR_INVALID_VALUE (%d %d %d)", r, r2, r3);
    cuMemcpyDtoH(back, d1, vol_size(dv));
    EXPECT(memcmp(back, m1, vol_size(dv)) == 0, "and the refused copies wrote nothing");
    cuMemFree(d1);
    cuMemFree(d2);
    free(host); free(m1); free(m2); free(back); free(back2); free(src2); free(out); free(mo);
}

/* One large copy each way: 3-byte rows, 3,000 rows in 10 slices (pitched 16 x 320 rows). */
static void rows_only(void) {
    Vol hv = {3, 300, 10}, dv = {16, 320, 10};
    unsigned char *host = malloc(vol_size(hv)), *back = calloc(1, vol_size(hv));
    fill(host, vol_size(hv), 5);
    CUdeviceptr d;
    cuMemAlloc(&d, vol_size(dv));
    CUDA_MEMCPY3D c = desc(CU_MEMORYTYPE_HOST, host, 0, hv, 0, 0, 0, CU_MEMORYTYPE_DEVICE, NULL, d, dv, 2, 10, 0, 3, 300, 10);
    CUresult r = cuMemcpy3D(&c);
    c = desc(CU_MEMORYTYPE_DEVICE, NULL, d, dv, 2, 10, 0, CU_MEMORYTYPE_HOST, back, 0, hv, 0, 0, 0, 3, 300, 10);
    CUresult r2 = cuMemcpy3D(&c);
    EXPECT(r == 0 && r2 == 0 && memcmp(host, back, vol_size(hv)) == 0, "3,000 rows of 3 bytes there and back (%d %d)", r, r2);
    cuMemFree(d);
}

/* ---- stream-ordered allocation */

static void pools(CUdevice dev, CUstream st, const char *ptx) {
    CUresult r, r2, r3;
    int supported = 0;
    cuDeviceGetAttribute(&supported, CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED, dev);
    CUmemoryPool def = NULL, cur = NULL;
    r = cuDeviceGetDefaultMemPool(&def, dev);
    r2 = cuDeviceGetMemPool(&cur, dev);
    EXPECT(supported == 1 && r == 0 && r2 == 0 && def != NULL && def == cur, "memory pools supported; the default pool is the current one");

    /* Allocations ordered on a stream with a kernel between them and their frees. */
    CUmodule mod;
    CUfunction fn;
    if (cuModuleLoadData(&mod, ptx) || cuModuleGetFunction(&fn, mod, "vecadd")) {
        printf("FAIL loading vecadd\n");
        failures++;
        return;
    }
    size_t free0 = 0, total = 0, free1 = 0, free2 = 0;
    cuMemGetInfo(&free0, &total);
    enum { N = 1000 };
    float a[N], b[N], cc[N];
    for (int i = 0; i < N; i++) a[i] = i, b[i] = 2 * i + 1;
    CUdeviceptr da = 0, db = 0, dc = 0;
    r = cuMemAllocAsync(&da, N * 4, st);
    r2 = cuMemAllocAsync(&db, N * 4, st);
    r3 = cuMemAllocFromPoolAsync(&dc, N * 4, def, st);
    EXPECT(r == 0 && r2 == 0 && r3 == 0 && da && db && dc, "cuMemAllocAsync x2, cuMemAllocFromPoolAsync (%d %d %d)", r, r2, r3);
    cuMemGetInfo(&free1, &total);
    cuuint64_t used = 0, high = 0;
    cuMemPoolGetAttribute(def, CU_MEMPOOL_ATTR_USED_MEM_CURRENT, &used);
    EXPECT(free0 - free1 == 3 * N * 4 && used == 3 * N * 4, "they count in the tenant's memory (%zu bytes) and the pool's (%llu)", free0 - free1,
           (unsigned long long)used);
    unsigned n = N;
    void *args[] = {&da, &db, &dc, &n};
    cuMemcpyHtoDAsync(da, a, sizeof a, st);
    cuMemcpyHtoDAsync(db, b, sizeof b, st);
    r = cuLaunchKernel(fn, (N + 127) / 128, 1, 1, 128, 1, 1, 0, st, args, NULL);
    r2 = cuMemFreeAsync(da, st);
    cuMemFreeAsync(db, st);
    cuMemcpyDtoHAsync(cc, dc, sizeof cc, st);
    r3 = cuMemFreeAsync(dc, st);
    CUresult r4 = cuStreamSynchronize(st);
    int right = 1;
    for (int i = 0; i < N; i++) right &= cc[i] == a[i] + b[i];
    EXPECT(r == 0 && r2 == 0 && r3 == 0 && r4 == 0 && right, "a kernel between cuMemAllocAsync and cuMemFreeAsync on the stream computed c = a + b");
    cuMemGetInfo(&free2, &total);
    cuMemPoolGetAttribute(def, CU_MEMPOOL_ATTR_USED_MEM_CURRENT, &used);
    cuMemPoolGetAttribute(def, CU_MEMPOOL_ATTR_USED_MEM_HIGH, &high);
    EXPECT(free2 == free0 && used == 0 && high == 3 * N * 4, "after cuMemFreeAsync the memory is back (free %zu of %zu; pool used %llu, high %llu)", free2,
           total, (unsigned long long)used, (unsigned long long)high);
    cuuint64_t zero = 0;
    cuMemPoolSetAttribute(def, CU_MEMPOOL_ATTR_USED_MEM_HIGH, &zero);
    cuMemPoolGetAttribute(def, CU_MEMPOOL_ATTR_USED_MEM_HIGH, &high);
    EXPECT(high == 0, "the high-water mark resets");

    /* The tenant's quota holds for pool allocations exactly as for cuMemAlloc. */
    CUdeviceptr big = 0, one = 0;
    r = cuMemAllocAsync(&big, free0 + 1, st);
    EXPECT(r == CUDA_ERROR_OUT_OF_MEMORY, "cuMemAllocAsync of one byte more than the quota leaves: CUDA_ERROR_OUT_OF_MEMORY (%d)", r);
    r = cuMemAllocAsync(&big, free0, st);
    cuMemGetInfo(&free1, &total);
    r2 = cuMemAlloc(&one, 1);
    r3 = cuMemAllocAsync(&one, 1, st);
    EXPECT(r == 0 && free1 == 0 && r2 == CUDA_ERROR_OUT_OF_MEMORY && r3 == CUDA_ERROR_OUT_OF_MEMORY,
           "all of it can be taken, then neither cuMemAlloc nor cuMemAllocAsync gets a byte (%d %d %d)", r, r2, r3);
    cuMemFreeAsync(big, st);
    cuStreamSynchronize(st);
    cuMemGetInfo(&free1, &total);
    r = cuMemAlloc(&one, 1);
    EXPECT(free1 == free0 && r == 0, "freed, it is all back (%zu)", free1);
    cuMemFree(one);

    /* A pool of our own: maximum size, current pool, attributes, destruction. */
    CUmemPoolProps props;
    memset(&props, 0, sizeof props);
    props.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
    props.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    props.location.id = dev;
    props.maxSize = 1 << 20;
    CUmemoryPool mine = NULL;
    r = cuMemPoolCreate(&mine, &props);
    r2 = cuDeviceSetMemPool(dev, mine);
    cuDeviceGetMemPool(&cur, dev);
    EXPECT(r == 0 && r2 == 0 && mine != NULL && cur == mine && mine != def, "cuMemPoolCreate, cuDeviceSetMemPool");
    CUdeviceptr p1 = 0, p2 = 0;
    r = cuMemAllocAsync(&p1, 1 << 20, st);
    r2 = cuMemAllocFromPoolAsync(&p2, 1, mine, st);
    cuMemPoolGetAttribute(mine, CU_MEMPOOL_ATTR_USED_MEM_CURRENT, &used);
    EXPECT(r == 0 && r2 == CUDA_ERROR_OUT_OF_MEMORY && used == 1 << 20, "cuMemAllocAsync takes from the current pool, up to its maxSize (%d %d)", r, r2);
    cuuint64_t threshold = 1 << 30, got = 0, reserved = 0;
    r = cuMemPoolSetAttribute(mine, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &threshold);
    r2 = cuMemPoolGetAttribute(mine, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &got);
    cuMemPoolGetAttribute(mine, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &reserved);
    int reuse = 7;
    cuMemPoolGetAttribute(mine, CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC, &reuse);
    r3 = cuMemPoolTrimTo(mine, 0);
    EXPECT(r == 0 && r2 == 0 && got == threshold && reserved == 1 << 20 && reuse == 1 && r3 == 0,
           "release threshold, reserved memory, reuse policy, cuMemPoolTrimTo");
    cuuint64_t five = 5;
    r = cuMemPoolSetAttribute(mine, CU_MEMPOOL_ATTR_USED_MEM_HIGH, &five);
    r2 = cuMemPoolSetAttribute(mine, CU_MEMPOOL_ATTR_USED_MEM_CURRENT, &zero);
    r3 = cuMemPoolDestroy(def);
    EXPECT(r == CUDA_ERROR_INVALID_VALUE && r2 == CUDA_ERROR_INVALID_VALUE && r3 == CUDA_ERROR_INVALID_VALUE,
           "read-only attributes and the default pool are refused (%d %d %d)", r, r2, r3);
    r = cuMemPoolDestroy(mine);
    cuDeviceGetMemPool(&cur, dev);
    float x = 3;
    r2 = cuMemcpyHtoD(p1, &x, 4);
    cuMemFreeAsync(p1, st);
    r3 = cuStreamSynchronize(st);
    EXPECT(r == 0 && cur == def && r2 == 0 && r3 == 0, "destroyed with an allocation outstanding: the allocation still works, the default pool is current again");
    props.handleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    r = cuMemPoolCreate(&mine, &props);
    EXPECT(r == CUDA_ERROR_NOT_SUPPORTED, "a pool with shareable handles: CUDA_ERROR_NOT_SUPPORTED (%d)", r);
    cuMemGetInfo(&free1, &total);
    EXPECT(free1 == free0, "all pool memory is back (%zu)", free1);
    cuModuleUnload(mod);
}

/* ---- JIT logs of module loads */

static const char *bad_ptx =
    ".version 7.0\n.target sm_80\n.address_size 64\n.visible .entry k()\n{\n\tfrobnicate.u32 %r1;\n\tret;\n}\n";

static void jit_logs(const char *ptx) {
    char elog[1024], ilog[1024], small[16];
    CUjit_option opts[4] = {CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES, CU_JIT_INFO_LOG_BUFFER, CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES};
    void *vals[4] = {elog, (void *)(uintptr_t)sizeof elog, ilog, (void *)(uintptr_t)sizeof ilog};
    memset(elog, 'x', sizeof elog);
    CUmodule m = NULL;
    CUresult r = cuModuleLoadDataEx(&m, bad_ptx, 4, opts, vals);
    elog[sizeof elog - 1] = 0;
    EXPECT(r == CUDA_ERROR_INVALID_PTX && strstr(elog, "frobnicate") && strstr(elog, "line 6") && (size_t)(uintptr_t)vals[1] == strlen(elog) + 1,
           "cuModuleLoadDataEx of bad PTX: CUDA_ERROR_INVALID_PTX, the error log holds the server's message (%d: \"%s\", %zu bytes)", r, elog,
           (size_t)(uintptr_t)vals[1]);
    void *vals2[2] = {small, (void *)(uintptr_t)sizeof small};
    r = cuModuleLoadDataEx(&m, bad_ptx, 2, opts, vals2);
    EXPECT(r == CUDA_ERROR_INVALID_PTX && strlen(small) == sizeof small - 1 && (size_t)(uintptr_t)vals2[1] == sizeof small,
           "a small error log is filled and cut (\"%s\")", small);
    void *vals3[4] = {elog, (void *)(uintptr_t)sizeof elog, ilog, (void *)(uintptr_t)sizeof ilog};
    r = cuModuleLoadDataEx(&m, ptx, 4, opts, vals3);
    EXPECT(r == 0 && ilog[0] != 0 && (size_t)(uintptr_t)vals3[3] == strlen(ilog) + 1 && (size_t)(uintptr_t)vals3[1] == 0 && elog[0] == 0,
           "on success: an info log line (\"%s\"), an empty error log", ilog);
    cuModuleUnload(m);
    CUlibrary lib = NULL;
    void *vals4[4] = {elog, (void *)(uintptr_t)sizeof elog, ilog, (void *)(uintptr_t)sizeof ilog};
    r = cuLibraryLoadData(&lib, bad_ptx, opts, vals4, 4, NULL, NULL, 0);
    EXPECT(r == CUDA_ERROR_INVALID_PTX && strstr(elog, "frobnicate"), "cuLibraryLoadData of bad PTX: the error log holds the server's message");
}

/* ---- context-local storage destructors, through the export table libcudart uses */

typedef void (*cls_dtor)(CUcontext, void *, void *);
typedef CUresult (*cls_put)(CUcontext, void *, void *, cls_dtor);
static CUcontext dtor_ctx;
static void *dtor_key, *dtor_value;
static int dtor_calls;
static void on_destroy(CUcontext c, void *key, void *value) {
    dtor_ctx = c;
    dtor_key = key;
    dtor_value = value;
    dtor_calls++;
}

static void context_storage(CUdevice dev, CUcontext main_ctx) {
    static const CUuuid id = {{(char)0xc6, (char)0x93, 0x33, 0x6e, 0x11, 0x21, (char)0xdf, 0x11, (char)0xa8, (char)0xc3, 0x68, (char)0xf3, 0x55,
                               (char)0xd8, (char)0x95, (char)0x93}};
    const void *table = NULL;
    if (cuGetExportTable(&table, &id) || !table) {
        printf("FAIL no context-local storage table\n");
        failures++;
        return;
    }
    cls_put put = ((const cls_put *)table)[0];
    int key, value;
    CUcontext c2;
    cuCtxCreate(&c2, 0, dev);
    CUresult r = put(c2, &key, &value, on_destroy);
    int before = dtor_calls;
    CUresult r2 = cuCtxDestroy(c2);
    EXPECT(r == 0 && r2 == 0 && before == 0 && dtor_calls == 1 && dtor_ctx == c2 && dtor_key == &key && dtor_value == &value,
           "cuCtxDestroy runs the context's storage destructor once, with its context, key and value");
    CUcontext cur = NULL;
    cuCtxGetCurrent(&cur);
    EXPECT(cur == main_ctx, "the earlier context is current again");
    CUcontext pctx;
    cuDevicePrimaryCtxRetain(&pctx, dev);
    put(pctx, &key, &value, on_destroy);
    cuDevicePrimaryCtxReset(dev);
    EXPECT(dtor_calls == 2 && dtor_ctx == pctx, "cuDevicePrimaryCtxReset runs the primary context's");
}

/* ---- primary context state, PCI bus ids */

static void device_state(CUdevice dev) {
    unsigned flags = 99;
    int active = 99;
    CUresult r = cuDevicePrimaryCtxGetState(dev, &flags, &active);
    EXPECT(r == 0 && flags == 0 && active == 0, "cuDevicePrimaryCtxGetState before any retain: flags %u, active %d", flags, active);
    cuDevicePrimaryCtxSetFlags(dev, CU_CTX_SCHED_BLOCKING_SYNC);
    CUcontext p;
    cuDevicePrimaryCtxRetain(&p, dev);
    r = cuDevicePrimaryCtxGetState(dev, &flags, &active);
    EXPECT(r == 0 && flags == CU_CTX_SCHED_BLOCKING_SYNC && active == 1, "after cuDevicePrimaryCtxSetFlags and a retain: flags %u, active %d", flags,
           active);
    cuDevicePrimaryCtxRelease(dev);
    r = cuDevicePrimaryCtxGetState(dev, &flags, &active);
    EXPECT(r == 0 && active == 0, "released: inactive");
    r = cuDevicePrimaryCtxGetState(dev, NULL, &active);
    EXPECT(r == CUDA_ERROR_INVALID_VALUE, "a NULL flags pointer: CUDA_ERROR_INVALID_VALUE");
    cuDevicePrimaryCtxSetFlags(dev, 0);

    char bus[64], want[64];
    int domain = -1, busno = -1, devno = -1;
    r = cuDeviceGetPCIBusId(bus, sizeof bus, dev);
    cuDeviceGetAttribute(&domain, CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID, dev);
    cuDeviceGetAttribute(&busno, CU_DEVICE_ATTRIBUTE_PCI_BUS_ID, dev);
    cuDeviceGetAttribute(&devno, CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID, dev);
    snprintf(want, sizeof want, "%04x:%02x:%02x.0", domain, busno, devno);
    CUdevice back = -1;
    CUresult r2 = cuDeviceGetByPCIBusId(&back, bus);
    EXPECT(r == 0 && strcasecmp(bus, want) == 0 && r2 == 0 && back == dev, "cuDeviceGetPCIBusId \"%s\" agrees with the PCI attributes (\"%s\") and cuDeviceGetByPCIBusId",
           bus, want);
}

/* ---- mapped host memory: refused, and the program goes on */

static void mapped_host(void) {
    void *p = NULL;
    CUresult r = cuMemHostAlloc(&p, 4096, CU_MEMHOSTALLOC_DEVICEMAP);
    CUresult r2 = cuMemHostAlloc(&p, 4096, CU_MEMHOSTALLOC_PORTABLE);
    CUdeviceptr dp = 0;
    CUresult r3 = cuMemHostGetDevicePointer(&dp, p, 0);
    void *q = malloc(8192);
    CUresult r4 = cuMemHostRegister(q, 8192, CU_MEMHOSTREGISTER_DEVICEMAP);
    EXPECT(r == CUDA_ERROR_NOT_SUPPORTED && r2 == 0 && r3 == CUDA_ERROR_NOT_SUPPORTED && r4 == CUDA_ERROR_NOT_SUPPORTED,
           "mapped host memory (cuMemHostAlloc DEVICEMAP, cuMemHostGetDevicePointer, cuMemHostRegister DEVICEMAP): CUDA_ERROR_NOT_SUPPORTED (%d %d %d %d)", r,
           r2, r3, r4);
    CUdeviceptr d;
    unsigned v = 0xC0FFEE, w = 0;
    r = cuMemAlloc(&d, 4);
    r2 = cuMemcpyHtoD(d, &v, 4);
    r3 = cuMemcpyDtoH(&w, d, 4);
    EXPECT(r == 0 && r2 == 0 && r3 == 0 && w == v, "and the program goes on");
    cuMemFree(d);
    cuMemFreeHost(p);
    free(q);
}

/* ---- unloading modules */

static void unloading(const char *ptx) {
    CUlibrary lib;
    CUmodule lm, m;
    CUfunction f, f2;
    CUresult r = cuLibraryLoadData(&lib, ptx, NULL, NULL, 0, NULL, NULL, 0);
    CUresult r2 = cuLibraryGetModule(&lm, lib);
    CUresult r3 = cuModuleUnload(lm);
    CUresult r4 = cuModuleGetFunction(&f, lm, "vecadd");
    EXPECT(r == 0 && r2 == 0 && r3 == 0 && r4 == 0, "cuModuleUnload of a library's module leaves it to the library (%d %d %d %d)", r, r2, r3, r4);
    cuLibraryUnload(lib);
    r = cuModuleLoadData(&m, ptx);
    r2 = cuModuleGetFunction(&f, m, "vecadd");
    const char *n1 = NULL, *n2 = NULL;
    cuFuncGetName(&n1, f);
    cuFuncGetName(&n2, f);
    EXPECT(r == 0 && r2 == 0 && n1 && n1 == n2 && strcmp(n1, "vecadd") == 0, "cuFuncGetName hands out one string per function");
    r = cuModuleUnload(m);
    r2 = cuModuleGetFunction(&f2, m, "vecadd");
    r3 = cuFuncGetName(&n1, f);
    r4 = cuModuleUnload(m);
    EXPECT(r == 0 && r2 == CUDA_ERROR_INVALID_HANDLE && r3 == CUDA_ERROR_INVALID_HANDLE && r4 == CUDA_ERROR_INVALID_HANDLE,
           "an unloaded module and its functions are forgotten (%d %d %d)", r2, r3, r4);
}

int main(int argc, char **argv) {
    CUdevice dev;
    CUcontext ctx;
    CUstream st;
    char *ptx = argc > 1 ? read_file(argv[1]) : NULL;
    if (!ptx || cuInit(0) || cuDeviceGet(&dev, 0) || cuCtxCreate(&ctx, 0, dev) || cuStreamCreate(&st, 0)) {
        printf("FAIL setup\n");
        return 1;
    }
    if (argc > 2 && strcmp(argv[2], "rows") == 0) {
        rows_only();
    } else {
        copies_3d(st);
        pools(dev, st, ptx);
        jit_logs(ptx);
        device_state(dev);
        context_storage(dev, ctx);
        mapped_host();
        unloading(ptx);
        CUresult r = cuCtxSynchronize();
        EXPECT(r == 0, "nothing went wrong on the way (%d)", r);
    }
    if (!failures) printf("ALL PASSED\n");
    return failures ? 1 : 0;
}
