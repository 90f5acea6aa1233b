/* Compiled CPU path of the cell list of neighbors.py: the same edges, from periodic bins.
 *
 * Built on first use by ase_equivariant/compiled.py (no Python or torch headers) and called
 * through ctypes. neighbors.py validates the input, decides the border edges (below) with the
 * exact formula of edge_vectors, and uses its pure-torch search (which GPUs run) where this
 * library cannot be built.
 *
 * Coordinates: positions r (n, 3) in Å; the cell's rows are the lattice vectors; `inverse`
 * (3, 3) is the inverse of the effective basis (the cell's periodic rows, an orthonormal
 * completion along the non-periodic axes), so f = r @ inverse holds fractional coordinates along
 * periodic axes and lengths in Å along the others. Two atoms within a distance c differ by at
 * most c * |inverse[:, k]| = c / height_k in f_k: that bounds the bins searched along axis k.
 *
 * Every atom is wrapped into the cell (w = floor(f) along periodic axes, 0 along the others)
 * and sorted into a grid of bins. Along a periodic axis the grid repeats: bin c of an unbounded
 * row is bin c mod n with the lattice shift floor(c / n), so every periodic image within reach is
 * met exactly once, however small the cell is against the cutoff. Along a non-periodic axis the
 * grid spans the atoms' extent. One axis (the "strip" axis, the one with most bins) is binned
 * finer, and a run of its bins with one lattice shift is one contiguous range of sorted atoms.
 *
 * An edge is (i, j, S) with D = r_j - r_i + S @ cell and S = shift + w_i - w_j. It is kept when
 * |D| < outer as measured here (in double, from the wrapped coordinates), and reported as a
 * border edge, for the caller to decide exactly, when also |D| >= inner. Edges come sorted by i.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* candidate slots measured at a time by the writing pass */
#define BLOCK 64

typedef struct {
    int64_t n_atoms, n[3], bins;
    int periodic[3], strip, across[2], self_interaction;
    double cell[3][3], reach[3], outer2, inner2;
    double *scaled;       /* (n_atoms, 3) coordinates in bins of each axis (atom order) */
    double *wrapped;      /* (n_atoms, 3) wrapped Cartesian coordinates (atom order) */
    int64_t *wrap;        /* (n_atoms, 3) w (atom order) */
    double *sorted_r;     /* (3, n_atoms) wrapped coordinates in bin order: x..., y..., z... */
    int64_t *sorted_atom; /* (n_atoms,) atom of each sorted slot */
    int64_t *own_slot;    /* (n_atoms,) sorted slot of each atom */
    int64_t *bin_start;   /* (bins + 1,) the slots of bin b are bin_start[b] .. bin_start[b+1] */
    int64_t *first;       /* (n_atoms + 1,) first edge of each atom, then the total */
    int64_t *first_border; /* (n_atoms + 1,) first border edge of each atom, then the total */
} search_t;

void cell_list_free(search_t *s)
{
    if (!s) return;
    free(s->scaled); free(s->wrapped); free(s->wrap); free(s->sorted_r); free(s->sorted_atom);
    free(s->own_slot); free(s->bin_start); free(s->first); free(s->first_border);
    free(s);
}

static int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((b - 1 - a) / b); }

/* Unbounded bins lo..hi of axis k within reach of an atom at `scaled` bins; along a
 * non-periodic axis clipped to the grid. */
static inline void window(const search_t *s, int k, double scaled, int64_t *lo, int64_t *hi)
{
    *lo = (int64_t)floor(scaled - s->reach[k]);
    *hi = (int64_t)floor(scaled + s->reach[k]);
    if (!s->periodic[k]) {
        if (*lo < 0) *lo = 0;
        if (*hi > s->n[k] - 1) *hi = s->n[k] - 1;
    }
}

/* The candidates of atom i. emit 0: count its edges and border edges into found[0], found[1].
 * emit 1: write them, from its first edge (and first border edge) on, into edge_index (2, E),
 * shifts (E, 3) and border (the indices of border edges). */
static void visit(const search_t *s, int64_t i, int emit, int64_t *found, int64_t *edge_index,
                  int64_t *shifts, int64_t *border, int64_t n_edges)
{
    const int a = s->across[0], b = s->across[1], st = s->strip;
    const int64_t n_atoms = s->n_atoms, own = s->own_slot[i];
    const double *x = s->sorted_r, *y = x + n_atoms, *z = y + n_atoms;
    const double *ri = s->wrapped + 3 * i;
    const int64_t *wi = s->wrap + 3 * i;
    int64_t lo[3], hi[3];
    for (int k = 0; k < 3; k++) window(s, k, s->scaled[3 * i + k], &lo[k], &hi[k]);
    int64_t edge = emit ? s->first[i] : 0, border_edge = emit ? s->first_border[i] : 0;
    int64_t count = 0, borders = 0;
    for (int64_t ca = lo[a]; ca <= hi[a]; ca++) {
        const int64_t sa = s->periodic[a] ? floor_div(ca, s->n[a]) : 0, ba = ca - sa * s->n[a];
        for (int64_t cb = lo[b]; cb <= hi[b]; cb++) {
            const int64_t sb = s->periodic[b] ? floor_div(cb, s->n[b]) : 0, bb = cb - sb * s->n[b];
            const int64_t row = (ba * s->n[b] + bb) * s->n[st];
            for (int64_t c = lo[st]; c <= hi[st];) {
                const int64_t ss = s->periodic[st] ? floor_div(c, s->n[st]) : 0;
                const int64_t last = s->periodic[st] && (ss + 1) * s->n[st] - 1 < hi[st]
                                         ? (ss + 1) * s->n[st] - 1 : hi[st];
                const int64_t q0 = s->bin_start[row + c - ss * s->n[st]];
                const int64_t q1 = s->bin_start[row + last - ss * s->n[st] + 1];
                c = last + 1;
                if (q0 == q1) continue;
                int64_t shift[3];
                shift[a] = sa; shift[b] = sb; shift[st] = ss;
                double o[3];
                for (int k = 0; k < 3; k++)
                    o[k] = shift[0] * s->cell[0][k] + shift[1] * s->cell[1][k]
                           + shift[2] * s->cell[2][k] - ri[k];
                const int unshifted = sa == 0 && sb == 0 && ss == 0;
                if (!emit) {
                    int64_t in = 0, out_of_core = 0;
                    for (int64_t q = q0; q < q1; q++) {
                        const double dx = x[q] + o[0], dy = y[q] + o[1], dz = z[q] + o[2];
                        const double d2 = dx * dx + dy * dy + dz * dz;
                        in += d2 < s->outer2;
                        out_of_core += (d2 < s->outer2) & (d2 >= s->inner2);
                    }
                    if (unshifted && !s->self_interaction && q0 <= own && own < q1) {
                        in -= 1;  /* the atom itself, at distance 0 */
                        out_of_core -= 0.0 >= s->inner2;
                    }
                    count += in;
                    borders += out_of_core;
                    continue;
                }
                /* the slots within reach, gathered without branches a block at a time, then
                 * written out */
                for (int64_t q_block = q0; q_block < q1; q_block += BLOCK) {
                    const int64_t q_end = q_block + BLOCK < q1 ? q_block + BLOCK : q1;
                    int64_t hits[BLOCK];
                    int n_hits = 0;
                    for (int64_t q = q_block; q < q_end; q++) {
                        const double dx = x[q] + o[0], dy = y[q] + o[1], dz = z[q] + o[2];
                        hits[n_hits] = q;
                        n_hits += dx * dx + dy * dy + dz * dz < s->outer2;
                    }
                    for (int h = 0; h < n_hits; h++) {
                        const int64_t q = hits[h];
                        if (q == own && unshifted && !s->self_interaction) continue;
                        const int64_t j = s->sorted_atom[q];
                        const int64_t *wj = s->wrap + 3 * j;
                        edge_index[edge] = i;
                        edge_index[n_edges + edge] = j;
                        for (int k = 0; k < 3; k++) shifts[3 * edge + k] = shift[k] + wi[k] - wj[k];
                        const double dx = x[q] + o[0], dy = y[q] + o[1], dz = z[q] + o[2];
                        if (dx * dx + dy * dy + dz * dz >= s->inner2) border[border_edge++] = edge;
                        edge++;
                    }
                }
            }
        }
    }
    if (!emit) {
        found[0] = count;
        found[1] = borders;
    }
}

/* Bins along axis k of extent `extent` (Å) for `per_cutoff` bins per `cutoff`. */
static int64_t bins_along(double extent, double cutoff, double per_cutoff)
{
    const double n = floor(per_cutoff * extent / cutoff);
    return n < 1 ? 1 : n > 1e9 ? (int64_t)1e9 : (int64_t)n;
}

/* Sort the atoms into bins and count the edges of each. Returns the search (NULL when out of
 * memory), with the number of edges and of border edges in totals[0] and totals[1]; hand it to
 * cell_list_fill, or cell_list_free. bin_cutoff: the reach of the bins (a little above outer,
 * for the rounding of f); per_cutoff, strip_per_cutoff: bins per bin_cutoff across the strip
 * axis and along it; the grid holds at most max(max_bins, 1) bins. */
search_t *cell_list_search(int64_t n_atoms, const double *positions, const double *cell,
                           const double *inverse, const int32_t *periodic, double outer,
                           double inner, double bin_cutoff, double per_cutoff,
                           double strip_per_cutoff, int64_t max_bins, int self_interaction,
                           int threads, int64_t *totals)
{
    search_t *s = calloc(1, sizeof(search_t));
    if (!s) return NULL;
    s->n_atoms = n_atoms;
    s->self_interaction = self_interaction;
    s->outer2 = outer * outer;
    s->inner2 = inner > 0 ? inner * inner : 0;
    for (int k = 0; k < 3; k++) {
        s->periodic[k] = periodic[k];
        for (int l = 0; l < 3; l++) s->cell[k][l] = cell[3 * k + l];
    }
    s->scaled = malloc(3 * n_atoms * sizeof(double));
    s->wrapped = malloc(3 * n_atoms * sizeof(double));
    s->wrap = malloc(3 * n_atoms * sizeof(int64_t));
    s->sorted_r = malloc(3 * n_atoms * sizeof(double));
    s->sorted_atom = malloc(n_atoms * sizeof(int64_t));
    s->own_slot = malloc(n_atoms * sizeof(int64_t));
    s->first = malloc((n_atoms + 1) * sizeof(int64_t));
    s->first_border = malloc((n_atoms + 1) * sizeof(int64_t));
    if (!s->scaled || !s->wrapped || !s->wrap || !s->sorted_r || !s->sorted_atom || !s->own_slot
        || !s->first || !s->first_border) {
        cell_list_free(s);
        return NULL;
    }

    /* f = r @ inverse into `scaled`; wraps and wrapped coordinates; the extent of each axis */
    double low[3] = {INFINITY, INFINITY, INFINITY}, high[3] = {-INFINITY, -INFINITY, -INFINITY};
    for (int64_t i = 0; i < n_atoms; i++) {
        const double *r = positions + 3 * i;
        double *f = s->scaled + 3 * i, *w = s->wrapped + 3 * i;
        for (int k = 0; k < 3; k++) {
            f[k] = r[0] * inverse[k] + r[1] * inverse[3 + k] + r[2] * inverse[6 + k];
            const double fl = periodic[k] ? floor(f[k]) : 0.0;
            s->wrap[3 * i + k] = (int64_t)fl;
            f[k] -= fl;
            if (f[k] < low[k]) low[k] = f[k];
            if (f[k] > high[k]) high[k] = f[k];
        }
        for (int l = 0; l < 3; l++)
            w[l] = r[l] - s->wrap[3 * i] * cell[l] - s->wrap[3 * i + 1] * cell[3 + l]
                   - s->wrap[3 * i + 2] * cell[6 + l];
    }
    double extent[3];
    for (int k = 0; k < 3; k++) {
        const double norm = sqrt(inverse[k] * inverse[k] + inverse[3 + k] * inverse[3 + k]
                                 + inverse[6 + k] * inverse[6 + k]);
        extent[k] = periodic[k] ? 1.0 / norm : high[k] - low[k];  /* Å */
    }

    /* bins: per_cutoff per bin_cutoff, finer along the strip axis, at most max_bins */
    int strip = 0;
    for (int k = 0; k < 3; k++) {
        s->n[k] = extent[k] > 0 ? bins_along(extent[k], bin_cutoff, per_cutoff) : 1;
        if (s->n[k] > s->n[strip]) strip = k;
    }
    if (extent[strip] > 0) s->n[strip] = bins_along(extent[strip], bin_cutoff, strip_per_cutoff);
    if (max_bins < 1) max_bins = 1;
    while ((double)s->n[0] * s->n[1] * s->n[2] > max_bins) {
        int k = 0;
        for (int l = 1; l < 3; l++) if (s->n[l] > s->n[k]) k = l;
        s->n[k] = s->n[k] / 2 > 1 ? s->n[k] / 2 : 1;
    }
    s->strip = strip;
    s->across[0] = strip == 0 ? 1 : 0;
    s->across[1] = strip == 2 ? 1 : 2;
    s->bins = s->n[0] * s->n[1] * s->n[2];
    for (int k = 0; k < 3; k++) {
        s->reach[k] = extent[k] > 0 ? bin_cutoff * s->n[k] / extent[k] : 0;
        /* coordinates in bins: f in [0, 1) along periodic axes, from the low end in Å along
         * the others */
        const double scale = periodic[k] ? s->n[k] : extent[k] > 0 ? s->n[k] / extent[k] : 0;
        const double origin = periodic[k] ? 0 : low[k];
        for (int64_t i = 0; i < n_atoms; i++)
            s->scaled[3 * i + k] = (s->scaled[3 * i + k] - origin) * scale;
    }

    /* counting sort by bin: (across[0], across[1], strip), the strip axis fastest */
    s->bin_start = calloc(s->bins + 1, sizeof(int64_t));
    if (!s->bin_start) {
        cell_list_free(s);
        return NULL;
    }
    const int a = s->across[0], b = s->across[1];
    for (int64_t i = 0; i < n_atoms; i++) {
        int64_t bin[3];
        for (int k = 0; k < 3; k++) {
            const int64_t c = (int64_t)floor(s->scaled[3 * i + k]);
            bin[k] = c < 0 ? 0 : c >= s->n[k] ? s->n[k] - 1 : c;
        }
        s->own_slot[i] = (bin[a] * s->n[b] + bin[b]) * s->n[strip] + bin[strip];  /* its bin */
        s->bin_start[s->own_slot[i] + 1]++;
    }
    for (int64_t bin = 0; bin < s->bins; bin++) s->bin_start[bin + 1] += s->bin_start[bin];
    for (int64_t i = 0; i < n_atoms; i++) {
        const int64_t slot = s->bin_start[s->own_slot[i]]++;
        s->own_slot[i] = slot;
        s->sorted_atom[slot] = i;
        for (int k = 0; k < 3; k++) s->sorted_r[k * n_atoms + slot] = s->wrapped[3 * i + k];
    }
    for (int64_t bin = s->bins; bin > 0; bin--) s->bin_start[bin] = s->bin_start[bin - 1];
    s->bin_start[0] = 0;

    /* count the edges of every atom, then the first edge of each */
    #pragma omp parallel for num_threads(threads) schedule(dynamic, 64)
    for (int64_t i = 0; i < n_atoms; i++) {
        int64_t found[2];
        visit(s, i, 0, found, NULL, NULL, NULL, 0);
        s->first[i + 1] = found[0];
        s->first_border[i + 1] = found[1];
    }
    s->first[0] = s->first_border[0] = 0;
    for (int64_t i = 0; i < n_atoms; i++) {
        s->first[i + 1] += s->first[i];
        s->first_border[i + 1] += s->first_border[i];
    }
    totals[0] = s->first[n_atoms];
    totals[1] = s->first_border[n_atoms];
    return s;
}

/* Write the edges counted by cell_list_search into edge_index (2, E), shifts (E, 3) and border
 * (B,), the indices of the border edges (E, B: its totals), then free the search. */
void cell_list_fill(search_t *s, int threads, int64_t *edge_index, int64_t *shifts,
                    int64_t *border)
{
    const int64_t n_edges = s->first[s->n_atoms];
    #pragma omp parallel for num_threads(threads) schedule(dynamic, 64)
    for (int64_t i = 0; i < s->n_atoms; i++)
        visit(s, i, 1, NULL, edge_index, shifts, border, n_edges);
    cell_list_free(s);
}

/* Remove the edges `removed` (R indices, ascending) from edge_index (2, E) and shifts (E, 3),
 * in place: afterwards the first 2 (E - R) entries of edge_index are the (2, E - R) array of the
 * kept edges, in their order, and the first E - R rows of shifts are theirs. */
void cell_list_remove(int64_t n_edges, int64_t *edge_index, int64_t *shifts,
                      const int64_t *removed, int64_t n_removed)
{
    const int64_t kept = n_edges - n_removed;
    int64_t *i_row = edge_index, *j_from = edge_index + n_edges, *j_to = edge_index + kept;
    int64_t r = 0, to = 0;
    for (int64_t e = 0; e < n_edges; e++) {
        if (r < n_removed && e == removed[r]) {
            r++;
            continue;
        }
        i_row[to] = i_row[e];
        for (int k = 0; k < 3; k++) shifts[3 * to + k] = shifts[3 * e + k];
        to++;
    }
    /* the second row moves forward to its new start; written slots never pass unread ones */
    for (int64_t e = 0, r = 0, to = 0; e < n_edges; e++) {
        if (r < n_removed && e == removed[r]) {
            r++;
            continue;
        }
        j_to[to++] = j_from[e];
    }
}
