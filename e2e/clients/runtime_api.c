/*
 * runtime_api.c: a CUDA *runtime* API program (libcudart 12), built with cc
 * against the toolkit's cuda_runtime_api.h, used by the cuwire end-to-end tests.
 * libcudart reaches the driver (the shim) through cuGetProcAddress and
 * cuGetExportTable, as every runtime program does.
 *
 *   runtime_api PTX_PATH [--registered]
 *
 * With --registered it also does what an nvcc-built program does before main(): it
 * registers a fatbinary (built here around the same PTX, with nvcc's wrapper)
 * and a host stub for its kernel with __cudaRegisterFatBinary /
 * __cudaRegisterFunction, then launches through the stub's address, so
 * libcudart loads the fatbinary through the driver's cudart interface table.
 *
 * Every call is checked; the first failure prints "FAIL ..." (with the
 * cudaError_t name) on stderr and exits 1. Every passed check prints one
 * "ok ..." line on stdout; the last line is "ALL PASSED".
 */
#include <cuda_runtime_api.h>

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
        cudaError_t e_ = (call);                                                  \
        if (e_ != cudaSuccess)                                                    \
            fail("%s:%d: %s returned %s (%d): %s", __FILE__, __LINE__, #call,     \
                 cudaGetErrorName(e_), (int)e_, cudaGetErrorString(e_));          \
        ok("%s", #call);                                                          \
    } while (0)

/* What nvcc emits calls to (declared in crt/host_runtime.h, which is C++). */
extern void **__cudaRegisterFatBinary(void *fatCubin);
extern void __cudaRegisterFatBinaryEnd(void **fatCubinHandle);
extern void __cudaUnregisterFatBinary(void **fatCubinHandle);
extern void __cudaRegisterFunction(void **fatCubinHandle, const char *hostFun, char *deviceFun, const char *deviceName,
                                   int thread_limit, uint3 *tid, uint3 *bid, dim3 *bDim, dim3 *gDim, int *wSize);

/* nvcc's __fatBinC_Wrapper_t. */
struct fatbin_wrapper {
    uint32_t magic; /* 0x466243b1 */
    uint32_t version;
    const uint64_t *data;
    void *filename_or_fatbins;
};

/* A fatbinary holding one uncompressed PTX entry for sm_80 (the layout cuwire's server parses). */
static uint64_t *make_fatbin(const char *ptx) {
    size_t len = strlen(ptx) + 1;
    size_t padded = (len + 7) / 8 * 8;
    size_t total = 16 + 64 + padded;
    uint64_t *buf = calloc(total / 8, 8);
    unsigned char *b = (unsigned char *)buf;
    uint32_t magic = 0xBA55ED50u;
    uint16_t version = 1, header = 16, kind = 1, entry_version = 0x101;
    uint64_t body = 64 + padded, size = padded, flags = 0x11; /* 64-bit, Linux */
    uint32_t entry_header = 64, sm = 80, bits = 64;
    memcpy(b + 0, &magic, 4);
    memcpy(b + 4, &version, 2);
    memcpy(b + 6, &header, 2);
    memcpy(b + 8, &body, 8);
    unsigned char *e = b + 16;
    memcpy(e + 0, &kind, 2);
    memcpy(e + 2, &entry_version, 2);
    memcpy(e + 4, &entry_header, 4);
    memcpy(e + 8, &size, 8);
    memcpy(e + 28, &sm, 4);
    memcpy(e + 32, &bits, 4);
    memcpy(e + 40, &flags, 8);
    memcpy(e + 64, ptx, len);
    return buf;
}

/* The host stub whose address names the kernel, as nvcc's generated stubs do. */
static char vecadd_stub;

static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f)
        fail("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)len + 1);
    if (!buf || fread(buf, 1, (size_t)len, f) != (size_t)len)
        fail("cannot read %s", path);
    buf[len] = 0;
    fclose(f);
    return buf;
}

/* nvcc-style: a registered fatbinary and a launch through the host stub. */
static void **registered_launch(const char *ptx, uint64_t **fatbin_out, float *da, float *db, float *dc, const float *a,
                                const float *b, float *c, unsigned n) {
    size_t bytes = n * sizeof(float);
    void *args[] = {&da, &db, &dc, (void *)&n};
    dim3 block = {128, 1, 1};
    dim3 grid = {(n + 127) / 128, 1, 1};
    uint64_t *fatbin = make_fatbin(ptx);
    *fatbin_out = fatbin;
    static struct fatbin_wrapper wrapper;
    wrapper.magic = 0x466243b1u;
    wrapper.version = 1;
    wrapper.data = fatbin;
    wrapper.filename_or_fatbins = NULL;
    void **handle = __cudaRegisterFatBinary(&wrapper);
    if (!handle)
        fail("__cudaRegisterFatBinary returned NULL");
    __cudaRegisterFunction(handle, &vecadd_stub, (char *)"vecadd", "vecadd", -1, NULL, NULL, NULL, NULL, NULL);
    __cudaRegisterFatBinaryEnd(handle);
    ok("registered a fatbinary and the vecadd stub");
    CHECK(cudaMemset(dc, 0, bytes));
    CHECK(cudaLaunchKernel((const void *)&vecadd_stub, grid, block, args, 0, 0));
    CHECK(cudaDeviceSynchronize());
    memset(c, 0, bytes);
    CHECK(cudaMemcpy(c, dc, bytes, cudaMemcpyDeviceToHost));
    for (unsigned i = 0; i < n; i++) {
        if (c[i] != a[i] + b[i])
            fail("fatbinary launch: c[%u] = %f, want %f", i, c[i], a[i] + b[i]);
    }
    ok("vecadd results through the registered fatbinary");
    struct cudaFuncAttributes attrs;
    CHECK(cudaFuncGetAttributes(&attrs, (const void *)&vecadd_stub));
    if (attrs.maxThreadsPerBlock < 128)
        fail("cudaFuncGetAttributes: maxThreadsPerBlock %d", attrs.maxThreadsPerBlock);

    return handle;
}

int main(int argc, char **argv) {
    if (argc < 2)
        fail("usage: %s PTX_PATH [--registered]", argv[0]);
    char *ptx = read_text(argv[1]);
    int registered = argc > 2 && strcmp(argv[2], "--registered") == 0;

    int runtime = 0, driver = 0;
    CHECK(cudaRuntimeGetVersion(&runtime));
    CHECK(cudaDriverGetVersion(&driver));
    printf("runtime %d, driver %d\n", runtime, driver);
    if (driver < 12000)
        fail("driver version %d < 12000", driver);

    int count = 0;
    CHECK(cudaGetDeviceCount(&count));
    if (count < 1)
        fail("cudaGetDeviceCount gave %d devices", count);
    CHECK(cudaSetDevice(0));
    int dev = -1;
    CHECK(cudaGetDevice(&dev));
    if (dev != 0)
        fail("cudaGetDevice gave %d", dev);

    struct cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0));
    printf("device 0: %s, compute capability %d.%d, %zu MiB\n", prop.name, prop.major, prop.minor,
           prop.totalGlobalMem >> 20);
    if (prop.major < 1)
        fail("compute capability %d.%d", prop.major, prop.minor);

    const unsigned n = 1000;
    size_t bytes = n * sizeof(float);
    float *a = malloc(bytes), *b = malloc(bytes), *c = malloc(bytes);
    for (unsigned i = 0; i < n; i++) {
        a[i] = (float)i;
        b[i] = 2.0f * (float)i + 0.5f;
        c[i] = -1.0f;
    }

    float *da = NULL, *db = NULL, *dc = NULL;
    CHECK(cudaMalloc((void **)&da, bytes));
    CHECK(cudaMalloc((void **)&db, bytes));
    CHECK(cudaMalloc((void **)&dc, bytes));
    CHECK(cudaMemcpy(da, a, bytes, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(db, b, bytes, cudaMemcpyHostToDevice));
    CHECK(cudaMemset(dc, 0, bytes));

    cudaLibrary_t lib = NULL;
    CHECK(cudaLibraryLoadData(&lib, ptx, NULL, NULL, 0, NULL, NULL, 0));
    cudaKernel_t kernel = NULL;
    CHECK(cudaLibraryGetKernel(&kernel, lib, "vecadd"));

    void *args[] = {&da, &db, &dc, (void *)&n};
    dim3 block = {128, 1, 1};
    dim3 grid = {(n + 127) / 128, 1, 1};
    CHECK(cudaLaunchKernel((const void *)kernel, grid, block, args, 0, 0));
    CHECK(cudaGetLastError());
    CHECK(cudaDeviceSynchronize());

    CHECK(cudaMemcpy(c, dc, bytes, cudaMemcpyDeviceToHost));
    for (unsigned i = 0; i < n; i++) {
        float want = a[i] + b[i];
        if (c[i] != want)
            fail("c[%u] = %f, want %f", i, c[i], want);
    }
    ok("vecadd results (%u elements)", n);

    /* cudaMemcpyDefault: the direction comes from unified addressing. */
    memset(c, 0, bytes);
    CHECK(cudaMemcpy(c, dc, bytes, cudaMemcpyDefault));
    if (c[n - 1] != a[n - 1] + b[n - 1])
        fail("cudaMemcpyDefault gave c[%u] = %f", n - 1, c[n - 1]);
    ok("cudaMemcpyDefault results");

    void **handle = NULL;
    uint64_t *fatbin = NULL;
    if (registered)
        handle = registered_launch(ptx, &fatbin, da, db, dc, a, b, c, n);

    CHECK(cudaFree(da));
    CHECK(cudaFree(db));
    CHECK(cudaFree(dc));
    CHECK(cudaLibraryUnload(lib));
    if (handle)
        __cudaUnregisterFatBinary(handle);
    free(fatbin);
    CHECK(cudaDeviceSynchronize());
    free(a);
    free(b);
    free(c);
    free(ptx);
    printf("ALL PASSED\n");
    return 0;
}
