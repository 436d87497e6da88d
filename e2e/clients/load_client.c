/* Load client: N deterministic mixed driver-API operations over a context of its own.
 *
 *   load_client N SEED
 *
 * Operations (chosen by an xorshift generator seeded with SEED): cuMemAlloc of 4 KiB..1 MiB
 * (at most MAX_LIVE buffers live), HtoD of a pattern derived from (SEED, op), launches of a
 * hand-written PTX kernel (x = x * 3 + k on every u32 word), DtoH verified byte for byte against
 * a host shadow of the buffer, memsets (D8 / D32), DtoD copies (the destination read back and
 * verified), frees. Every operation is timed with clock_gettime; at the end every live buffer is
 * verified and freed, and one line is printed:
 *
 *   LOAD ops=N errors=E checksum_failures=F p50_us=.. p99_us=.. p999_us=.. max_us=.. seconds=..
 *
 * Exit status 0 only if E == 0 and F == 0. Each CUDA error is counted; the first few are printed
 * (as are the first few checksum failures). */
#include <cuda.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_LIVE 8
#define MIN_SIZE 4096
#define MAX_SIZE (1 << 20)
#define THREADS 256
#define REPORT 5

static const char *ptx =
    ".version 7.0\n.target sm_80\n.address_size 64\n"
    ".visible .entry mul3add(.param .u64 p, .param .u32 n, .param .u32 k)\n"
    "{\n .reg .pred %p<2>;\n .reg .b32 %r<9>;\n .reg .b64 %rd<5>;\n"
    " mov.u32 %r1, %ctaid.x;\n mov.u32 %r2, %ntid.x;\n mov.u32 %r3, %tid.x;\n"
    " mad.lo.s32 %r4, %r1, %r2, %r3;\n ld.param.u32 %r5, [n];\n"
    " setp.ge.u32 %p1, %r4, %r5;\n @%p1 bra DONE;\n"
    " ld.param.u64 %rd1, [p];\n cvta.to.global.u64 %rd2, %rd1;\n"
    " mul.wide.u32 %rd3, %r4, 4;\n add.s64 %rd4, %rd2, %rd3;\n"
    " ld.global.u32 %r6, [%rd4];\n ld.param.u32 %r7, [k];\n"
    " mul.lo.s32 %r8, %r6, 3;\n add.s32 %r8, %r8, %r7;\n st.global.u32 [%rd4], %r8;\n"
    "DONE:\n ret;\n}\n";

struct buf {
    CUdeviceptr ptr;
    size_t size;
    uint8_t *shadow; /* expected contents */
    int defined;     /* shadow meaningful (written since allocation, no error since) */
};

static long errors, failures;
static uint64_t rng;

static uint64_t next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static uint64_t mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static const char *name(CUresult r) {
    const char *n = "CUDA_ERROR_?";
    cuGetErrorName(r, &n);
    return n;
}

/* Counts (and reports the first few of) CUDA errors; returns 1 on success. */
static int ok(CUresult r, const char *what, long op) {
    if (r == CUDA_SUCCESS) return 1;
    if (errors++ < REPORT) fprintf(stderr, "ERROR op %ld: %s: %s\n", op, what, name(r));
    return 0;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static uint8_t *scratch;

/* Reads b back and compares it with its shadow. */
static void verify(struct buf *b, long op, const char *what) {
    if (!b->defined) return;
    if (!ok(cuMemcpyDtoH(scratch, b->ptr, b->size), "cuMemcpyDtoH", op)) {
        b->defined = 0;
        return;
    }
    if (memcmp(scratch, b->shadow, b->size) != 0) {
        size_t i = 0;
        while (scratch[i] == b->shadow[i]) i++;
        if (failures < REPORT)
            fprintf(stderr, "CHECKSUM op %ld (%s): buffer 0x%llx of %zu bytes differs at byte %zu: got 0x%02x, expected 0x%02x\n",
                    op, what, (unsigned long long)b->ptr, b->size, i, scratch[i], b->shadow[i]);
        failures++;
        memcpy(b->shadow, scratch, b->size); /* report each corruption once */
    }
}

static void fill(uint8_t *p, size_t n, uint64_t seed, long op) {
    uint64_t s = mix(seed * 0x9e3779b97f4a7c15ULL + (uint64_t)op + 1);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        s = mix(s + i);
        memcpy(p + i, &s, 8);
    }
    for (; i < n; i++) p[i] = (uint8_t)mix(s + i);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s N SEED\n", argv[0]);
        return 2;
    }
    long n = atol(argv[1]);
    uint64_t seed = strtoull(argv[2], NULL, 0);
    rng = mix(seed) | 1;
    setvbuf(stdout, NULL, _IOLBF, 0);

    CUdevice dev;
    CUcontext ctx;
    CUmodule mod;
    CUfunction fn;
    if (!ok(cuInit(0), "cuInit", -1) || !ok(cuDeviceGet(&dev, 0), "cuDeviceGet", -1) ||
        !ok(cuCtxCreate(&ctx, 0, dev), "cuCtxCreate", -1) || !ok(cuModuleLoadData(&mod, ptx), "cuModuleLoadData", -1) ||
        !ok(cuModuleGetFunction(&fn, mod, "mul3add"), "cuModuleGetFunction", -1)) {
        printf("LOAD ops=0 errors=%ld checksum_failures=0 p50_us=0 p99_us=0 p999_us=0 max_us=0 seconds=0\n", errors);
        return 1;
    }

    struct buf live[MAX_LIVE];
    int nlive = 0;
    scratch = malloc(MAX_SIZE);
    double *lat = malloc(sizeof(double) * (n > 0 ? n : 1));
    long counts[7] = {0};
    static const char *kinds[7] = {"alloc", "free", "htod", "launch", "dtoh", "memset", "dtod"};
    double t_start = now();

    for (long op = 0; op < n; op++) {
        /* Weights: alloc 14, free 12, htod 18, launch 22, dtoh 16, memset 8, dtod 10. */
        int w = (int)(next() % 100), kind;
        if (w < 14) kind = 0;
        else if (w < 26) kind = 1;
        else if (w < 44) kind = 2;
        else if (w < 66) kind = 3;
        else if (w < 82) kind = 4;
        else if (w < 90) kind = 5;
        else kind = 6;
        if (nlive == 0) kind = 0;
        if (kind == 0 && nlive == MAX_LIVE) kind = 1;
        if (kind == 6 && nlive < 2) kind = 4;
        int i = (int)(next() % (uint64_t)(nlive ? nlive : 1));
        struct buf *b = &live[i];
        /* Operations that read a buffer need defined contents: write it first instead. */
        if ((kind == 3 || kind == 4 || kind == 6) && !b->defined) kind = 2;
        uint64_t arg = next();
        counts[kind]++;

        double t0 = now();
        switch (kind) {
        case 0: { /* alloc */
            size_t size = MIN_SIZE + (size_t)(arg % (MAX_SIZE - MIN_SIZE + 1));
            CUdeviceptr p = 0;
            if (ok(cuMemAlloc(&p, size), "cuMemAlloc", op)) {
                struct buf *nb = &live[nlive++];
                nb->ptr = p;
                nb->size = size;
                nb->shadow = malloc(size);
                nb->defined = 0;
            }
            break;
        }
        case 1: /* free */
            ok(cuMemFree(b->ptr), "cuMemFree", op);
            free(b->shadow);
            live[i] = live[--nlive];
            break;
        case 2: /* htod */
            fill(b->shadow, b->size, seed, op);
            b->defined = ok(cuMemcpyHtoD(b->ptr, b->shadow, b->size), "cuMemcpyHtoD", op);
            break;
        case 3: { /* launch: x = x * 3 + k on each whole u32 word */
            unsigned words = (unsigned)(b->size / 4), k = (unsigned)(arg >> 32);
            void *args[] = {&b->ptr, &words, &k};
            unsigned blocks = (words + THREADS - 1) / THREADS;
            if (ok(cuLaunchKernel(fn, blocks, 1, 1, THREADS, 1, 1, 0, 0, args, NULL), "cuLaunchKernel", op)) {
                for (unsigned j = 0; j < words; j++) {
                    uint32_t x;
                    memcpy(&x, b->shadow + 4 * (size_t)j, 4);
                    x = x * 3u + k;
                    memcpy(b->shadow + 4 * (size_t)j, &x, 4);
                }
            } else {
                b->defined = 0;
            }
            break;
        }
        case 4: /* dtoh, verified */
            verify(b, op, "dtoh");
            break;
        case 5: /* memset */
            if (b->defined && (arg & 1)) {
                unsigned v = (unsigned)(arg >> 32);
                size_t words = b->size / 4;
                if (ok(cuMemsetD32(b->ptr, v, words), "cuMemsetD32", op)) {
                    for (size_t j = 0; j < words; j++) memcpy(b->shadow + 4 * j, &v, 4);
                } else {
                    b->defined = 0;
                }
            } else {
                unsigned char v = (unsigned char)(arg >> 40);
                if (ok(cuMemsetD8(b->ptr, v, b->size), "cuMemsetD8", op)) {
                    memset(b->shadow, v, b->size);
                    b->defined = 1;
                } else {
                    b->defined = 0;
                }
            }
            break;
        case 6: { /* dtod from b to another defined buffer, destination verified */
            int j = (int)((i + 1 + arg % (uint64_t)(nlive - 1)) % (uint64_t)nlive);
            struct buf *d = &live[j];
            if (!d->defined) {
                /* The copy must define all of d, so it comes from the front of a big enough b. */
                if (b->size < d->size) {
                    verify(b, op, "dtoh");
                    counts[6]--, counts[4]++;
                    break;
                }
            }
            size_t len = b->size < d->size ? b->size : d->size;
            size_t src_off = (arg >> 20) % (b->size - len + 1);
            if (ok(cuMemcpyDtoD(d->ptr, b->ptr + src_off, len), "cuMemcpyDtoD", op)) {
                memcpy(d->shadow, b->shadow + src_off, len);
                d->defined = 1;
                verify(d, op, "dtod");
            } else {
                d->defined = 0;
            }
            break;
        }
        }
        lat[op] = now() - t0;
    }

    /* Every remaining buffer read back, verified and freed; the context torn down. */
    for (int i = 0; i < nlive; i++) {
        verify(&live[i], n, "final");
        ok(cuMemFree(live[i].ptr), "cuMemFree", n);
        free(live[i].shadow);
    }
    ok(cuModuleUnload(mod), "cuModuleUnload", n);
    ok(cuCtxDestroy(ctx), "cuCtxDestroy", n);
    double seconds = now() - t_start;

    qsort(lat, n, sizeof(double), cmp_double);
#define PCT(q) (n ? lat[(long)((double)(n - 1) * (q))] * 1e6 : 0.0)
    fprintf(stderr, "mix:");
    for (int k = 0; k < 7; k++) fprintf(stderr, " %s=%ld", kinds[k], counts[k]);
    fprintf(stderr, "\n");
    printf("LOAD ops=%ld errors=%ld checksum_failures=%ld p50_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f seconds=%.3f\n", n,
           errors, failures, PCT(0.50), PCT(0.99), PCT(0.999), n ? lat[n - 1] * 1e6 : 0.0, seconds);
    free(lat);
    free(scratch);
    return errors == 0 && failures == 0 ? 0 : 1;
}
