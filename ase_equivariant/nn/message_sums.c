/* Fused CPU kernels of the convolution's message sums and their first derivatives.
 *
 * Built on first use by ase_equivariant/nn/native.py (C with GCC's vector extensions;
 * no Python or torch headers) and called through ctypes on contiguous arrays; the
 * pure-torch path in convolution.py computes the same numbers and is used where this library
 * cannot be built.
 *
 * Node features of the N atoms are stored block after block (ase_equivariant/nn/layout.py):
 * the block that starts at column c of an atom's irreps (mul channels of dimension d) is the
 * (N, d, mul) array at N*c, so that atom a's row of it starts at N*c + a*d*mul.
 *
 * A block holds receivers r0 .. r0+n-1 with K slots each (row-major (n, K) tables); receiver i's
 * edges are in its first counts[i] slots. Per slot e = i*K + k:
 *   Y[e, 0:S]            spherical harmonics of the edge,
 *   R[rows[e], 0:W]      radial weights of the edge (rows NULL: R[e, 0:W]; both edges of a
 *                        pair of reverse edges can share a row),
 *   x                    the sender's features, of atom senders[e].
 * A group (an input block with a spherical-harmonic block) is described by 8 ints
 *   y_off, d2, x_off, d1, mul, paths, w_off, q_off
 * (its input block starts at column x_off) and its message sums, per receiver, are the
 * (d2, paths, d1, mul) block at q_off of Q[0:QD]:
 *   Q[q_off + ((m2*paths + p)*d1 + m1)*mul + u]
 *       = sum_k Y[e, y_off+m2] * R[rows[e], w_off + p*mul + u] * x[N*x_off + s_e*d1*mul + m1*mul + u].
 * A path (p of a group, to an output irrep of dimension d3) is described by 7 ints
 *   group, p, d3, out_off, coef_off, out_stride, channel
 * (its channels are channel .. channel+mul-1 of the output block at column out_off, which has
 * out_stride channels) and the output of atom a = r0 + i holds its coupled sums:
 *   out[N*out_off + a*d3*out_stride + m3*out_stride + channel + u]
 *       = sum_{m2, m1} coef[coef_off + (m3*d2 + m2)*d1 + m1] Q[..m2, p, m1, u]
 * (coef: the path's Clebsch-Gordan coefficients with its normalisation). Q lives only in a
 * buffer of the thread (work, threads * QD), receiver by receiver, hot in cache.
 *
 * Both kernels share the receivers of a block among `threads` OpenMP threads, in contiguous
 * ranges of about equal work (so a given number of threads always adds in the same order).
 * Loaded into a process that has torch, the library uses torch's own OpenMP runtime
 * (libgomp.so.1 is already there), so its threads are the ones torch's operations just ran on.
 * The inner loops run over tiles of channels u with the rows of a tile held in registers; d2
 * (and d1 in the backward pass) are made compile-time constants for 1, 3, 5 and 7 (l up to 3).
 *
 * The file is compiled once: it includes itself twice, for float (suffix f32) and double (f64).
 */
#ifndef T
#include <stdint.h>
#include <string.h>
#ifdef __AVX__
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#define THREAD omp_get_thread_num()
#define TEAM omp_get_num_threads()
#else
#define THREAD 0
#define TEAM 1
#endif

#define INLINE static inline __attribute__((always_inline))
#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
/* the largest d1 and d2 (2l+1 of an input block and of the spherical harmonics): l <= 7 */
#define MAX_DIM 15

typedef struct {
    int y_off, d2, x_off, d1, mul, paths, w_off, q_off;
} group_t;

typedef struct {
    int group, p, d3, out_off, coef_off, out_stride, channel;
} path_t;

/* An input block: its rows (width numbers each) start at offset, one per atom. */
typedef struct {
    int64_t offset, width;
} rows_t;

/* The backward pass's tiles of channels: vectors of 64 bytes where the processor has AVX-512 (32
 * registers of that size), else of 32 (AVX2's 16 registers hold fewer rows of 64 bytes).
 * kernels_ab.py on an AMD Zen 5 core (2026-12-04), backward kernel per call, 32 -> 64 bytes:
 * Cu108 7.0 -> 6.0 ms, Cu864 70.3 -> 62.1 ms; an earlier kernel measured on this project's VM
 * the day before (processor family not recorded; Zen 4 splits each 512-bit operation in two)
 * took 4-6 % longer with 64 (benchmarks/README.md). */
#ifdef __AVX512F__
#define BACKWARD_BYTES 64
#else
#define BACKWARD_BYTES 32
#endif

/* the most input blocks whose rows the kernels prefetch */
#define MAX_INPUT_BLOCKS 16

/* how the backward pass stores a row of dL/dR (backward_group) */
typedef enum { WRITE, AROUND, ADD } store_t;

int max_dim(void) { return MAX_DIM; }

/* The distinct input blocks of the groups (at most MAX_INPUT_BLOCKS; their number), for N atoms. */
static int input_blocks(const group_t *groups, int64_t n_groups, int64_t N, rows_t *blocks)
{
    int count = 0;
    for (int64_t gi = 0; gi < n_groups; ++gi) {
        const int64_t offset = N * groups[gi].x_off;
        int seen = 0;
        for (int b = 0; b < count; ++b) seen |= blocks[b].offset == offset;
        if (!seen && count < MAX_INPUT_BLOCKS)
            blocks[count++] = (rows_t){offset, (int64_t)groups[gi].d1 * groups[gi].mul};
    }
    return count;
}

/* Ask for the `bytes` from p to be brought into cache (level 2 and up), one line at a time. */
INLINE void prefetch_rows(const void *p, int64_t bytes)
{
    for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch((const char *)p + b, 0, 2);
}

/* The same, for rows about to be written. */
INLINE void prefetch_rows_for_writing(void *p, int64_t bytes)
{
    for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch((char *)p + b, 1, 2);
}

/* Makes the stores around the caches (store_around_caches) visible to whoever reads next. */
INLINE void store_fence(void)
{
#ifdef __AVX__
    _mm_sfence();
#endif
}

/* work[i] = the work done before receiver i (i = 0 .. n): a receiver's work is one for its
 * coupling plus its slots that the call visits (those of `phase`; every slot when phases is NULL).
 */
static void receiver_work(int64_t n, int64_t K, const int64_t *counts, const int8_t *phases, int phase,
                             int64_t *work)
{
    work[0] = 0;
    for (int64_t i = 0; i < n; ++i) {
        int64_t visited = counts[i];
        if (phases) {
            visited = 0;
            for (int64_t k = 0; k < counts[i]; ++k) visited += phases[i * K + k] == phase;
        }
        work[i + 1] = work[i] + 1 + visited;
    }
}

/* The first receiver of thread t of a team of `team`: contiguous ranges of receivers of about
 * equal work (`work` from receiver_work, increasing), the same for every run with that team. In
 * the backward pass the two phases visit the two edges of each pair, those received by the lower
 * and by the higher atom: by receiver count alone the first thread would get most of phase 1. */
static int64_t first_receiver(int64_t n, const int64_t *work, int t, int team)
{
    const int64_t target = (int64_t)((double)work[n] * t / team);
    int64_t lo = 0, hi = n; /* the first i with work[i] >= target */
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (work[mid] < target) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* The first of a receiver's slots k .. count-1 (its first slot is `first`) that the backward
 * pass visits in `phase` (every slot when phases is NULL), or count. */
INLINE int64_t slot_of_phase(const int8_t *phases, int phase, int64_t first, int64_t k, int64_t count)
{
    while (k < count && phases && phases[first + k] != phase) ++k;
    return k;
}

#define T float
#define SUFFIX f32
#include __FILE__
#undef T
#undef SUFFIX
#define T double
#define SUFFIX f64
#include __FILE__
#undef T
#undef SUFFIX

#else /* the kernels for one type T */

/* A tile of channels: a vector of 64 bytes in the forward pass, BACKWARD_BYTES in the backward
 * pass; GCC's vector extensions map them to whatever SIMD registers there are. */
typedef T CAT(vforward, SUFFIX) __attribute__((vector_size(64), aligned(sizeof(T))));
typedef T CAT(vbackward, SUFFIX) __attribute__((vector_size(BACKWARD_BYTES), aligned(sizeof(T))));
#define VF CAT(vforward, SUFFIX)
#define VB CAT(vbackward, SUFFIX)
#define TF ((int)(sizeof(VF) / sizeof(T)))
#define TB ((int)(sizeof(VB) / sizeof(T)))

/* *(VB *)p = v, bypassing the caches where the processor can (AVX, p aligned to the vector): for rows
 * that are written once and read again only after much else (the backward pass's phase 1 writes
 * a pair's row of dL/dR, phase 2 adds to it a whole sweep later, the caches long since filled
 * with other rows); a cached store would first read the line from memory. Kernels that use it
 * end with store_fence(). */
INLINE void CAT(store_around_caches, SUFFIX)(T *p, VB v)
{
#if BACKWARD_BYTES == 64
    if (((uintptr_t)p & 63) == 0) {
        if (sizeof(T) == 4) _mm512_stream_ps((float *)p, (__m512)v);
        else _mm512_stream_pd((double *)p, (__m512d)v);
        return;
    }
#elif defined(__AVX__)
    if (((uintptr_t)p & 31) == 0) {
        if (sizeof(T) == 4) _mm256_stream_ps((float *)p, (__m256)v);
        else _mm256_stream_pd((double *)p, (__m256d)v);
        return;
    }
#endif
    *(VB *)p = v;
}

/* Forward, channels u0 .. u0 + NT*TF - 1 of row (p, m1) of one group of receiver i: the d2 rows
 * of sums of each of the NT tiles are accumulated in registers over the receiver's edges, then
 * stored. NT (1, 2 or 4) is a compile-time constant: the tiles share each edge's loads of Y
 * (forward kernels ~20 % faster with 4 than with 1: benchmarks/kernels_micro.c, n = 864). */
INLINE void CAT(forward_tiles, SUFFIX)(
    const group_t g, const int D2, const int NT, int u0, int64_t i, int64_t K, int64_t count, const int64_t *senders,
    const T *Y, int64_t S, const T *R, const int64_t *rows, int64_t W, int64_t r_col, const T *xg, int64_t x_row,
    int64_t x_col, T *qpm, int64_t row)
{
    VF acc[4][MAX_DIM];
    for (int t = 0; t < 4; ++t) /* (those of tiles NT .. 3 unused) */
        for (int m2 = 0; m2 < D2; ++m2) acc[t][m2] = (VF){0};
    for (int64_t k = 0; k < count; ++k) {
        const int64_t e = i * K + k;
        const T *r = R + (rows ? rows[e] : e) * W + r_col + u0, *xe = xg + senders[e] * x_row + x_col + u0;
        const T *y = Y + e * S + g.y_off;
        for (int t = 0; t < NT; ++t) {
            const VF z = *(const VF *)(r + t * TF) * *(const VF *)(xe + t * TF);
            for (int m2 = 0; m2 < D2; ++m2) acc[t][m2] += y[m2] * z;
        }
    }
    for (int t = 0; t < NT; ++t)
        for (int m2 = 0; m2 < D2; ++m2) *(VF *)(qpm + m2 * row + u0 + t * TF) = acc[t][m2];
}

/* Forward, one group of receiver i: every (p, m1) and tile of channels (see forward_tiles); x
 * the features of N atoms. */
INLINE void CAT(forward_group, SUFFIX)(
    const group_t g, const int D2, int64_t i, int64_t K, int64_t count, const int64_t *senders,
    const T *Y, int64_t S, const T *R, const int64_t *rows, int64_t W, const T *x, int64_t N, T *q)
{
    const int64_t row = (int64_t)g.paths * g.d1 * g.mul; /* between m2 rows of the sums */
    const T *xg = x + N * g.x_off; /* the group's input block, a row of x_row per atom */
    const int64_t x_row = (int64_t)g.d1 * g.mul;
    for (int p = 0; p < g.paths; ++p) {
        for (int m1 = 0; m1 < g.d1; ++m1) {
            T *qpm = q + g.q_off + (int64_t)(p * g.d1 + m1) * g.mul;
            const int64_t r_col = g.w_off + (int64_t)p * g.mul, x_col = (int64_t)m1 * g.mul;
            int u0 = 0;
#define TILES(NT) CAT(forward_tiles, SUFFIX)(g, D2, NT, u0, i, K, count, senders, Y, S, R, rows, W, r_col, xg, \
                                             x_row, x_col, qpm, row)
            if (D2 <= 5) /* 4 x d2 accumulators in registers */
                for (; u0 + 4 * TF <= g.mul; u0 += 4 * TF) TILES(4);
            for (; u0 + 2 * TF <= g.mul; u0 += 2 * TF) TILES(2);
            for (; u0 + TF <= g.mul; u0 += TF) TILES(1);
#undef TILES
            for (; u0 < g.mul; ++u0) { /* channels left over when mul is no multiple of TF */
                T acc[MAX_DIM] = {0};
                for (int64_t k = 0; k < count; ++k) {
                    const int64_t e = i * K + k;
                    const T z = R[(rows ? rows[e] : e) * W + r_col + u0] * xg[senders[e] * x_row + x_col + u0];
                    for (int m2 = 0; m2 < D2; ++m2) acc[m2] += Y[e * S + g.y_off + m2] * z;
                }
                for (int m2 = 0; m2 < D2; ++m2) qpm[m2 * row + u0] = acc[m2];
            }
        }
    }
}

/* Backward, one group of edge e: with G the gradient of the receiver's sums,
 *   dz[p, m1, u] = sum_m2 Y[m2] G[m2, p, m1, u]          (dL/dz, z = R x)
 *   grad_Y[m2]  += sum_{p, m1, u} G[m2, p, m1, u] z[p, m1, u]
 *   grad_R[p, u]  = sum_m1 dz x[m1, u]    (each column of R belongs to one group)
 *   grad_x[m1, u] += sum_p dz R[p, u]     (groups share input blocks).
 * Per tile of channels, the d1 rows of x and of grad_x and the d2 accumulators of grad_Y stay
 * in registers (D1 and D2 compile-time constants where the caller can make them so). grad_R is
 * written (store WRITE), written around the caches (AROUND, see store_around_caches) or added
 * to (ADD). xs and gx: the sender's row of the group's input block in x and in grad_x. */
INLINE void CAT(backward_group, SUFFIX)(
    const group_t g, const int D2, const int D1, const T *y, const T *r, const T *xs, const T *G,
    T *gy, T *gr, T *gx, const store_t store)
{
    const int64_t row = (int64_t)g.paths * g.d1 * g.mul;
    VB acc[MAX_DIM];
    T tail[MAX_DIM];
    for (int m2 = 0; m2 < D2; ++m2) { acc[m2] = (VB){0}; tail[m2] = 0; }
    int u0 = 0;
    for (; u0 + TB <= g.mul; u0 += TB) {
        VB xv[MAX_DIM], gxv[MAX_DIM];
        for (int m1 = 0; m1 < D1; ++m1) {
            xv[m1] = *(const VB *)(xs + (int64_t)m1 * g.mul + u0);
            gxv[m1] = (VB){0};
        }
        for (int p = 0; p < g.paths; ++p) {
            const VB rv = *(const VB *)(r + g.w_off + (int64_t)p * g.mul + u0);
            VB grv = (VB){0};
            for (int m1 = 0; m1 < D1; ++m1) {
                const T *gpm = G + g.q_off + (int64_t)(p * D1 + m1) * g.mul + u0;
                const VB z = rv * xv[m1];
                VB dz = (VB){0};
                for (int m2 = 0; m2 < D2; ++m2) {
                    const VB gm = *(const VB *)(gpm + m2 * row);
                    dz += y[m2] * gm;
                    acc[m2] += gm * z;
                }
                grv += dz * xv[m1];
                gxv[m1] += dz * rv;
            }
            T *to = gr + g.w_off + (int64_t)p * g.mul + u0;
            if (store == ADD) *(VB *)to += grv;
            else if (store == AROUND) CAT(store_around_caches, SUFFIX)(to, grv);
            else *(VB *)to = grv;
        }
        for (int m1 = 0; m1 < D1; ++m1) *(VB *)(gx + (int64_t)m1 * g.mul + u0) += gxv[m1];
    }
    for (; u0 < g.mul; ++u0) { /* channels left over when mul is no multiple of TB */
        for (int p = 0; p < g.paths; ++p) {
            const T rp = r[g.w_off + (int64_t)p * g.mul + u0];
            T grp = 0;
            for (int m1 = 0; m1 < D1; ++m1) {
                const T xm = xs[(int64_t)m1 * g.mul + u0];
                const T *gpm = G + g.q_off + (int64_t)(p * D1 + m1) * g.mul + u0;
                T dz = 0;
                for (int m2 = 0; m2 < D2; ++m2) {
                    dz += y[m2] * gpm[m2 * row];
                    tail[m2] += gpm[m2 * row] * rp * xm;
                }
                grp += dz * xm;
                gx[(int64_t)m1 * g.mul + u0] += dz * rp;
            }
            if (store == ADD) gr[g.w_off + (int64_t)p * g.mul + u0] += grp;
            else gr[g.w_off + (int64_t)p * g.mul + u0] = grp;
        }
    }
    for (int m2 = 0; m2 < D2; ++m2) {
        T sum = tail[m2];
        for (int v = 0; v < TB; ++v) sum += acc[m2][v];
        gy[m2] += sum;
    }
}

/* The output of atom a (of N, in out) ← the coupling of its message sums q (see the top of the file). */
static void CAT(couple, SUFFIX)(const group_t *groups, const path_t *paths, int64_t n_paths, const T *coef,
                                const T *q, T *out, int64_t N, int64_t a)
{
    for (int64_t k = 0; k < n_paths; ++k) {
        const path_t P = paths[k];
        const group_t g = groups[P.group];
        const T *c = coef + P.coef_off;
        T *ok = out + N * P.out_off + a * P.d3 * P.out_stride + P.channel;
        for (int m3 = 0; m3 < P.d3; ++m3) {
            const T *cm = c + (int64_t)m3 * g.d2 * g.d1;
            int u0 = 0;
            for (; u0 + TF <= g.mul; u0 += TF) {
                VF acc = (VF){0};
                for (int m2 = 0; m2 < g.d2; ++m2)
                    for (int m1 = 0; m1 < g.d1; ++m1)
                        if (cm[m2 * g.d1 + m1] != 0)
                            acc += cm[m2 * g.d1 + m1]
                                 * *(const VF *)(q + g.q_off + ((int64_t)(m2 * g.paths + P.p) * g.d1 + m1) * g.mul + u0);
                *(VF *)(ok + (int64_t)m3 * P.out_stride + u0) = acc;
            }
            for (; u0 < g.mul; ++u0) {
                T acc = 0;
                for (int m2 = 0; m2 < g.d2; ++m2)
                    for (int m1 = 0; m1 < g.d1; ++m1)
                        acc += cm[m2 * g.d1 + m1] * q[g.q_off + ((int64_t)(m2 * g.paths + P.p) * g.d1 + m1) * g.mul + u0];
                ok[(int64_t)m3 * P.out_stride + u0] = acc;
            }
        }
    }
}

/* Its adjoint: the gradient G of atom a's message sums from the gradient grad_out of the output
 * (every element of G belongs to one path and is written). */
static void CAT(couple_transposed, SUFFIX)(const group_t *groups, const path_t *paths, int64_t n_paths,
                                           const T *coef, const T *grad_out, int64_t N, int64_t a, T *G)
{
    for (int64_t k = 0; k < n_paths; ++k) {
        const path_t P = paths[k];
        const group_t g = groups[P.group];
        const T *c = coef + P.coef_off;
        /* row m3 of the path's channels at ok + m3 * out_stride */
        const T *ok = grad_out + N * P.out_off + a * P.d3 * P.out_stride + P.channel;
        for (int m2 = 0; m2 < g.d2; ++m2) {
            for (int m1 = 0; m1 < g.d1; ++m1) {
                T *gk = G + g.q_off + ((int64_t)(m2 * g.paths + P.p) * g.d1 + m1) * g.mul;
                const T *cm = c + m2 * g.d1 + m1; /* coefficient of m3: cm[m3 * d2 * d1] */
                const int64_t stride = (int64_t)g.d2 * g.d1;
                int u0 = 0;
                for (; u0 + TF <= g.mul; u0 += TF) {
                    VF acc = (VF){0};
                    for (int m3 = 0; m3 < P.d3; ++m3)
                        if (cm[m3 * stride] != 0)
                            acc += cm[m3 * stride] * *(const VF *)(ok + (int64_t)m3 * P.out_stride + u0);
                    *(VF *)(gk + u0) = acc;
                }
                for (; u0 < g.mul; ++u0) {
                    T acc = 0;
                    for (int m3 = 0; m3 < P.d3; ++m3) acc += cm[m3 * stride] * ok[(int64_t)m3 * P.out_stride + u0];
                    gk[u0] = acc;
                }
            }
        }
    }
}

/* The output of atoms r0 .. r0+n-1 (overwritten) in out, the features of N atoms; x: those of
 * the N senders; work: threads * QD scratch, shares: n + 1 int64 scratch (how the receivers are
 * shared among the threads). */
void CAT(message_sums, SUFFIX)(
    int64_t n, int threads, int64_t K, const int64_t *counts, const int64_t *senders,
    const T *Y, int64_t S, const T *R, const int64_t *rows, int64_t W, const T *x, int64_t N,
    const group_t *groups, int64_t n_groups, int64_t QD, const path_t *paths, int64_t n_paths, const T *coef,
    T *out, int64_t r0, T *work, int64_t *shares)
{
    rows_t blocks[MAX_INPUT_BLOCKS];
    const int n_blocks = input_blocks(groups, n_groups, N, blocks);
    receiver_work(n, K, counts, NULL, 0, shares);
    #pragma omp parallel num_threads(threads)
    for (int64_t i = first_receiver(n, shares, THREAD, TEAM), end = first_receiver(n, shares, THREAD + 1, TEAM);
         i < end; ++i) {
        T *q = work + (int64_t)THREAD * QD;
        /* the rows of R and x of an edge lie anywhere in arrays larger than the caches: those
         * of the next receiver are asked for while this one computes (~7 % of a call) */
        if (i + 1 < n)
            for (int64_t k = 0; k < counts[i + 1]; ++k) {
                const int64_t e = (i + 1) * K + k;
                prefetch_rows(R + (rows ? rows[e] : e) * W, W * sizeof(T));
                for (int b = 0; b < n_blocks; ++b)
                    prefetch_rows(x + blocks[b].offset + senders[e] * blocks[b].width, blocks[b].width * sizeof(T));
            }
        for (int64_t gi = 0; gi < n_groups; ++gi) {
            const group_t g = groups[gi];
#define FORWARD(D2) CAT(forward_group, SUFFIX)(g, D2, i, K, counts[i], senders, Y, S, R, rows, W, x, N, q)
            switch (g.d2) {
                case 1: FORWARD(1); break;
                case 3: FORWARD(3); break;
                case 5: FORWARD(5); break;
                case 7: FORWARD(7); break;
                default: FORWARD(g.d2);
            }
#undef FORWARD
        }
        CAT(couple, SUFFIX)(groups, paths, n_paths, coef, q, out, N, r0 + i);
    }
}

/* Given grad_out = dL/dout (laid out as out), for receivers r0 .. r0+n-1: dL/dY (n*K, S),
 * overwritten (zero for empty slots), dL/dR in grad_R, and dL/dx added to the senders' rows of
 * grad_x (threads, N*D: an array laid out as x for each thread); work: threads * QD scratch.
 * With phases NULL, grad_R has one row per slot (W wide), overwritten (zero for empty slots).
 * Otherwise slot e's dL/dR goes to row grad_rows[e] of grad_R (the row of its pair of reverse
 * edges), and only the slots with phases[e] == phase are visited: phase 1 (one slot of each
 * pair, the call that also overwrites dL/dY) overwrites the row, phase 2 (the other slot) adds
 * to it. Each row is then written by one slot at a time, whatever thread runs it. shares: as for
 * the forward pass. */
void CAT(message_sums_backward, SUFFIX)(
    int64_t n, int threads, int64_t K, const int64_t *counts, const int64_t *senders,
    const T *Y, int64_t S, const T *R, const int64_t *rows, int64_t W, const T *x, int64_t N, int64_t D,
    const group_t *groups, int64_t n_groups, int64_t QD, const path_t *paths, int64_t n_paths, const T *coef,
    const T *grad_out, int64_t r0, T *work, T *grad_Y, T *grad_R, const int64_t *grad_rows,
    const int8_t *phases, int phase, T *grad_x, int64_t *shares)
{
    rows_t blocks[MAX_INPUT_BLOCKS];
    const int n_blocks = input_blocks(groups, n_groups, N, blocks);
    /* the groups' columns of R are disjoint; when they cover all W, a pair's row needs no zeros */
    int64_t covered = 0;
    for (int64_t gi = 0; gi < n_groups; ++gi) covered += (int64_t)groups[gi].paths * groups[gi].mul;
    const int zero_rows = covered < W;
    receiver_work(n, K, counts, phases, phase, shares);
    #pragma omp parallel num_threads(threads)
    {
        for (int64_t i = first_receiver(n, shares, THREAD, TEAM), end = first_receiver(n, shares, THREAD + 1, TEAM);
             i < end; ++i) {
            T *grad_x_thread = grad_x + (int64_t)THREAD * N * D;
            T *G = work + (int64_t)THREAD * QD;
            CAT(couple_transposed, SUFFIX)(groups, paths, n_paths, coef, grad_out, N, r0 + i, G);
            if (!phases || phase == 1) memset(grad_Y + i * K * S, 0, sizeof(T) * K * S);
            /* columns of R of no group, and empty slots, get zero */
            if (!phases) memset(grad_R + i * K * W, 0, sizeof(T) * K * W);
            for (int64_t k = slot_of_phase(phases, phase, i * K, 0, counts[i]); k < counts[i];) {
                const int64_t e = i * K + k;
                /* the next edge of this phase, whose rows are asked for (as in the forward pass) */
                k = slot_of_phase(phases, phase, i * K, k + 1, counts[i]);
                if (k < counts[i]) {
                    const int64_t next = i * K + k;
                    prefetch_rows(R + (rows ? rows[next] : next) * W, W * sizeof(T));
                    for (int b = 0; b < n_blocks; ++b)
                        prefetch_rows(x + blocks[b].offset + senders[next] * blocks[b].width,
                                      blocks[b].width * sizeof(T));
                    if (phases && phase == 2) /* (phase 1 writes around the caches) */
                        prefetch_rows_for_writing(grad_R + grad_rows[next] * W, W * sizeof(T));
                }
                T *gr = grad_R + (phases ? grad_rows[e] : e) * W;
                if (phases && phase == 1 && zero_rows) memset(gr, 0, sizeof(T) * W);
                /* a pair's row is read again a whole sweep later (phase 2): written around the caches */
                const store_t store = !phases ? WRITE : phase == 1 ? AROUND : ADD;
                for (int64_t gi = 0; gi < n_groups; ++gi) {
                    const group_t g = groups[gi];
                    /* the sender's row of the group's input block */
                    const int64_t x_row = N * g.x_off + senders[e] * g.d1 * g.mul;
#define BACKWARD(D2, D1) CAT(backward_group, SUFFIX)(g, D2, D1, Y + e * S + g.y_off, R + (rows ? rows[e] : e) * W, \
        x + x_row, G, grad_Y + e * S + g.y_off, gr, grad_x_thread + x_row, store)
#define BACKWARD_D1(D2) switch (g.d1) { \
                        case 1: BACKWARD(D2, 1); break; \
                        case 3: BACKWARD(D2, 3); break; \
                        case 5: BACKWARD(D2, 5); break; \
                        case 7: BACKWARD(D2, 7); break; \
                        default: BACKWARD(D2, g.d1); }
                    switch (g.d2) {
                        case 1: BACKWARD_D1(1); break;
                        case 3: BACKWARD_D1(3); break;
                        case 5: BACKWARD_D1(5); break;
                        case 7: BACKWARD_D1(7); break;
                        default: BACKWARD(g.d2, g.d1);
                    }
#undef BACKWARD_D1
#undef BACKWARD
                }
            }
        }
        store_fence(); /* this thread's rows written around the caches, for whoever reads them next */
    }
}

#undef VF
#undef VB
#undef TF
#undef TB
#endif
