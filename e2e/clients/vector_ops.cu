/*
 * vector_ops.cu: an ordinary CUDA C++ program with triple-chevron launches, built by the
 * CUDA 13 nvcc (PyPI wheels) with only PTX in its fatbinary, used unmodified by the cuwire
 * end-to-end test e2e/tests/nvcc13.rs against `cuwired --backend emu`.
 *
 * Nothing in it knows about cuwire: nvcc registers the fatbinary and the kernels before
 * main(), libcudart (static or libcudart.so.13) loads them through the driver, which is the
 * shim. Kernels:
 *   - vector_add: c[i] = a[i] + b[i] (grid-stride loop);
 *   - block_sum: a shared-memory tree reduction with __syncthreads, one partial sum per block;
 *   - histogram: atomicAdd on global bins from a shared-memory histogram per block;
 *   - saxpy_inplace: a kernel with a float scalar argument and a 2-D grid.
 * Every result is compared with the same computation on the host. Every passed check prints
 * an "ok ..." line; the last line is "ALL PASSED". Any CUDA error or wrong value prints
 * "FAIL ..." on stderr and exits 1.
 */
#include <cuda_runtime.h>

#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

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

#define CHECK(call)                                                                          \
    do {                                                                                     \
        cudaError_t e_ = (call);                                                             \
        if (e_ != cudaSuccess)                                                               \
            fail("%s:%d: %s returned %s (%d): %s", __FILE__, __LINE__, #call,                \
                 cudaGetErrorName(e_), (int)e_, cudaGetErrorString(e_));                     \
    } while (0)

/* A launch: its configuration error now, its execution error at the synchronize. */
#define CHECK_LAUNCH(what)                                                                   \
    do {                                                                                     \
        CHECK(cudaGetLastError());                                                           \
        CHECK(cudaDeviceSynchronize());                                                      \
        ok("%s", what);                                                                      \
    } while (0)

constexpr int BLOCK = 256;
constexpr int BINS = 64;

__global__ void vector_add(const float *a, const float *b, float *c, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        c[i] = a[i] + b[i];
}

__global__ void block_sum(const int *in, long long *partial, int n) {
    __shared__ long long s[BLOCK];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    s[threadIdx.x] = i < n ? in[i] : 0;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride)
            s[threadIdx.x] += s[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0)
        partial[blockIdx.x] = s[0];
}

__global__ void histogram(const unsigned *values, unsigned *bins, int n) {
    __shared__ unsigned local[BINS];
    for (int b = threadIdx.x; b < BINS; b += blockDim.x)
        local[b] = 0;
    __syncthreads();
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        atomicAdd(&local[values[i] % BINS], 1u);
    __syncthreads();
    for (int b = threadIdx.x; b < BINS; b += blockDim.x)
        atomicAdd(&bins[b], local[b]);
}

__global__ void saxpy_2d(float alpha, const float *x, float *y, int width, int height) {
    int col = blockIdx.x * blockDim.x + threadIdx.x;
    int row = blockIdx.y * blockDim.y + threadIdx.y;
    if (col < width && row < height) {
        int i = row * width + col;
        y[i] = alpha * x[i] + y[i];
    }
}

/* A small deterministic generator, so the host and the check agree without rand(). */
static uint32_t next(uint32_t &state) {
    state = state * 1664525u + 1013904223u;
    return state >> 8;
}

template <typename T> static T *device_copy(const std::vector<T> &host) {
    T *d = nullptr;
    CHECK(cudaMalloc(&d, host.size() * sizeof(T)));
    CHECK(cudaMemcpy(d, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}

static void test_vector_add() {
    const int n = 10000;
    uint32_t st = 1;
    std::vector<float> a(n), b(n), c(n, -1.0f);
    for (int i = 0; i < n; i++) {
        a[i] = (float)(next(st) % 1000) / 8.0f;
        b[i] = (float)(next(st) % 1000) / 4.0f;
    }
    float *da = device_copy(a), *db = device_copy(b), *dc = nullptr;
    CHECK(cudaMalloc(&dc, n * sizeof(float)));
    vector_add<<<16, BLOCK>>>(da, db, dc, n); /* fewer threads than elements: grid-stride */
    CHECK_LAUNCH("vector_add<<<16, 256>>> ran");
    CHECK(cudaMemcpy(c.data(), dc, n * sizeof(float), cudaMemcpyDeviceToHost));
    for (int i = 0; i < n; i++)
        if (c[i] != a[i] + b[i]) /* exact: both sums are of multiples of 1/8 below 2^24 */
            fail("vector_add: c[%d] = %g, expected %g", i, c[i], a[i] + b[i]);
    ok("vector_add: %d sums match the host", n);
    CHECK(cudaFree(da));
    CHECK(cudaFree(db));
    CHECK(cudaFree(dc));
}

static void test_block_sum() {
    const int n = 5000;
    const int blocks = (n + BLOCK - 1) / BLOCK;
    uint32_t st = 2;
    std::vector<int> in(n);
    long long want = 0;
    for (int i = 0; i < n; i++) {
        in[i] = (int)(next(st) % 20001) - 10000;
        want += in[i];
    }
    int *din = device_copy(in);
    long long *dpartial = nullptr;
    CHECK(cudaMalloc(&dpartial, blocks * sizeof(long long)));
    block_sum<<<blocks, BLOCK>>>(din, dpartial, n);
    CHECK_LAUNCH("block_sum<<<20, 256>>> ran (shared memory, __syncthreads)");
    std::vector<long long> partial(blocks);
    CHECK(cudaMemcpy(partial.data(), dpartial, blocks * sizeof(long long), cudaMemcpyDeviceToHost));
    long long got = 0;
    for (int blk = 0; blk < blocks; blk++) {
        long long expect = 0;
        for (int i = blk * BLOCK; i < n && i < (blk + 1) * BLOCK; i++)
            expect += in[i];
        if (partial[blk] != expect)
            fail("block_sum: block %d summed %lld, expected %lld", blk, partial[blk], expect);
        got += partial[blk];
    }
    if (got != want)
        fail("block_sum: total %lld, expected %lld", got, want);
    ok("block_sum: %d partial sums match the host (total %lld)", blocks, got);
    CHECK(cudaFree(din));
    CHECK(cudaFree(dpartial));
}

static void test_histogram() {
    const int n = 20000;
    uint32_t st = 3;
    std::vector<unsigned> values(n);
    std::vector<unsigned> want(BINS, 0);
    for (int i = 0; i < n; i++) {
        values[i] = next(st);
        want[values[i] % BINS]++;
    }
    unsigned *dvalues = device_copy(values), *dbins = nullptr;
    CHECK(cudaMalloc(&dbins, BINS * sizeof(unsigned)));
    CHECK(cudaMemset(dbins, 0, BINS * sizeof(unsigned)));
    histogram<<<8, 128>>>(dvalues, dbins, n);
    CHECK_LAUNCH("histogram<<<8, 128>>> ran (atomicAdd on shared and global memory)");
    std::vector<unsigned> bins(BINS);
    CHECK(cudaMemcpy(bins.data(), dbins, BINS * sizeof(unsigned), cudaMemcpyDeviceToHost));
    unsigned total = 0;
    for (int b = 0; b < BINS; b++) {
        if (bins[b] != want[b])
            fail("histogram: bin %d counted %u, expected %u", b, bins[b], want[b]);
        total += bins[b];
    }
    if (total != (unsigned)n)
        fail("histogram: %u values counted, expected %d", total, n);
    ok("histogram: %d bins match the host", BINS);
    CHECK(cudaFree(dvalues));
    CHECK(cudaFree(dbins));
}

static void test_saxpy_2d() {
    const int width = 100, height = 37;
    const int n = width * height;
    const float alpha = 2.5f;
    uint32_t st = 4;
    std::vector<float> x(n), y(n);
    for (int i = 0; i < n; i++) {
        x[i] = (float)(next(st) % 256) / 16.0f;
        y[i] = (float)(next(st) % 256) / 32.0f;
    }
    float *dx = device_copy(x), *dy = device_copy(y);
    dim3 block(16, 8);
    dim3 grid((width + block.x - 1) / block.x, (height + block.y - 1) / block.y);
    saxpy_2d<<<grid, block>>>(alpha, dx, dy, width, height);
    CHECK_LAUNCH("saxpy_2d<<<(7, 5), (16, 8)>>> ran (2-D grid, float argument)");
    std::vector<float> out(n);
    CHECK(cudaMemcpy(out.data(), dy, n * sizeof(float), cudaMemcpyDeviceToHost));
    for (int i = 0; i < n; i++) {
        float expect = alpha * x[i] + y[i]; /* exact: few significant bits */
        if (out[i] != expect)
            fail("saxpy_2d: y[%d] = %g, expected %g", i, out[i], expect);
    }
    ok("saxpy_2d: %dx%d results match the host", width, height);
    CHECK(cudaFree(dx));
    CHECK(cudaFree(dy));
}

int main() {
    int runtime = 0, driver = 0, devices = 0;
    CHECK(cudaRuntimeGetVersion(&runtime));
    CHECK(cudaDriverGetVersion(&driver));
    CHECK(cudaGetDeviceCount(&devices));
    if (devices < 1)
        fail("no device");
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0));
    ok("runtime %d, driver %d, %d device(s), device 0 \"%s\" sm_%d%d", runtime, driver, devices, prop.name,
       prop.major, prop.minor);

    test_vector_add();
    test_block_sum();
    test_histogram();
    test_saxpy_2d();

    /* A launch error must come back as an error, not a crash: too many threads per block. */
    vector_add<<<1, 4096>>>(nullptr, nullptr, nullptr, 0);
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess)
        fail("a launch with 4096 threads per block was accepted");
    ok("a launch with 4096 threads per block is refused: %s", cudaGetErrorName(e));
    CHECK(cudaDeviceSynchronize());

    CHECK(cudaDeviceReset());
    printf("ALL PASSED\n");
    return 0;
}
