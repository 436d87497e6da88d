/*
 * driver_api.c: a real CUDA driver API program, built against the toolkit's
 * cuda.h and linked with -lcuda, used by the cuwire end-to-end tests.
 *
 *   driver_api PTX_PATH [--launch]
 *
 * Every call is checked; the first failure prints "FAIL ..." (with the CUresult
 * name from cuGetErrorName) on stderr and exits 1. Every passed check prints one
 * "ok ..." line on stdout; the last line is "ALL PASSED".
 *
 * Environment: CUWIRE_E2E_CC_MAJOR (default 8; "any" to skip that check).
 */
#include <cuda.h>

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MIB ((size_t)1 << 20)

static const char *result_name(CUresult r) {
    const char *name = NULL;
    if (cuGetErrorName(r, &name) != CUDA_SUCCESS || name == NULL)
        return "(unknown CUresult)";
    return name;
}

static void fail(const char *fmt, ...) {
    va_list ap;
    fflush(stdout);
    fprintf(stderr, "FAIL ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    exit(1);
}

static void ok(const char *fmt, ...) {
    va_list ap;
    printf("ok   ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
}

#define CHECK(call)                                                               \
    do {                                                                          \
        CUresult r_ = (call);                                                     \
        if (r_ != CUDA_SUCCESS)                                                   \
            fail("%s:%d: %s returned %s (%d)", __FILE__, __LINE__, #call,         \
                 result_name(r_), (int)r_);                                       \
    } while (0)

/* A call that must fail with a given error. */
#define CHECK_FAILS_WITH(call, expected)                                          \
    do {                                                                          \
        CUresult r_ = (call);                                                     \
        if (r_ != (expected))                                                     \
            fail("%s:%d: %s returned %s (%d), expected %s", __FILE__, __LINE__,   \
                 #call, result_name(r_), (int)r_, result_name(expected));         \
    } while (0)

#define EXPECT(cond, ...)                                                         \
    do {                                                                          \
        if (!(cond)) {                                                            \
            fflush(stdout);                                                       \
            fprintf(stderr, "FAIL %s:%d: expected %s: ", __FILE__, __LINE__,      \
                    #cond);                                                       \
            fprintf(stderr, __VA_ARGS__);                                         \
            fprintf(stderr, "\n");                                                \
            exit(1);                                                              \
        }                                                                         \
    } while (0)

/* xorshift64*: a reproducible pseudo-random byte pattern. */
static void fill_pattern(unsigned char *p, size_t n, uint64_t seed) {
    uint64_t x = seed | 1;
    size_t i = 0;
    while (i < n) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        uint64_t v = x * 0x2545F4914F6CDD1DULL;
        for (int k = 0; k < 8 && i < n; k++, i++)
            p[i] = (unsigned char)(v >> (8 * k));
    }
}

static void compare_bytes(const char *what, const unsigned char *got,
                          const unsigned char *want, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (got[i] != want[i])
            fail("%s: byte %zu of %zu differs: got 0x%02x, expected 0x%02x", what, i, n,
                 got[i], want[i]);
}

static void *xmalloc(size_t n) {
    void *p = malloc(n);
    if (p == NULL)
        fail("out of host memory (%zu bytes)", n);
    return p;
}

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        fail("cannot open %s", path);
    if (fseek(f, 0, SEEK_END) != 0)
        fail("cannot seek %s", path);
    long len = ftell(f);
    if (len < 0)
        fail("cannot size %s", path);
    rewind(f);
    char *buf = xmalloc((size_t)len + 1);
    if (fread(buf, 1, (size_t)len, f) != (size_t)len)
        fail("cannot read %s", path);
    buf[len] = '\0';
    fclose(f);
    return buf;
}

struct attr {
    CUdevice_attribute id;
    const char *name;
    long min;       /* inclusive */
    long exact;     /* checked when != -1 */
};

static void check_device(CUdevice dev, int *cc_major_out) {
    char name[256];
    memset(name, 0, sizeof name);
    CHECK(cuDeviceGetName(name, (int)sizeof name, dev));
    EXPECT(name[0] != '\0', "empty device name");
    EXPECT(memchr(name, '\0', sizeof name) != NULL, "device name not terminated");
    ok("cuDeviceGetName: %s", name);

    CUuuid u1, u2, u3;
    CHECK(cuDeviceGetUuid_v2(&u1, dev));
    CHECK(cuDeviceGetUuid_v2(&u2, dev));
    CHECK(cuDeviceGetUuid(&u3, dev));
    EXPECT(memcmp(&u1, &u2, sizeof u1) == 0, "the UUID changed between two calls");
    EXPECT(memcmp(&u1, &u3, sizeof u1) == 0, "cuDeviceGetUuid and _v2 disagree");
    printf("ok   cuDeviceGetUuid_v2: ");
    for (int i = 0; i < 16; i++)
        printf("%02x", (unsigned char)u1.bytes[i]);
    printf("\n");

    size_t total = 0;
    CHECK(cuDeviceTotalMem(&total, dev));
    EXPECT(total >= 64 * MIB, "total memory %zu", total);
    ok("cuDeviceTotalMem: %zu MiB", total / MIB);

    long cc_major = 8;
    const char *env = getenv("CUWIRE_E2E_CC_MAJOR");
    if (env != NULL && strcmp(env, "any") == 0)
        cc_major = -1;
    else if (env != NULL)
        cc_major = strtol(env, NULL, 10);

    const struct attr attrs[] = {
        {CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, "COMPUTE_CAPABILITY_MAJOR", 1, cc_major},
        {CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, "COMPUTE_CAPABILITY_MINOR", 0, -1},
        {CU_DEVICE_ATTRIBUTE_WARP_SIZE, "WARP_SIZE", 1, 32},
        {CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK, "MAX_THREADS_PER_BLOCK", 1, 1024},
        {CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, "MULTIPROCESSOR_COUNT", 1, -1},
        {CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X, "MAX_BLOCK_DIM_X", 1, 1024},
        {CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y, "MAX_BLOCK_DIM_Y", 1, 1024},
        {CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z, "MAX_BLOCK_DIM_Z", 1, 64},
        {CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X, "MAX_GRID_DIM_X", 1, 2147483647L},
        {CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y, "MAX_GRID_DIM_Y", 1, 65535},
        {CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK, "MAX_SHARED_MEMORY_PER_BLOCK", 49152, -1},
        {CU_DEVICE_ATTRIBUTE_TOTAL_CONSTANT_MEMORY, "TOTAL_CONSTANT_MEMORY", 1, 65536},
        {CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK, "MAX_REGISTERS_PER_BLOCK", 1, -1},
        {CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR, "MAX_THREADS_PER_MULTIPROCESSOR", 1, -1},
        {CU_DEVICE_ATTRIBUTE_CLOCK_RATE, "CLOCK_RATE", 1, -1},
        {CU_DEVICE_ATTRIBUTE_PCI_BUS_ID, "PCI_BUS_ID", 0, -1},
    };
    int major = -1, minor = -1;
    for (size_t i = 0; i < sizeof attrs / sizeof attrs[0]; i++) {
        int v1 = -12345, v2 = -12345;
        CHECK(cuDeviceGetAttribute(&v1, attrs[i].id, dev));
        CHECK(cuDeviceGetAttribute(&v2, attrs[i].id, dev));
        EXPECT(v1 == v2, "%s: %d then %d", attrs[i].name, v1, v2);
        EXPECT(v1 >= attrs[i].min, "%s = %d, expected >= %ld", attrs[i].name, v1, attrs[i].min);
        if (attrs[i].exact != -1)
            EXPECT(v1 == attrs[i].exact, "%s = %d, expected %ld", attrs[i].name, v1,
                   attrs[i].exact);
        if (attrs[i].id == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
            major = v1;
        if (attrs[i].id == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)
            minor = v1;
        ok("cuDeviceGetAttribute %s = %d (twice)", attrs[i].name, v1);
    }

    int cmaj = -1, cmin = -1;
    CHECK(cuDeviceComputeCapability(&cmaj, &cmin, dev));
    EXPECT(cmaj == major && cmin == minor, "cuDeviceComputeCapability %d.%d, attributes %d.%d",
           cmaj, cmin, major, minor);
    ok("cuDeviceComputeCapability: %d.%d", cmaj, cmin);
    *cc_major_out = major;
}

static void check_primary_context(CUdevice dev) {
    CUcontext pctx = NULL;
    unsigned int flags = 0;
    int active = -1;
    CHECK(cuDevicePrimaryCtxRetain(&pctx, dev));
    EXPECT(pctx != NULL, "null primary context");
    CHECK(cuDevicePrimaryCtxGetState(dev, &flags, &active));
    EXPECT(active == 1, "primary context not active after retain (active=%d)", active);
    CUcontext again = NULL;
    CHECK(cuDevicePrimaryCtxRetain(&again, dev));
    EXPECT(again == pctx, "retaining twice gave two different primary contexts");
    CHECK(cuDevicePrimaryCtxRelease(dev));
    CHECK(cuDevicePrimaryCtxGetState(dev, &flags, &active));
    EXPECT(active == 1, "primary context inactive while still retained once");
    CHECK(cuDevicePrimaryCtxRelease(dev));
    CHECK(cuDevicePrimaryCtxGetState(dev, &flags, &active));
    EXPECT(active == 0, "primary context still active after the last release");
    ok("primary context retain x2 / get state / release x2 (flags 0x%x)", flags);
}

static CUcontext check_contexts(CUdevice dev) {
    CUcontext ctx = NULL, ctx2 = NULL, cur = NULL, popped = NULL;
    CUdevice d = -1;

    CHECK(cuCtxGetCurrent(&cur));
    EXPECT(cur == NULL, "a context is current before any was created");
    CHECK(cuCtxCreate(&ctx, 0, dev));
    EXPECT(ctx != NULL, "null context");
    CHECK(cuCtxGetCurrent(&cur));
    EXPECT(cur == ctx, "cuCtxCreate did not make the new context current");
    CHECK(cuCtxGetDevice(&d));
    EXPECT(d == dev, "cuCtxGetDevice %d, expected %d", (int)d, (int)dev);
    ok("cuCtxCreate / cuCtxGetCurrent / cuCtxGetDevice");

    CHECK(cuCtxCreate(&ctx2, 0, dev));
    EXPECT(ctx2 != ctx, "two contexts share a handle");
    CHECK(cuCtxGetCurrent(&cur));
    EXPECT(cur == ctx2, "second context not current");
    CHECK(cuCtxPopCurrent(&popped));
    EXPECT(popped == ctx2, "popped the wrong context");
    CHECK(cuCtxGetCurrent(&cur));
    EXPECT(cur == ctx, "after pop the first context is not current");
    CHECK(cuCtxPushCurrent(ctx2));
    CHECK(cuCtxGetCurrent(&cur));
    EXPECT(cur == ctx2, "push did not make the context current");
    CHECK(cuCtxPopCurrent(&popped));
    EXPECT(popped == ctx2, "popped the wrong context after push");
    CHECK(cuCtxGetCurrent(&cur));
    EXPECT(cur == ctx, "stack not restored after push/pop");
    ok("cuCtxPushCurrent / cuCtxPopCurrent keep stack order");

    CHECK(cuCtxSetCurrent(ctx2));
    CHECK(cuCtxGetCurrent(&cur));
    EXPECT(cur == ctx2, "cuCtxSetCurrent(ctx2) not current");
    CHECK(cuCtxSetCurrent(ctx));
    CHECK(cuCtxGetCurrent(&cur));
    EXPECT(cur == ctx, "cuCtxSetCurrent(ctx) not current");
    ok("cuCtxSetCurrent");

    unsigned int api = 0;
    CHECK(cuCtxGetApiVersion(ctx, &api));
    EXPECT(api > 0, "api version %u", api);
    ok("cuCtxGetApiVersion: %u", api);
    CHECK(cuCtxSynchronize());
    ok("cuCtxSynchronize");

    CHECK(cuCtxDestroy(ctx2));
    CHECK(cuCtxGetCurrent(&cur));
    EXPECT(cur == ctx, "destroying another context changed the current one");
    ok("cuCtxDestroy of a non-current context");
    return ctx;
}

static void check_memset(void) {
    const size_t n = MIB;
    CUdeviceptr d = 0;
    unsigned char *host = xmalloc(n), *want = xmalloc(n);
    CHECK(cuMemAlloc(&d, n));

    /* D8, whole buffer, then unaligned offsets and lengths. */
    CHECK(cuMemsetD8(d, 0x00, n));
    CHECK(cuMemsetD8(d + 3, 0xAB, 1001));
    CHECK(cuMemsetD8(d + 4097, 0x5C, 7));
    CHECK(cuMemcpyDtoH(host, d, n));
    memset(want, 0, n);
    memset(want + 3, 0xAB, 1001);
    memset(want + 4097, 0x5C, 7);
    compare_bytes("cuMemsetD8 (offsets 3 and 4097)", host, want, n);
    ok("cuMemsetD8 incl. unaligned offsets, read back");

    /* D16 at an offset that is 2-aligned but not 4-aligned. */
    CHECK(cuMemsetD16(d + 4098, 0xBEEF, 1000));
    CHECK(cuMemcpyDtoH(host, d, n));
    for (size_t i = 0; i < 1000; i++) {
        want[4098 + 2 * i] = 0xEF; /* little endian */
        want[4098 + 2 * i + 1] = 0xBE;
    }
    compare_bytes("cuMemsetD16", host, want, n);
    ok("cuMemsetD16, read back");

    /* D32 at a 4-aligned offset, 4096 elements, and the whole tail. */
    CHECK(cuMemsetD32(d + 65536, 0xDEADBEEFu, 4096));
    CHECK(cuMemcpyDtoH(host, d, n));
    for (size_t i = 0; i < 4096; i++) {
        want[65536 + 4 * i] = 0xEF;
        want[65536 + 4 * i + 1] = 0xBE;
        want[65536 + 4 * i + 2] = 0xAD;
        want[65536 + 4 * i + 3] = 0xDE;
    }
    compare_bytes("cuMemsetD32", host, want, n);
    ok("cuMemsetD32, read back");

    CHECK(cuMemFree(d));
    free(host);
    free(want);
}

static void check_pinned_streams_events(void) {
    const size_t n = 4 * MIB;
    void *h1 = NULL, *h2 = NULL;
    CUdeviceptr d = 0;
    CUstream s = NULL, s2 = NULL;
    CUevent e1 = NULL, e2 = NULL;

    CHECK(cuMemAllocHost(&h1, n));
    CHECK(cuMemHostAlloc(&h2, n, CU_MEMHOSTALLOC_PORTABLE));
    EXPECT(h1 != NULL && h2 != NULL && h1 != h2, "pinned buffers %p %p", h1, h2);
    /* Pinned memory is ordinary host memory of this process. */
    fill_pattern(h1, n, 0x1234);
    memset(h2, 0, n);
    ok("cuMemAllocHost / cuMemHostAlloc");

    CHECK(cuMemAlloc(&d, n));
    CHECK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    CHECK(cuStreamCreateWithPriority(&s2, CU_STREAM_DEFAULT, 0));
    EXPECT(s != NULL && s2 != NULL && s != s2, "stream handles %p %p", (void *)s, (void *)s2);
    ok("cuStreamCreate / cuStreamCreateWithPriority");
    CHECK(cuEventCreate(&e1, CU_EVENT_DEFAULT));
    CHECK(cuEventCreate(&e2, CU_EVENT_DEFAULT));
    ok("cuEventCreate x2");

    CHECK(cuEventRecord(e1, s));
    CHECK(cuMemcpyHtoDAsync(d, h1, n, s));
    CHECK(cuMemcpyDtoHAsync(h2, d, n, s));
    CHECK(cuEventRecord(e2, s));
    CHECK(cuStreamWaitEvent(s2, e2, 0));
    CHECK(cuStreamSynchronize(s2));
    CHECK(cuEventSynchronize(e2));
    CHECK(cuEventQuery(e2));
    CHECK(cuStreamSynchronize(s));
    CHECK(cuStreamQuery(s));
    CHECK(cuStreamQuery(s2));
    compare_bytes("async HtoD/DtoH through pinned memory", h2, h1, n);
    ok("cuMemcpyHtoDAsync / cuMemcpyDtoHAsync through pinned memory (%zu MiB), every byte",
       n / MIB);
    ok("cuEventRecord / cuStreamWaitEvent / cuEventSynchronize / cuEventQuery / "
       "cuStreamSynchronize / cuStreamQuery");

    float ms = -1.0f;
    CHECK(cuEventElapsedTime(&ms, e1, e2));
    EXPECT(ms >= 0.0f, "elapsed %f ms", (double)ms);
    ok("cuEventElapsedTime: %.3f ms", (double)ms);

    /* An asynchronous copy from page-locked memory may read it after the call has returned (as
     * DMA does): freeing it at once must wait until the copy has taken the bytes, so that what
     * the next allocation (often the same pages) is filled with never reaches the device. */
    {
        const size_t big = 32 * MIB;
        void *h3 = NULL, *h4 = NULL;
        unsigned char *back = malloc(big), *want = malloc(big);
        CUdeviceptr d3 = 0;
        EXPECT(back && want, "malloc");
        CHECK(cuMemAlloc(&d3, big));
        CHECK(cuMemAllocHost(&h3, big));
        fill_pattern(h3, big, 0x5678);
        fill_pattern(want, big, 0x5678);
        CHECK(cuMemcpyHtoDAsync(d3, h3, big, s));
        CHECK(cuMemFreeHost(h3));
        CHECK(cuMemAllocHost(&h4, big));
        memset(h4, 0xee, big);
        CHECK(cuStreamSynchronize(s));
        CHECK(cuMemcpyDtoH(back, d3, big));
        compare_bytes("async HtoD from page-locked memory freed at once", back, want, big);
        CHECK(cuMemFreeHost(h4));

        /* The same with the application's own memory, registered: unregistering waits, then
         * the memory is the application's to change and free. */
        void *r = NULL;
        EXPECT(posix_memalign(&r, 4096, big) == 0, "posix_memalign");
        fill_pattern(r, big, 0x9abc);
        fill_pattern(want, big, 0x9abc);
        CHECK(cuMemHostRegister(r, big, 0));
        CHECK(cuMemcpyHtoDAsync(d3, r, big, s));
        CHECK(cuMemHostUnregister(r));
        memset(r, 0x11, big);
        free(r);
        CHECK(cuStreamSynchronize(s));
        CHECK(cuMemcpyDtoH(back, d3, big));
        compare_bytes("async HtoD from registered memory unregistered at once", back, want, big);
        CHECK(cuMemFree(d3));
        free(back);
        free(want);
        ok("cuMemFreeHost / cuMemHostUnregister right after cuMemcpyHtoDAsync from the memory (%zu "
           "MiB): the device got the bytes of before",
           big / MIB);
    }

    CHECK(cuEventDestroy(e1));
    CHECK(cuEventDestroy(e2));
    CHECK(cuStreamDestroy(s));
    CHECK(cuStreamDestroy(s2));
    CHECK(cuMemFree(d));
    CHECK(cuMemFreeHost(h1));
    CHECK(cuMemFreeHost(h2));
    ok("cuEventDestroy / cuStreamDestroy / cuMemFree / cuMemFreeHost");
}

static void check_launch(CUfunction f) {
    const unsigned int n = 1u << 20;
    const size_t bytes = (size_t)n * sizeof(float);
    float *a = xmalloc(bytes), *b = xmalloc(bytes), *c = xmalloc(bytes);
    CUdeviceptr da = 0, db = 0, dc = 0;
    CUstream s = NULL;

    for (unsigned int i = 0; i < n; i++) {
        a[i] = (float)(i % 1000) * 0.5f;
        b[i] = (float)(i / 1000) * 2.0f;
    }
    CHECK(cuMemAlloc(&da, bytes));
    CHECK(cuMemAlloc(&db, bytes));
    CHECK(cuMemAlloc(&dc, bytes));
    CHECK(cuMemcpyHtoD(da, a, bytes));
    CHECK(cuMemcpyHtoD(db, b, bytes));
    CHECK(cuMemsetD32(dc, 0, n));
    CHECK(cuStreamCreate(&s, CU_STREAM_DEFAULT));

    const unsigned int block = 256, grid = (n + block - 1) / block;
    void *params[] = {&da, &db, &dc, (void *)&n};
    CHECK(cuLaunchKernel(f, grid, 1, 1, block, 1, 1, 0, s, params, NULL));
    CHECK(cuStreamSynchronize(s));
    CHECK(cuMemcpyDtoH(c, dc, bytes));
    for (unsigned int i = 0; i < n; i++) {
        float want = a[i] + b[i];
        if (memcmp(&c[i], &want, sizeof want) != 0)
            fail("vecadd (kernelParams): c[%u] = %g, expected %g", i, (double)c[i],
                 (double)want);
    }
    ok("cuLaunchKernel vecadd (kernelParams), %u elements checked", n);

    /* The `extra` form, with n - 3 so the bounds check in the kernel matters. */
    CHECK(cuMemsetD32(dc, 0, n));
    unsigned char buf[28];
    unsigned int n2 = n - 3;
    memcpy(buf + 0, &da, 8);
    memcpy(buf + 8, &db, 8);
    memcpy(buf + 16, &dc, 8);
    memcpy(buf + 24, &n2, 4);
    size_t size = sizeof buf;
    void *extra[] = {CU_LAUNCH_PARAM_BUFFER_POINTER, buf, CU_LAUNCH_PARAM_BUFFER_SIZE, &size,
                     CU_LAUNCH_PARAM_END};
    CHECK(cuLaunchKernel(f, grid, 1, 1, block, 1, 1, 0, NULL, NULL, extra));
    CHECK(cuCtxSynchronize());
    CHECK(cuMemcpyDtoH(c, dc, bytes));
    for (unsigned int i = 0; i < n; i++) {
        float want = i < n2 ? a[i] + b[i] : 0.0f;
        if (memcmp(&c[i], &want, sizeof want) != 0)
            fail("vecadd (extra): c[%u] = %g, expected %g", i, (double)c[i], (double)want);
    }
    ok("cuLaunchKernel vecadd (extra buffer), %u elements checked, tail untouched", n);

    CHECK(cuStreamDestroy(s));
    CHECK(cuMemFree(da));
    CHECK(cuMemFree(db));
    CHECK(cuMemFree(dc));
    free(a);
    free(b);
    free(c);
}

static void check_modules(const char *ptx_path, int launch) {
    char *ptx = read_file(ptx_path);
    CUmodule mod = NULL, mod2 = NULL;
    CUfunction f = NULL, f2 = NULL, missing = NULL;

    CHECK(cuModuleLoadData(&mod, ptx));
    CHECK(cuModuleGetFunction(&f, mod, "vecadd"));
    EXPECT(f != NULL, "null function");
    CHECK_FAILS_WITH(cuModuleGetFunction(&missing, mod, "no_such_kernel"),
                     CUDA_ERROR_NOT_FOUND);
    ok("cuModuleLoadData (PTX) / cuModuleGetFunction(vecadd); unknown name -> NOT_FOUND");

    CUdeviceptr g = 0;
    size_t gsize = 0;
    uint32_t counter = 0;
    CHECK(cuModuleGetGlobal(&g, &gsize, mod, "counter"));
    EXPECT(g != 0 && gsize == 4, "counter at 0x%llx, %zu bytes", (unsigned long long)g, gsize);
    CHECK(cuMemcpyDtoH(&counter, g, sizeof counter));
    EXPECT(counter == 42, "counter = %u, expected its initializer 42", counter);
    counter = 7;
    CHECK(cuMemcpyHtoD(g, &counter, sizeof counter));
    counter = 0;
    CHECK(cuMemcpyDtoH(&counter, g, sizeof counter));
    EXPECT(counter == 7, "counter = %u after writing 7", counter);
    ok("cuModuleGetGlobal(counter): 4 bytes, initialized to 42, writable");

    int maxthreads = 0;
    CHECK(cuFuncGetAttribute(&maxthreads, CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, f));
    EXPECT(maxthreads > 0, "MAX_THREADS_PER_BLOCK %d", maxthreads);
    ok("cuFuncGetAttribute(MAX_THREADS_PER_BLOCK) = %d", maxthreads);

    CHECK(cuModuleLoad(&mod2, ptx_path));
    CHECK(cuModuleGetFunction(&f2, mod2, "vecadd"));
    CUdeviceptr g2 = 0;
    CHECK(cuModuleGetGlobal(&g2, NULL, mod2, "counter"));
    EXPECT(g2 != g, "two loaded modules share their global");
    CHECK(cuMemcpyDtoH(&counter, g2, sizeof counter));
    EXPECT(counter == 42, "second module's counter = %u, expected 42", counter);
    ok("cuModuleLoad (file path) gives a module with its own globals");

    if (launch)
        check_launch(f2);

    CHECK(cuModuleUnload(mod2));
    CHECK(cuModuleUnload(mod));
    ok("cuModuleUnload x2");
    free(ptx);
}

int main(int argc, char **argv) {
    const char *ptx_path = NULL;
    int launch = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--launch") == 0)
            launch = 1;
        else if (ptx_path == NULL)
            ptx_path = argv[i];
        else
            fail("usage: %s PTX_PATH [--launch]", argv[0]);
    }
    if (ptx_path == NULL)
        fail("usage: %s PTX_PATH [--launch]", argv[0]);
    setvbuf(stdout, NULL, _IOLBF, 0);

    CHECK(cuInit(0));
    ok("cuInit");

    int version = 0;
    CHECK(cuDriverGetVersion(&version));
    EXPECT(version >= 12090, "driver version %d", version);
    ok("cuDriverGetVersion: %d", version);

    int count = 0;
    CHECK(cuDeviceGetCount(&count));
    EXPECT(count >= 1, "%d devices", count);
    ok("cuDeviceGetCount: %d", count);

    CUdevice dev = -1, bad = -1;
    CHECK(cuDeviceGet(&dev, 0));
    CHECK_FAILS_WITH(cuDeviceGet(&bad, count), CUDA_ERROR_INVALID_DEVICE);
    ok("cuDeviceGet(0); cuDeviceGet(%d) -> CUDA_ERROR_INVALID_DEVICE", count);

    int cc_major = 0;
    check_device(dev, &cc_major);
    check_primary_context(dev);
    CUcontext ctx = check_contexts(dev);

    size_t free0 = 0, total = 0, free1 = 0, total1 = 0;
    CHECK(cuMemGetInfo(&free0, &total));
    EXPECT(total > 0 && free0 <= total, "free %zu, total %zu", free0, total);
    ok("cuMemGetInfo: %zu MiB free of %zu MiB", free0 / MIB, total / MIB);

    const size_t big = 64 * MIB;
    CUdeviceptr d1 = 0, d2 = 0;
    CHECK(cuMemAlloc(&d1, big));
    EXPECT(d1 != 0, "null device pointer");
    CHECK(cuMemGetInfo(&free1, &total1));
    EXPECT(total1 == total, "total changed from %zu to %zu", total, total1);
    EXPECT(free1 + big <= free0, "free went from %zu to %zu after a 64 MiB allocation", free0,
           free1);
    ok("cuMemAlloc 64 MiB; cuMemGetInfo free dropped by %zu MiB", (free0 - free1) / MIB);
    CHECK(cuMemAlloc(&d2, big));
    EXPECT(d2 != d1, "two allocations at the same address");

    unsigned char *src = xmalloc(big), *dst = xmalloc(big);
    fill_pattern(src, big, 0xC0FFEE);
    memset(dst, 0, big);
    CHECK(cuMemcpyHtoD(d1, src, big));
    CHECK(cuMemcpyDtoH(dst, d1, big));
    compare_bytes("64 MiB HtoD/DtoH round trip", dst, src, big);
    ok("cuMemcpyHtoD + cuMemcpyDtoH of 64 MiB, every byte compared");

    CHECK(cuMemcpyDtoD(d2, d1, big));
    memset(dst, 0, big);
    CHECK(cuMemcpyDtoH(dst, d2, big));
    compare_bytes("64 MiB DtoD copy", dst, src, big);
    ok("cuMemcpyDtoD of 64 MiB, every byte compared");
    free(src);
    free(dst);

    check_memset();
    check_pinned_streams_events();
    check_modules(ptx_path, launch);

    CHECK(cuMemFree(d1));
    CHECK(cuMemFree(d2));
    CHECK(cuMemGetInfo(&free1, &total1));
    EXPECT(free1 >= free0, "after freeing everything free is %zu, was %zu", free1, free0);
    ok("cuMemFree of everything; free memory back to %zu MiB", free1 / MIB);

    CHECK(cuCtxDestroy(ctx));
    CUcontext cur = NULL;
    CHECK(cuCtxGetCurrent(&cur));
    EXPECT(cur == NULL, "a context is still current after destroying the last one");
    ok("cuCtxDestroy");

    (void)cc_major;
    printf("ALL PASSED\n");
    return 0;
}
