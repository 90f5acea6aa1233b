/* Radial functions of the pair distance tabulated on a uniform grid and interpolated by cubic
 * Hermite splines: the convolutions' radial weights (and their derivative) without their MLP.
 *
 * Built on first use by ase_equivariant/nn/radial_table.py (plain C, no Python or torch
 * headers) and called through ctypes on contiguous float32 arrays.
 *
 * The grid has n nodes r_j = (j + 1) h, j = 0 .. n-1; V (n, W) holds the functions' values at
 * the nodes, dV (n, W) their increments dV[j] = V[j+1] - V[j] (formed in float64: the slope
 * dV / h of float32 values would carry their rounding error times 1/h), D (n, W) their
 * derivatives with respect to r. A distance r in [h, n h] falls into the interval
 * [r_i, r_i+1] with i = min(floor(r / h) - 1, n - 2) and t = r / h - (i + 1) in [0, 1]; its
 * values are the cubic Hermite spline
 *     f(r) = V[i] + h01(t) dV[i] + h (h10(t) D[i] + h11(t) D[i+1])
 * with h01 = 3t^2 - 2t^3, h10 = t^3 - 2t^2 + t, h11 = t^3 - t^2, and df/dr its derivative (a C1
 * function of r, whose derivative is exactly that of the interpolated values: forces stay
 * conservative). Callers keep r in [h, n h].
 *
 * Pairs are shared among `threads` OpenMP threads in contiguous ranges; each result is one
 * thread's, summed in a fixed order, so results do not depend on the number of threads.
 */
#include <stdint.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#define INLINE static inline __attribute__((always_inline))

typedef float vector_t __attribute__((vector_size(64), aligned(4)));
#define LANES 16

/* The interval of r: i and t as above, in double (in float, r / h of a few thousand would carry
 * an error of ~1e-4 into t, and the derivatives ~1e-5 of their size). */
INLINE void interval(float r, double h, int64_t n, int64_t *i, float *t)
{
    const double s = (double)r / h;
    int64_t k = (int64_t)s - 1;
    if (k > n - 2) k = n - 2;
    if (k < 0) k = 0;
    *i = k;
    *t = (float)(s - (double)(k + 1));
}

/* *(vector_t *)p = v, around the caches if `stream` and the processor can (AVX-512, p 64-byte
 * aligned): for outputs larger than the caches, whose lines a cached store would first read. */
INLINE void store(float *p, vector_t v, int stream)
{
#ifdef __AVX512F__
    if (stream && ((uintptr_t)p & 63) == 0) {
        _mm512_stream_ps(p, (__m512)v);
        return;
    }
#endif
    *(vector_t *)p = v;
}

/* out[e, 0:W] ← f(r[e]) for the P distances r; stored around the caches if `stream`. */
void radial_values(int64_t P, int64_t W, const float *r, double h, int64_t n, const float *V, const float *dV,
                   const float *D, float *out, int threads, int stream)
{
    #pragma omp parallel num_threads(threads)
    {
    #pragma omp for schedule(static)
    for (int64_t e = 0; e < P; ++e) {
        int64_t i;
        float t;
        interval(r[e], h, n, &i, &t);
        const float t2 = t * t, t3 = t2 * t;
        const float c = 3 * t2 - 2 * t3, b = (t3 - 2 * t2 + t) * (float)h, d = (t3 - t2) * (float)h;
        const float *v0 = V + i * W, *dv = dV + i * W, *d0 = D + i * W, *d1 = d0 + W;
        float *o = out + e * W;
        int64_t col = 0;
        for (; col + LANES <= W; col += LANES)
            store(o + col, *(const vector_t *)(v0 + col) + c * *(const vector_t *)(dv + col)
                           + b * *(const vector_t *)(d0 + col) + d * *(const vector_t *)(d1 + col), stream);
        for (; col < W; ++col) o[col] = v0[col] + c * dv[col] + b * d0[col] + d * d1[col];
    }
#ifdef __AVX512F__
    if (stream) _mm_sfence(); /* this thread's stores around the caches, for whoever reads next */
#endif
    }
}

/* grad_r[e] ← sum_c grad[e, c] df_c/dr (r[e]) for the P distances r: the gradient with respect to
 * the distances of a function of the values, given its gradient `grad` (P, W) with respect to them. */
void radial_distance_gradient(int64_t P, int64_t W, const float *r, double h, int64_t n, const float *dV,
                              const float *D, const float *grad, float *grad_r, int threads)
{
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t e = 0; e < P; ++e) {
        int64_t i;
        float t;
        interval(r[e], h, n, &i, &t);
        const float t2 = t * t;
        const float c = (6 * t - 6 * t2) / (float)h, b = 3 * t2 - 4 * t + 1, d = 3 * t2 - 2 * t;
        const float *dv = dV + i * W, *d0 = D + i * W, *d1 = d0 + W, *g = grad + e * W;
        vector_t acc = {0};
        int64_t col = 0;
        for (; col + LANES <= W; col += LANES)
            acc += *(const vector_t *)(g + col) * (c * *(const vector_t *)(dv + col) + b * *(const vector_t *)(d0 + col)
                                                 + d * *(const vector_t *)(d1 + col));
        float sum = 0;
        for (int lane = 0; lane < LANES; ++lane) sum += acc[lane];
        for (; col < W; ++col) sum += g[col] * (c * dv[col] + b * d0[col] + d * d1[col]);
        grad_r[e] = sum;
    }
}
