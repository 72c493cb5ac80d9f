/* Attention over packed variable-length sequences on CPU (bf16 or fp32 in and out, fp32 inside), with
   dropout on the probabilities, forward and backward. Queries, keys and values stay in the packed
   [tokens, heads * head_size] layout the linear layers produce; `q_starts` / `k_starts` give each
   sequence's first row (flash-attention's cu_seqlens), so no padded [batch, heads, length, length] tensors,
   key mask or layout copies exist. For short sequences (SST-2 averages 13 tokens) the padded path spent its
   time in per-matrix overheads: oneDNN's batched matmul on 384 tiny matrices per call, bf16 softmax,
   separate dropout and copy passes.
   One task is one (sequence, head); tasks write disjoint rows and columns, so they need no locks. The
   forward keeps each query row's softmax statistics (maximum score, 1 / sum of exponentials), and the
   backward recomputes the probabilities from them, as FlashAttention does. Dropout bits come from
   random_bits.h, counted per (query row, head, key), so the backward redraws the forward's mask instead
   of storing it, and the result does not depend on the thread count. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "fast_math.h"
#include "random_bits.h"

#define KEY_BITS 20 /* key positions per (query row, head) in the dropout counter: sequences up to 2^20 */

typedef struct {
    const void *q, *k, *v; /* packed, contiguous [rows, heads * head_size] */
    int64_t heads, head_size;
    const int64_t *q_starts, *k_starts;
    float scale, drop_scale;
    uint32_t threshold; /* round(p * 65536); 0: no dropout */
    uint64_t seed;
} geometry;

/* The task functions are force-inlined into callers with a constant `bf16`, so each element type gets its
   own branch-free, vectorized copy. */
#define SPECIALIZED static inline __attribute__((always_inline))

SPECIALIZED float load(const void *base, int bf16, int64_t i) {
    return bf16 ? bf16_to_float(((const uint16_t *)base)[i]) : ((const float *)base)[i];
}

SPECIALIZED void store(void *base, int bf16, int64_t i, float x) {
    if (bf16) ((uint16_t *)base)[i] = float_to_bf16(x);
    else ((float *)base)[i] = x;
}

SPECIALIZED void load_row(const void *x, int bf16, int64_t offset, int64_t d, float *restrict out) {
    for (int64_t c = 0; c < d; c++) out[c] = load(x, bf16, offset + c);
}

/* Rows [start, start + n) of head h as fp32 [n][dp], zeros past column d. */
SPECIALIZED void load_rows(const void *x, int bf16, int64_t stride, int64_t start, int64_t n, int64_t h, int64_t d,
                           int64_t dp, float *restrict out) {
    for (int64_t r = 0; r < n; r++) {
        load_row(x, bf16, (start + r) * stride + h * d, d, out + r * dp);
        for (int64_t c = d; c < dp; c++) out[r * dp + c] = 0.0f;
    }
}

/* The same rows transposed, as [d][width], zeros past column n. */
SPECIALIZED void load_columns(const void *x, int bf16, int64_t stride, int64_t start, int64_t n, int64_t h,
                              int64_t d, int64_t width, float *restrict out) {
    for (int64_t c = 0; c < d; c++)
        for (int64_t r = n; r < width; r++) out[c * width + r] = 0.0f;
    for (int64_t r = 0; r < n; r++)
        for (int64_t c = 0; c < d; c++) out[c * width + r] = load(x, bf16, (start + r) * stride + h * d + c);
}

/* The products below work on blocks of ROWS query rows and LANES columns, with GCC's vector types (AVX-512
   registers where the machine has them, narrower ones otherwise) and their sums in registers: one load
   feeds ROWS multiply-adds. Written as plain loops with sums in memory, the kernel took 2.3x as long. */
#define LANES 16
#define ROWS 4
#define PADDED(n) (((n) + LANES - 1) / LANES * LANES)
typedef float lanes __attribute__((vector_size(LANES * sizeof(float))));

static inline lanes load_lanes(const float *p) {
    lanes v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void store_lanes(float *p, lanes v) { memcpy(p, &v, sizeof v); }

/* out[r][c] = scale * sum_k a[r][k] * b[k][c] for r < ROWS and c < cols (a multiple of LANES). */
static inline void block_product(const float *restrict a, int64_t a_stride, int64_t inner, const float *restrict b,
                                 int64_t b_stride, int64_t cols, float scale, float *restrict out,
                                 int64_t out_stride) {
    for (int64_t c = 0; c < cols; c += LANES) {
        lanes s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
        for (int64_t k = 0; k < inner; k++) {
            const lanes x = load_lanes(b + k * b_stride + c);
            s0 += a[k] * x;
            s1 += a[a_stride + k] * x;
            s2 += a[2 * a_stride + k] * x;
            s3 += a[3 * a_stride + k] * x;
        }
        store_lanes(out + c, s0 * scale);
        store_lanes(out + out_stride + c, s1 * scale);
        store_lanes(out + 2 * out_stride + c, s2 * scale);
        store_lanes(out + 3 * out_stride + c, s3 * scale);
    }
}

/* out[j][c] += sum_r a[r][j] * b[r][c] for j < n and c < cols (a multiple of LANES): a block's share of a
   transposed product, accumulated over the blocks. */
static inline void block_accumulate(const float *restrict a, int64_t a_stride, int64_t n, const float *restrict b,
                                    int64_t b_stride, int64_t cols, float *restrict out) {
    for (int64_t c = 0; c < cols; c += LANES) {
        const lanes b0 = load_lanes(b + c), b1 = load_lanes(b + b_stride + c), b2 = load_lanes(b + 2 * b_stride + c),
                    b3 = load_lanes(b + 3 * b_stride + c);
        for (int64_t j = 0; j < n; j++) {
            lanes o = load_lanes(out + j * cols + c);
            o += a[j] * b0 + a[a_stride + j] * b1 + a[2 * a_stride + j] * b2 + a[3 * a_stride + j] * b3;
            store_lanes(out + j * cols + c, o);
        }
    }
}

/* keep[j] = drop_scale where key j (< n) survives dropout, else 0 */
static inline void dropout_scales(const geometry *g, int64_t row, int64_t h, int64_t n, int64_t width,
                                  float *restrict keep) {
    const uint64_t base = (uint64_t)(row * g->heads + h) << KEY_BITS, seed = g->seed;
    const uint32_t threshold = g->threshold;
    const float scale = g->drop_scale;
#pragma omp simd
    for (int64_t j = 0; j < width; j++) {
        keep[j] = j < n && random16(seed, base + (uint64_t)j) >= threshold ? scale : 0.0f;
    }
}

/* Rows i0 .. i0 + ROWS of a task's queries (and the same rows of another packed tensor) as fp32 [ROWS][dp],
   zeros in the rows past the sequence. */
SPECIALIZED void load_block(const void *x, int bf16, int64_t stride, int64_t first, int64_t rows, int64_t h,
                            int64_t d, int64_t dp, float *restrict out) {
    memset(out, 0, sizeof(float) * (size_t)(ROWS * dp));
    for (int64_t r = 0; r < rows; r++) load_row(x, bf16, (first + r) * stride + h * d, d, out + r * dp);
}

/* Softmax statistics of one row of scores s (length width, n real): p = exp(s - max) in place, zeros past n;
   returns 1 / sum(p). */
static inline float exponentiate(float *restrict s, int64_t n, int64_t width, float max) {
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < width; j++) {
        s[j] = j < n ? exp_nonpositive(s[j] - max) : 0.0f;
        sum += s[j];
    }
    return 1.0f / sum;
}

SPECIALIZED void forward_task(const geometry *g, int bf16, int64_t s, int64_t h, void *out, float *stats) {
    const int64_t d = g->head_size, dp = PADDED(d), hidden = g->heads * d;
    const int64_t q0 = g->q_starts[s], lq = g->q_starts[s + 1] - q0;
    const int64_t k0 = g->k_starts[s], lk = g->k_starts[s + 1] - k0, width = PADDED(lk);
    if (lq <= 0 || lk <= 0) return;
    float *kt = malloc(sizeof(float) * (size_t)(width * d + lk * dp + 2 * ROWS * width + 2 * ROWS * dp));
    float *v = kt + width * d, *p = v + lk * dp, *keep = p + ROWS * width, *q = keep + ROWS * width, *o = q + ROWS * dp;
    load_columns(g->k, bf16, hidden, k0, lk, h, d, width, kt);
    load_rows(g->v, bf16, hidden, k0, lk, h, d, dp, v);
    for (int64_t i0 = 0; i0 < lq; i0 += ROWS) {
        const int64_t rows = lq - i0 < ROWS ? lq - i0 : ROWS;
        load_block(g->q, bf16, hidden, q0 + i0, rows, h, d, dp, q);
        block_product(q, dp, d, kt, width, width, g->scale, p, width);
        for (int64_t r = 0; r < ROWS; r++) {
            float *pr = p + r * width, *kr = keep + r * width;
            if (r >= rows) {
                memset(pr, 0, sizeof(float) * (size_t)width);
                continue;
            }
            float max = pr[0];
            for (int64_t j = 1; j < lk; j++) max = pr[j] > max ? pr[j] : max;
            const float inverse = exponentiate(pr, lk, width, max);
            float *row_stats = stats + 2 * ((q0 + i0 + r) * g->heads + h);
            row_stats[0] = max;
            row_stats[1] = inverse;
            dropout_scales(g, q0 + i0 + r, h, lk, width, kr);
#pragma omp simd
            for (int64_t j = 0; j < width; j++) pr[j] *= inverse * kr[j];
        }
        block_product(p, width, lk, v, dp, dp, 1.0f, o, dp);
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < d; c++) store(out, bf16, (q0 + i0 + r) * hidden + h * d + c, o[r * dp + c]);
    }
    free(kt);
}

SPECIALIZED void backward_task(const geometry *g, int bf16, int64_t s, int64_t h, const void *grad_out,
                               const float *stats, void *grad_q, void *grad_k, void *grad_v) {
    const int64_t d = g->head_size, dp = PADDED(d), hidden = g->heads * d;
    const int64_t q0 = g->q_starts[s], lq = g->q_starts[s + 1] - q0;
    const int64_t k0 = g->k_starts[s], lk = g->k_starts[s + 1] - k0, width = PADDED(lk);
    if (lq <= 0 || lk <= 0) return;
    float *kt = malloc(sizeof(float) * (size_t)(2 * width * d + 3 * lk * dp + 4 * ROWS * width + 3 * ROWS * dp));
    float *vt = kt + width * d, *k = vt + width * d, *dk = k + lk * dp, *dv = dk + lk * dp;
    float *p = dv + lk * dp, *keep = p + ROWS * width, *dw = keep + ROWS * width, *ds = dw + ROWS * width;
    float *q = ds + ROWS * width, *dout = q + ROWS * dp, *dq = dout + ROWS * dp;
    load_columns(g->k, bf16, hidden, k0, lk, h, d, width, kt);
    load_columns(g->v, bf16, hidden, k0, lk, h, d, width, vt);
    load_rows(g->k, bf16, hidden, k0, lk, h, d, dp, k);
    memset(dk, 0, sizeof(float) * (size_t)(2 * lk * dp));
    for (int64_t i0 = 0; i0 < lq; i0 += ROWS) {
        const int64_t rows = lq - i0 < ROWS ? lq - i0 : ROWS;
        load_block(g->q, bf16, hidden, q0 + i0, rows, h, d, dp, q);
        load_block(grad_out, bf16, hidden, q0 + i0, rows, h, d, dp, dout);
        block_product(q, dp, d, kt, width, width, g->scale, p, width);
        block_product(dout, dp, d, vt, width, width, 1.0f, dw, width); /* dw[j] = dout . v_j */
        for (int64_t r = 0; r < ROWS; r++) {
            /* p: the probabilities; w (kept in p's place after ds): after dropout; dw -> dp: the gradient of
               the probabilities before dropout; ds: of the scores before scaling */
            float *pr = p + r * width, *kr = keep + r * width, *dwr = dw + r * width, *dsr = ds + r * width;
            if (r >= rows) {
                memset(pr, 0, sizeof(float) * (size_t)width);
                memset(dsr, 0, sizeof(float) * (size_t)width);
                continue;
            }
            const float *row_stats = stats + 2 * ((q0 + i0 + r) * g->heads + h);
            const float inverse = row_stats[1];
            exponentiate(pr, lk, width, row_stats[0]);
            dropout_scales(g, q0 + i0 + r, h, lk, width, kr);
            float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (int64_t j = 0; j < width; j++) {
                pr[j] *= inverse;
                dwr[j] *= kr[j];
                dot += pr[j] * dwr[j];
            }
#pragma omp simd
            for (int64_t j = 0; j < width; j++) {
                dsr[j] = pr[j] * (dwr[j] - dot) * g->scale;
                pr[j] *= kr[j];
            }
        }
        block_accumulate(p, width, lk, dout, dp, dp, dv);
        block_accumulate(ds, width, lk, q, dp, dp, dk);
        block_product(ds, width, lk, k, dp, dp, 1.0f, dq, dp);
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < d; c++) store(grad_q, bf16, (q0 + i0 + r) * hidden + h * d + c, dq[r * dp + c]);
    }
    for (int64_t r = 0; r < lk; r++)
        for (int64_t c = 0; c < d; c++) {
            store(grad_k, bf16, (k0 + r) * hidden + h * d + c, dk[r * dp + c]);
            store(grad_v, bf16, (k0 + r) * hidden + h * d + c, dv[r * dp + c]);
        }
    free(kt);
}

/* Sequences of very different lengths: dynamic scheduling keeps both threads busy. */
void attention_forward(int64_t sequences, int64_t heads, int64_t head_size, const int64_t *q_starts,
                       const int64_t *k_starts, const void *q, const void *k, const void *v, int bf16, float scale,
                       uint32_t threshold, float drop_scale, uint64_t seed, void *out, float *stats, int threads) {
    const geometry g = {q, k, v, heads, head_size, q_starts, k_starts, scale, drop_scale, threshold, seed};
#pragma omp parallel for schedule(dynamic) num_threads(threads)
    for (int64_t task = 0; task < sequences * heads; task++) {
        if (bf16) forward_task(&g, 1, task / heads, task % heads, out, stats);
        else forward_task(&g, 0, task / heads, task % heads, out, stats);
    }
}

void attention_backward(int64_t sequences, int64_t heads, int64_t head_size, const int64_t *q_starts,
                        const int64_t *k_starts, const void *q, const void *k, const void *v, int bf16, float scale,
                        uint32_t threshold, float drop_scale, uint64_t seed, const void *grad_out, const float *stats,
                        void *grad_q, void *grad_k, void *grad_v, int threads) {
    const geometry g = {q, k, v, heads, head_size, q_starts, k_starts, scale, drop_scale, threshold, seed};
#pragma omp parallel for schedule(dynamic) num_threads(threads)
    for (int64_t task = 0; task < sequences * heads; task++) {
        if (bf16) backward_task(&g, 1, task / heads, task % heads, grad_out, stats, grad_q, grad_k, grad_v);
        else backward_task(&g, 0, task / heads, task % heads, grad_out, stats, grad_q, grad_k, grad_v);
    }
}
