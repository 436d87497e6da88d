/*
 * runtime_api.c: a CUDA *runtime* API program (libcudart 12), built with cc
 * against the toolkit's cuda_runtime_api.h, used by the cuwire end-to-end tests.
 * libcudart reaches the driver (the shim) through cuGetProcAddress and
 * cuGetExportTable, as every runtime program does.
 *
 *   runtime_api PTX_PATH
 *
 * Every call is checked; the first failure prints "FAIL ..." (with the
 * cudaError_t name) on stderr and exits 1. Every passed check prints one
 * "ok ..." line on stdout; the last line is "ALL PASSED".
 */
#include <cuda_runtime_api.h>

#include <stdarg.h>
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

int main(int argc, char **argv) {
    if (argc < 2)
        fail("usage: %s PTX_PATH", argv[0]);
    char *ptx = read_text(argv[1]);

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

    CHECK(cudaFree(da));
    CHECK(cudaFree(db));
    CHECK(cudaFree(dc));
    CHECK(cudaLibraryUnload(lib));
    CHECK(cudaDeviceSynchronize());
    free(a);
    free(b);
    free(c);
    free(ptx);
    printf("ALL PASSED\n");
    return 0;
}
