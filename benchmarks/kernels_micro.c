/* Microbenchmark of the compiled message-sum kernels (ase_equivariant/nn/message_sums.c) alone, on
 * synthetic data shaped like one of SevenNet-0's middle convolutions (features
 * 128x0e+64x1e+32x2e, spherical harmonics up to l = 2, float32): n receivers with K edges each,
 * random senders and random pair rows of the radial weights. Prints the best time of the
 * forward kernel and of the backward kernel's two phases over `rounds` rounds, and the GFLOP/s
 * of their multiply-adds (counted as in benchmarks/model.py). With FLUSH=1 in the environment a
 * 64 MiB buffer is walked before each kernel, so that nothing starts in cache.
 *
 * The kernels' time inside the model depends on what ran before them (kernels_ab.py measures
 * that); this one measures the kernels' own code with a few percent of noise instead of tens,
 * which is what a change to their inner loops needs. The coupling is a stand-in (one output row
 * per path, coefficients 0.1): the time is in the edges. Rows are random, so two slots of one
 * phase may write one row at the same time: the numbers are for timing only.
 *
 *     gcc -O3 -march=native -ffp-contract=fast -fopenmp -std=gnu99 \
 *         -DKERNELS="\"$PWD/ase_equivariant/nn/message_sums.c\"" benchmarks/kernels_micro.c -o /tmp/micro_new -lm
 *     /tmp/micro_new 108 2 10          # receivers, threads, rounds [, edges per receiver = 42]
 *     # A/B: build the old file as /tmp/micro_old too, then alternate the two a few times:
 *     for i in 1 2 3 4; do /tmp/micro_old 864 2 3; /tmp/micro_new 864 2 3; done
 */
#include KERNELS
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static float *random_floats(int64_t count)
{
    float *a = malloc(sizeof(float) * count);
    for (int64_t i = 0; i < count; ++i) a[i] = rand() / (float)RAND_MAX;
    return a;
}

static void flush_caches(void)
{
    static char buffer[64 << 20];
    if (getenv("FLUSH"))
        for (size_t b = 0; b < sizeof buffer; b += 64) buffer[b]++;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s receivers threads rounds [edges per receiver]\n", argv[0]);
        return 2;
    }
    const int64_t n = atoll(argv[1]), K = argc > 4 ? atoll(argv[4]) : 42, E = n * K, P = E / 2;
    const int threads = atoi(argv[2]), rounds = atoi(argv[3]);
    /* the middle convolution's groups: d2, d1, mul, paths (input block offsets by d1, sh by d2) */
    const int shape[9][4] = {{1, 1, 128, 1}, {1, 3, 64, 1}, {1, 5, 32, 1}, {3, 1, 128, 1}, {3, 3, 64, 3},
                             {3, 5, 32, 2}, {5, 1, 128, 1}, {5, 3, 64, 2}, {5, 5, 32, 3}};
    group_t groups[9];
    path_t paths[32];
    float coef[256];
    int W = 0, QD = 0, n_paths = 0, OD = 0, n_coef = 0;
    long forward_flop = 0, backward_flop = 0; /* per edge */
    for (int k = 0; k < 9; ++k) {
        const int d2 = shape[k][0], d1 = shape[k][1], mul = shape[k][2], p = shape[k][3];
        groups[k] = (group_t){d2 == 1 ? 0 : d2 == 3 ? 1 : 4, d2, d1 == 1 ? 0 : d1 == 3 ? 128 : 320, d1, mul, p, W, QD};
        for (int j = 0; j < p; ++j) {
            paths[n_paths++] = (path_t){k, j, 1, OD, n_coef, mul, 0}; /* a block of its own */
            for (int c = 0; c < d2 * d1; ++c) coef[n_coef++] = 0.1f;
            OD += mul;
        }
        W += p * mul;
        QD += d2 * p * d1 * mul;
        forward_flop += (long)p * d1 * mul * (1 + 2 * d2);
        backward_flop += (long)p * d1 * mul * (1 + 2 * (2 * d2 + 2));
    }
    const int64_t S = 9, D = 480;
    srand(1);
    int64_t *counts = malloc(sizeof(int64_t) * n), *senders = malloc(sizeof(int64_t) * E);
    int64_t *rows = malloc(sizeof(int64_t) * E), *shares = malloc(sizeof(int64_t) * (n + 1));
    int8_t *phases = malloc(E);
    for (int64_t i = 0; i < n; ++i) {
        counts[i] = K;
        for (int64_t k = 0; k < K; ++k) {
            senders[i * K + k] = rand() % n;
            rows[i * K + k] = rand() % P;
            phases[i * K + k] = 1 + (k & 1);
        }
    }
    float *Y = random_floats(E * S), *R = random_floats(P * W), *x = random_floats(n * D);
    float *grad_out = random_floats(n * OD), *work = malloc(sizeof(float) * threads * QD);
    float *grad_Y = malloc(sizeof(float) * E * S), *grad_R = malloc(sizeof(float) * P * W);
    float *grad_x = calloc((size_t)threads * n * D, sizeof(float)), *out = malloc(sizeof(float) * n * OD);
    double forward = 1e30, backward = 1e30;
    for (int r = 0; r < rounds; ++r) {
        flush_caches();
        double t = now();
        for (int phase = 1; phase <= 2; ++phase)
            message_sums_backward_f32(n, threads, K, counts, senders, Y, S, R, rows, W, x, n, D, groups, 9, QD, paths,
                                      n_paths, coef, grad_out, 0, work, grad_Y, grad_R, rows, phases, phase, grad_x,
                                      shares);
        backward = fmin(backward, now() - t);
        flush_caches();
        t = now();
        message_sums_f32(n, threads, K, counts, senders, Y, S, R, rows, W, x, n, groups, 9, QD, paths, n_paths, coef,
                         out, 0, work, shares);
        forward = fmin(forward, now() - t);
    }
    printf("%s n=%lld K=%lld threads=%d: forward %.2f ms %.1f GFLOP/s | backward %.2f ms %.1f GFLOP/s\n", argv[0],
           (long long)n, (long long)K, threads, 1e3 * forward, forward_flop * (double)E / forward / 1e9,
           1e3 * backward, backward_flop * (double)E / backward / 1e9);
    return 0;
}
