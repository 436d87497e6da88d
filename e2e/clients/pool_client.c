/* A scriptable CUDA driver-API client for the pool tests. Each argument is a command; each
 * command prints one line on stdout (flushed), so a test can follow along:
 *   dev N          make a context on device N current          -> "dev N ok" / "dev N <ERROR>"
 *   devices        number of devices and their total memory     -> "devices K t0 t1 ..."
 *   alloc BYTES    cuMemAlloc                                    -> "alloc BYTES ok 0xPTR" / "alloc BYTES <ERROR>"
 *   info           cuMemGetInfo                                  -> "info FREE TOTAL"
 *   write BYTE     fill the last allocation with BYTE            -> "write ok" / "write <ERROR>"
 *   check BYTE     read the last allocation back, compare        -> "check ok" / "check bad" / "check <ERROR>"
 *   read 0xPTR N   copy N bytes from a device pointer to host    -> "read ok" / "read <ERROR>"
 *   spin SECONDS   launch a busy kernel over and over, synchronizing after each, for SECONDS
 *                                                                -> "spin LAUNCHES"
 *   hold SECONDS   sleep (keeping everything)                    -> "holding" first
 * Exit status 0 unless cuInit fails. */
#include <cuda.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
    cuGetErrorName(r, &name);
    return name;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    CUresult r = cuInit(0);
    if (r != CUDA_SUCCESS) {
        printf("init %s\n", err(r));
        return 1;
    }
    CUdeviceptr last = 0;
    size_t last_size = 0;
    for (int i = 1; i < argc; i++) {
        const char *c = argv[i];
        if (!strcmp(c, "dev") && i + 1 < argc) {
            int n = atoi(argv[++i]);
            CUdevice d;
            CUcontext ctx;
            r = cuDeviceGet(&d, n);
            if (r == CUDA_SUCCESS) r = cuCtxCreate(&ctx, 0, d);
            printf("dev %d %s\n", n, r ? err(r) : "ok");
        } else if (!strcmp(c, "devices")) {
            int k = 0;
            cuDeviceGetCount(&k);
            printf("devices %d", k);
            for (int d = 0; d < k; d++) {
                size_t t = 0;
                cuDeviceTotalMem(&t, d);
                printf(" %zu", t);
            }
            printf("\n");
        } else if (!strcmp(c, "alloc") && i + 1 < argc) {
            size_t n = strtoull(argv[++i], NULL, 0);
            CUdeviceptr p = 0;
            r = cuMemAlloc(&p, n);
            if (r == CUDA_SUCCESS) {
                last = p;
                last_size = n;
                printf("alloc %zu ok 0x%llx\n", n, (unsigned long long)p);
            } else {
                printf("alloc %zu %s\n", n, err(r));
            }
        } else if (!strcmp(c, "info")) {
            size_t f = 0, t = 0;
            r = cuMemGetInfo(&f, &t);
            if (r) printf("info %s\n", err(r));
            else printf("info %zu %zu\n", f, t);
        } else if (!strcmp(c, "write") && i + 1 < argc) {
            int b = atoi(argv[++i]);
            r = cuMemsetD8(last, (unsigned char)b, last_size);
            printf("write %s\n", r ? err(r) : "ok");
        } else if (!strcmp(c, "check") && i + 1 < argc) {
            int b = atoi(argv[++i]);
            unsigned char *h = malloc(last_size);
            r = cuMemcpyDtoH(h, last, last_size);
            int bad = 0;
            for (size_t k = 0; r == CUDA_SUCCESS && k < last_size; k++) bad |= h[k] != (unsigned char)b;
            printf("check %s\n", r ? err(r) : bad ? "bad" : "ok");
            free(h);
        } else if (!strcmp(c, "read") && i + 2 < argc) {
            CUdeviceptr p = strtoull(argv[i + 1], NULL, 0);
            size_t n = strtoull(argv[i + 2], NULL, 0);
            i += 2;
            void *h = malloc(n);
            r = cuMemcpyDtoH(h, p, n);
            printf("read %s\n", r ? err(r) : "ok");
            free(h);
        } else if (!strcmp(c, "spin") && i + 1 < argc) {
            double secs = atof(argv[++i]);
            CUmodule m;
            CUfunction f;
            CUdeviceptr out;
            long launches = 0;
            if ((r = cuModuleLoadData(&m, spin_ptx)) || (r = cuModuleGetFunction(&f, m, "spin")) || (r = cuMemAlloc(&out, 4))) {
                printf("spin %s\n", err(r));
                continue;
            }
            unsigned n = 200000;
            r = CUDA_SUCCESS;
            void *args[] = {&n, &out};
            double end = now() + secs;
            /* Launches go out 4 at a time before a synchronize, so the tenant always has work
             * waiting at the GPU and the pool's sharing, not the client's round trips, decides. */
            while (now() < end) {
                for (int k = 0; k < 4 && r == CUDA_SUCCESS; k++) r = cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, 0, args, NULL);
                if (r || (r = cuCtxSynchronize())) break;
                launches += 4;
            }
            if (r) printf("spin %s\n", err(r));
            else printf("spin %ld\n", launches);
        } else if (!strcmp(c, "hold") && i + 1 < argc) {
            double secs = atof(argv[++i]);
            printf("holding\n");
            usleep((useconds_t)(secs * 1e6));
        } else {
            printf("unknown command %s\n", c);
        }
    }
    return 0;
}
