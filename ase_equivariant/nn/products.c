/* Dense matrix products c = a @ b for the tall, thin products of the radial MLPs and linear layers.
 *
 * Built on first use by ase_equivariant/nn/products.py (C with GCC's vector extensions; no
 * Python or torch headers) and called through ctypes on contiguous row-major arrays:
 * a (P, K), b (K, W), c (P, W), P large (one row per pair of atoms, or per atom and component),
 * K and W at most ~1000, W a multiple of the vectors' length.
 * These shapes are far from the square ones BLAS libraries tune for: MKL runs
 * (18144, 64) @ (64, 960) at about half its square sgemm rate on an AVX-512 processor.
 * block_products runs the several products of a linear layer in one call (on a molecule, the
 * cost of a call and of starting threads per product was more than their arithmetic).
 *
 * The work is shared among `threads` OpenMP threads in contiguous ranges of tiles of RT rows
 * of c. A tile of RT rows by CT vectors of columns is summed in registers over k, with a row of
 * b (CT vectors, read from the second-level cache where b fits: it is at most ~250 KB here) and
 * one number of each row of a (from the first-level cache) at a time: every element of c is
 * one thread's sum over k = 0 .. K-1 in that order, so results do not depend on the number of
 * threads. With `stream`, vectors of c are stored around the caches (for outputs larger than
 * the caches, which a cached store would first read from memory).
 *
 * The file is compiled once: it includes itself twice, for float (suffix f32) and double (f64).
 */
#ifndef T
#include <stdint.h>
#ifdef __AVX__
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#define INLINE static inline __attribute__((always_inline))
#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)

/* A vector of 64 bytes where the processor has AVX-512 (32 such registers), else of 32. */
#ifdef __AVX512F__
#define VECTOR_BYTES 64
#else
#define VECTOR_BYTES 32
#endif
/* The work of a tile of an entry of block_products' table: its multiply-adds and stores per row. */
#define COST(entry) (((entry)[3] + 1) * (entry)[4])
/* A tile: RT rows of CT vectors, 16 accumulators (measured against 6 x 4, 8 x 3 and 4 x 4). */
#define RT 8
#define CT 2

/* The vectors' size in bytes: products.py uses these products where it is 64 (AVX-512), the
 * processors where they were measured faster than torch's. */
int vector_bytes(void) { return VECTOR_BYTES; }

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

#else /* the products for one type T */

typedef T CAT(vector, SUFFIX) __attribute__((vector_size(VECTOR_BYTES), aligned(sizeof(T))));
#define V CAT(vector, SUFFIX)
#define LANES ((int)(VECTOR_BYTES / sizeof(T)))

/* *(V *)p = v, around the caches if `stream` and p is aligned to the vector's size. */
INLINE void CAT(store, SUFFIX)(T *p, V v, int stream)
{
#if defined(__AVX512F__)
    if (stream && ((uintptr_t)p & 63) == 0) {
        if (sizeof(T) == 4) _mm512_stream_ps((float *)p, (__m512)v);
        else _mm512_stream_pd((double *)p, (__m512d)v);
        return;
    }
#elif defined(__AVX__)
    if (stream && ((uintptr_t)p & 31) == 0) {
        if (sizeof(T) == 4) _mm256_stream_ps((float *)p, (__m256)v);
        else _mm256_stream_pd((double *)p, (__m256d)v);
        return;
    }
#else
    (void)stream;
#endif
    *(V *)p = v;
}

/* Rows 0 .. nr-1 (nr <= RT) and columns 0 .. NV*LANES-1 of c ← (with `add`: +=) those of a @ b
 * (the pointers at the tile's first row and column; rows of K in a, of W in b and c). NV
 * (1 .. CT), `add` and, for whole tiles, nr are compile-time constants. */
INLINE void CAT(tile, SUFFIX)(const int NV, const int nr, const T *a, int64_t K, const T *b, int64_t W, T *c,
                              int stream, const int add)
{
    V acc[RT][CT];
    for (int r = 0; r < RT; ++r)
        for (int v = 0; v < CT; ++v) acc[r][v] = add && r < nr && v < NV ? *(const V *)(c + r * W + v * LANES) : (V){0};
    for (int64_t k = 0; k < K; ++k) {
        V bk[CT];
        for (int v = 0; v < NV; ++v) bk[v] = *(const V *)(b + k * W + v * LANES);
        for (int r = 0; r < RT; ++r)
            if (r < nr) {
                const T ark = a[r * K + k];
                for (int v = 0; v < NV; ++v) acc[r][v] += ark * bk[v];
            }
    }
    for (int r = 0; r < nr; ++r)
        for (int v = 0; v < NV; ++v) CAT(store, SUFFIX)(c + r * W + v * LANES, acc[r][v], stream);
}

/* Rows 0 .. nr-1 (nr <= RT) of c ← (+=) those of a @ b, every column (W a multiple of LANES). */
INLINE void CAT(tile_row, SUFFIX)(const int nr, const T *a, int64_t K, const T *b, int64_t W, T *c, int stream,
                                  const int add)
{
    int64_t c0 = 0;
    for (; c0 + CT * LANES <= W; c0 += CT * LANES) CAT(tile, SUFFIX)(CT, nr, a, K, b + c0, W, c + c0, stream, add);
    for (; c0 < W; c0 += LANES) CAT(tile, SUFFIX)(1, nr, a, K, b + c0, W, c + c0, stream, add);
}

/* Tiles lo .. hi-1 of RT rows of the P rows of c ← (+=) those of a @ b. */
INLINE void CAT(tiles, SUFFIX)(int64_t lo, int64_t hi, int64_t P, int64_t K, int64_t W, const T *a, const T *b, T *c,
                               int stream, const int add)
{
    for (int64_t i = lo; i < hi; ++i) {
        const int64_t r0 = i * RT;
        if (r0 + RT <= P) CAT(tile_row, SUFFIX)(RT, a + r0 * K, K, b, W, c + r0 * W, stream, add);
        else CAT(tile_row, SUFFIX)((int)(P - r0), a + r0 * K, K, b, W, c + r0 * W, stream, add);
    }
}

/* The products of a block-diagonal map (a linear layer) on the features of N atoms, stored
 * block after block (ase_equivariant/nn/layout.py), in one call. Each of the n_entries rows
 * of `table` (7 int64: a_start, c_start, dim, K, W, b_offset, add) is a product
 *     c[N*c_start ..] as (N*dim, W)  ←  a[N*a_start ..] as (N*dim, K) @ b[b_offset ..] as (K, W),
 * or += with add = 1: an entry with add = 0 overwrites its block of c, the add = 1 entries
 * right after it add to the same block, in table order. The threads share the tiles of RT rows
 * of all overwritten blocks in contiguous ranges of about equal work (a tile's: (K + 1) * W
 * summed over its block's entries, the stores counted); each tile is one thread's, its entries
 * run in table order, so results do not depend on the number of threads. With `stream`, blocks
 * that no entry adds to are stored around the caches. */
void CAT(block_products, SUFFIX)(int64_t N, int64_t n_entries, const int64_t *table, const T *a, const T *b, T *c,
                                 int threads, int stream)
{
    int64_t total = 0; /* the work of all tiles */
    for (int64_t e = 0; e < n_entries; ++e) total += (N * table[7 * e + 2] + RT - 1) / RT * COST(table + 7 * e);
    #pragma omp parallel num_threads(threads)
    {
#ifdef _OPENMP
        const int64_t thread = omp_get_thread_num(), team = omp_get_num_threads();
#else
        const int64_t thread = 0, team = 1;
#endif
        /* this thread's tiles: those whose work starts in [begin, end) */
        const int64_t begin = total * thread / team, end = total * (thread + 1) / team;
        int64_t first = 0; /* where the current block's work starts */
        int streamed = 0;
        for (int64_t e = 0; e < n_entries && first < end; ++e) {
            if (table[7 * e + 6]) continue;
            const int64_t P = N * table[7 * e + 2], block_tiles = (P + RT - 1) / RT;
            int64_t tile_work = COST(table + 7 * e), f_end = e + 1;
            for (; f_end < n_entries && table[7 * f_end + 6]; ++f_end) tile_work += COST(table + 7 * f_end);
            if (tile_work == 0) continue; /* no columns: nothing to write */
            int64_t lo = begin > first ? (begin - first + tile_work - 1) / tile_work : 0;
            int64_t hi = end > first ? (end - first + tile_work - 1) / tile_work : 0;
            lo = lo < block_tiles ? lo : block_tiles;
            hi = hi < block_tiles ? hi : block_tiles;
            const int adds = f_end > e + 1;
            for (int64_t f = e; lo < hi && f < f_end; ++f) {
                const int64_t *t = table + 7 * f, K = t[3], W = t[4];
                const T *af = a + N * t[0], *bf = b + t[5];
                T *cf = c + N * t[1];
                if (f == e) CAT(tiles, SUFFIX)(lo, hi, P, K, W, af, bf, cf, stream && !adds, 0);
                else CAT(tiles, SUFFIX)(lo, hi, P, K, W, af, bf, cf, 0, 1);
            }
            streamed |= stream && !adds && lo < hi;
            first += block_tiles * tile_work;
        }
#ifdef __AVX__
        if (streamed) _mm_sfence(); /* this thread's stores around the caches, for whoever reads next */
#else
        (void)streamed;
#endif
    }
}

/* c (P, W) ← a (P, K) @ b (K, W), on `threads` threads (see the top of the file): one block of
 * one product, P rows of one number per "atom". */
void CAT(product, SUFFIX)(int64_t P, int64_t K, int64_t W, const T *a, const T *b, T *c, int threads, int stream)
{
    const int64_t entry[7] = {0, 0, 1, K, W, 0, 0};
    CAT(block_products, SUFFIX)(P, 1, entry, a, b, c, threads, stream);
}

#undef V
#undef LANES
#endif
