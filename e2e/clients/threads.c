/* Several threads of one process calling at once: each fires asynchronous memsets and launches
 * at its own device buffer and checks them with synchronous copies back, while the others do the
 * same. Whichever thread waits for a reply drives the shared connection (or the I/O thread does,
 * with CUWIRE_IO_THREAD=1), so replies must reach the right thread whoever reads them, and
 * fire-and-forget calls must go out while nobody waits. Prints "ALL PASSED" on success. */
#include <cuda.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define THREADS 4
#define ROUNDS 300
#define WORDS 1024

static CUcontext ctx;

static const char *name(CUresult r) {
    const char *n = "?";
    cuGetErrorName(r, &n);
    return n;
}

struct job {
    int id;
    char error[200];
};

#define TRY(call)                                                                       \
    do {                                                                                \
        CUresult r_ = (call);                                                           \
        if (r_) {                                                                       \
            snprintf(j->error, sizeof j->error, "thread %d: %s: %s", j->id, #call, name(r_)); \
            return NULL;                                                                \
        }                                                                               \
    } while (0)

static void *work(void *arg) {
    struct job *j = arg;
    uint32_t host[WORDS];
    CUdeviceptr d;
    CUstream s;
    TRY(cuCtxSetCurrent(ctx));
    TRY(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    TRY(cuMemAlloc(&d, sizeof host));
    for (int round = 0; round < ROUNDS; round++) {
        uint32_t value = (uint32_t)(j->id * 100000 + round);
        /* Fire-and-forget: nobody waits for these until the copy below. */
        TRY(cuMemsetD32Async(d, value - 1, WORDS, s));
        TRY(cuMemsetD32Async(d, value, WORDS, s));
        TRY(cuStreamSynchronize(s));
        memset(host, 0, sizeof host);
        TRY(cuMemcpyDtoH(host, d, sizeof host));
        for (int i = 0; i < WORDS; i++) {
            if (host[i] != value) {
                snprintf(j->error, sizeof j->error, "thread %d round %d: word %d is %u, want %u", j->id, round, i, host[i], value);
                return NULL;
            }
        }
        size_t free_b, total_b;
        TRY(cuMemGetInfo(&free_b, &total_b));
    }
    TRY(cuMemFree(d));
    TRY(cuStreamDestroy(s));
    return NULL;
}

int main(void) {
    CUdevice dev;
    if (cuInit(0) || cuDeviceGet(&dev, 0) || cuCtxCreate(&ctx, 0, dev)) {
        printf("FAIL setup\n");
        return 1;
    }
    pthread_t threads[THREADS];
    struct job jobs[THREADS];
    for (int i = 0; i < THREADS; i++) {
        jobs[i].id = i + 1;
        jobs[i].error[0] = 0;
        if (pthread_create(&threads[i], NULL, work, &jobs[i])) {
            printf("FAIL pthread_create\n");
            return 1;
        }
    }
    int failed = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(threads[i], NULL);
        if (jobs[i].error[0]) {
            printf("FAIL %s\n", jobs[i].error);
            failed = 1;
        } else {
            printf("ok thread %d: %d rounds\n", jobs[i].id, ROUNDS);
        }
    }
    if (failed) return 1;
    printf("ALL PASSED\n");
    return 0;
}
