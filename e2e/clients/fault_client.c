/* A CUDA driver-API client for the fault tests (e2e/tests/faults.rs). It makes a context on
 * device 0, then runs its commands in order; each prints lines on stdout (flushed), so a test can
 * follow along. Whatever the pool does, it ends with "done" and exit status 0 (1 only when cuInit
 * or the context fails).
 *
 *   spinloop SECONDS ITERS   launch a busy kernel (ITERS loop trips) and cuCtxSynchronize, over
 *                            and over, for SECONDS or until a call fails
 *                            -> "spinloop started", then "spinloop ok LAUNCHES" or
 *                               "spinloop error NAME after MS ms" (MS: how long the failing call took)
 *   after                    one of each kind of call, each timed
 *                            -> "after FUNCTION RESULT MS" per call
 *   copyloop SECONDS MIB     allocate MIB MiB, copy MIB MiB host to device over and over
 *                            -> "copyloop started", then "copyloop ok COPIES" / "copyloop error NAME"
 *   checkloop SECONDS KIB    allocate 16 slots of KIB KiB; round i writes a pattern of its own into
 *                            slot i%16 (cuMemcpyHtoD), then reads all 16 back (cuMemcpyDtoH) and
 *                            compares a checksum of each slot with the host's mirror
 *                            -> "checkloop started", one "round I ok MS" per round, then
 *                               "checkloop ok ROUNDS" / "checkloop bad round I slot S" /
 *                               "checkloop error NAME round I after MS ms"
 *   fork                     allocate and fill a buffer, fork; the child tries cuMemAlloc,
 *                            cuCtxSynchronize, cuMemcpyDtoH and exits; the parent waits for it,
 *                            then checks its buffer and makes new calls
 *                            -> "child cuMemAlloc NAME", "child cuCtxSynchronize NAME",
 *                               "child cuMemcpyDtoH NAME", "child exited STATUS",
 *                               "parent check ok|bad|NAME", "parent alloc ok|NAME"
 */
#include <cuda.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *spin_ptx =
    ".version 7.0\n.target sm_80\n.address_size 64\n"
    ".visible .entry spin(.param .u32 n, .param .u64 out)\n"
    "{\n .reg .pred %p<2>;\n .reg .b32 %r<4>;\n .reg .b64 %rd<3>;\n"
    " ld.param.u32 %r1, [n];\n mov.u32 %r2, 0;\n"
    "LOOP:\n add.u32 %r2, %r2, 1;\n setp.lt.u32 %p1, %r2, %r1;\n @%p1 bra LOOP;\n"
    " ld.param.u64 %rd1, [out];\n cvta.to.global.u64 %rd2, %rd1;\n st.global.u32 [%rd2], %r2;\n ret;\n}\n";

static const char *err(CUresult r) {
    const char *name = "CUDA_ERROR_?";
    if (r == CUDA_SUCCESS) return "ok";
    cuGetErrorName(r, &name);
    return name;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static uint64_t checksum(const unsigned char *p, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static void fill(unsigned char *p, size_t n, unsigned round) {
    uint32_t x = 0x9e3779b9u * (round + 1);
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        p[i] = (unsigned char)x;
    }
}

static void spinloop(double secs, unsigned iters) {
    CUmodule m;
    CUfunction f;
    CUdeviceptr out;
    CUresult r;
    if ((r = cuModuleLoadData(&m, spin_ptx)) || (r = cuModuleGetFunction(&f, m, "spin")) || (r = cuMemAlloc(&out, 4))) {
        printf("spinloop error %s after 0 ms\n", err(r));
        return;
    }
    void *args[] = {&iters, &out};
    printf("spinloop started\n");
    long launches = 0;
    double end = now() + secs;
    while (now() < end) {
        double t = now();
        if ((r = cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, 0, args, NULL)) || (r = cuCtxSynchronize())) {
            printf("spinloop error %s after %.0f ms\n", err(r), (now() - t) * 1e3);
            return;
        }
        launches++;
    }
    printf("spinloop ok %ld\n", launches);
}

#define TIMED(name, call)                                               \
    do {                                                                \
        double t_ = now();                                              \
        CUresult r_ = (call);                                           \
        printf("after %s %s %.0f\n", name, err(r_), (now() - t_) * 1e3); \
    } while (0)

static void after(void) {
    CUdeviceptr p = 0;
    unsigned char buf[64] = {0};
    size_t fr = 0, tot = 0;
    CUmodule m;
    CUstream s;
    TIMED("cuMemAlloc", cuMemAlloc(&p, 4096));
    TIMED("cuMemcpyHtoD", cuMemcpyHtoD(p, buf, sizeof buf));
    TIMED("cuMemcpyDtoH", cuMemcpyDtoH(buf, p, sizeof buf));
    TIMED("cuMemsetD8", cuMemsetD8(p, 1, 64));
    TIMED("cuMemGetInfo", cuMemGetInfo(&fr, &tot));
    TIMED("cuModuleLoadData", cuModuleLoadData(&m, spin_ptx));
    TIMED("cuStreamCreate", cuStreamCreate(&s, 0));
    TIMED("cuCtxSynchronize", cuCtxSynchronize());
    TIMED("cuMemFree", cuMemFree(p));
}

static void copyloop(double secs, size_t mib) {
    size_t n = mib << 20;
    CUdeviceptr d;
    CUresult r = cuMemAlloc(&d, n);
    unsigned char *h = malloc(n);
    if (r || !h) {
        printf("copyloop error %s\n", err(r));
        free(h);
        return;
    }
    memset(h, 0x5a, n);
    printf("copyloop started\n");
    long copies = 0;
    double end = now() + secs;
    while (now() < end) {
        if ((r = cuMemcpyHtoD(d, h, n))) break;
        copies++;
    }
    if (r) printf("copyloop error %s\n", err(r));
    else printf("copyloop ok %ld\n", copies);
    free(h);
}

#define SLOTS 16

static void checkloop(double secs, size_t kib) {
    size_t slot = kib << 10, n = slot * SLOTS;
    CUdeviceptr d;
    CUresult r = cuMemAlloc(&d, n);
    unsigned char *mirror = calloc(n, 1), *back = malloc(n), *round_data = malloc(slot);
    if (r || !mirror || !back || !round_data) {
        printf("checkloop error %s round 0 after 0 ms\n", err(r));
        goto out;
    }
    /* The device starts zeroed, like the mirror. */
    printf("checkloop started\n");
    unsigned i = 0;
    double end = now() + secs;
    for (; now() < end; i++) {
        double t = now();
        unsigned s = i % SLOTS;
        fill(round_data, slot, i);
        if ((r = cuMemcpyHtoD(d + s * slot, round_data, slot)) || (r = cuMemcpyDtoH(back, d, n))) {
            printf("checkloop error %s round %u after %.0f ms\n", err(r), i, (now() - t) * 1e3);
            goto out;
        }
        memcpy(mirror + s * slot, round_data, slot);
        for (unsigned k = 0; k < SLOTS; k++) {
            if (checksum(back + k * slot, slot) != checksum(mirror + k * slot, slot)) {
                printf("checkloop bad round %u slot %u\n", i, k);
                goto out;
            }
        }
        printf("round %u ok %.0f\n", i, (now() - t) * 1e3);
    }
    printf("checkloop ok %u\n", i);
out:
    free(mirror);
    free(back);
    free(round_data);
}

static void forked(void) {
    size_t n = 1 << 20;
    CUdeviceptr d;
    unsigned char *h = malloc(n), *back = malloc(n);
    fill(h, n, 7);
    CUresult r = cuMemAlloc(&d, n);
    if (r == CUDA_SUCCESS) r = cuMemcpyHtoD(d, h, n);
    if (r) {
        printf("parent setup %s\n", err(r));
        return;
    }
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        CUdeviceptr c = 0;
        printf("child cuMemAlloc %s\n", err(cuMemAlloc(&c, 4096)));
        printf("child cuCtxSynchronize %s\n", err(cuCtxSynchronize()));
        printf("child cuMemcpyDtoH %s\n", err(cuMemcpyDtoH(back, d, 64)));
        fflush(stdout);
        exit(0); /* runs the shim's exit handler in the child too */
    }
    int status = 0;
    waitpid(pid, &status, 0);
    printf("child exited %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
    r = cuMemcpyDtoH(back, d, n);
    printf("parent check %s\n", r ? err(r) : memcmp(back, h, n) ? "bad" : "ok");
    CUdeviceptr e;
    r = cuMemAlloc(&e, 4096);
    if (r == CUDA_SUCCESS) r = cuCtxSynchronize();
    printf("parent alloc %s\n", err(r));
    free(h);
    free(back);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    CUresult r = cuInit(0);
    CUdevice dev;
    CUcontext ctx;
    if (r == CUDA_SUCCESS) r = cuDeviceGet(&dev, 0);
    if (r == CUDA_SUCCESS) r = cuCtxCreate(&ctx, 0, dev);
    if (r != CUDA_SUCCESS) {
        printf("init %s\n", err(r));
        return 1;
    }
    printf("ready\n");
    for (int i = 1; i < argc; i++) {
        const char *c = argv[i];
        if (!strcmp(c, "spinloop") && i + 2 < argc) {
            spinloop(atof(argv[i + 1]), (unsigned)strtoul(argv[i + 2], NULL, 0));
            i += 2;
        } else if (!strcmp(c, "after")) {
            after();
        } else if (!strcmp(c, "copyloop") && i + 2 < argc) {
            copyloop(atof(argv[i + 1]), strtoull(argv[i + 2], NULL, 0));
            i += 2;
        } else if (!strcmp(c, "checkloop") && i + 2 < argc) {
            checkloop(atof(argv[i + 1]), strtoull(argv[i + 2], NULL, 0));
            i += 2;
        } else if (!strcmp(c, "fork")) {
            forked();
        } else {
            printf("unknown command %s\n", c);
        }
    }
    printf("done\n");
    return 0;
}
