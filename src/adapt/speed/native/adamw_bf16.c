/* One pass of AdamW for bf16-master training on CPU: reads each weight's gradient (bf16 from the model's
   backward, or fp32), applies the clipping coefficient, updates the fp32 master and both moments, and writes
   the new weight back into the bf16 model, rounded as torch's copy_ rounds it. The unfused PyTorch path
   makes five passes over memory for this (gradient copy to fp32, norm, clipping, AdamW, copy to bf16); on a
   memory-bound CPU update that is most of its time. The arithmetic is torch.optim.AdamW's. */
#include <math.h>
#include <stdint.h>

#include "bf16.h"
#include "parallel.h"

/* A group of tensors laid end to end; the parallel range walks across their boundaries. */
typedef struct {
    int64_t count;
    const int64_t *sizes;
    float *const *params; /* fp32 masters */
    float *const *exp_avgs;
    float *const *exp_avg_sqs;
    const void *const *grads; /* bf16 (uint16) or fp32, per grad_is_bf16 */
    const int32_t *grad_is_bf16;
    uint16_t *const *outs; /* bf16 model weights to refresh, or NULL entries */
    float decay_factor;    /* 1 - lr * weight_decay */
    float grad_coef, beta1, beta2, eps, step_size, bias_correction2_sqrt;
    double sum_squares;
} tensors;

typedef void (*tensor_fn)(tensors *ts, int64_t t, int64_t lo, int64_t hi);

static void walk(tensors *ts, int64_t begin, int64_t end, tensor_fn fn) {
    int64_t offset = 0;
    for (int64_t t = 0; t < ts->count && offset < end; offset += ts->sizes[t], t++) {
        int64_t lo = begin > offset ? begin - offset : 0;
        int64_t hi = end - offset < ts->sizes[t] ? end - offset : ts->sizes[t];
        if (lo < hi) fn(ts, t, lo, hi);
    }
}

static int64_t total_size(const tensors *ts) {
    int64_t n = 0;
    for (int64_t t = 0; t < ts->count; t++) n += ts->sizes[t];
    return n;
}

/* The element loop, written once and instantiated per gradient type and output (so each copy vectorizes). */
#define ADAMW_LOOP(LOAD_GRAD, STORE)                                                  \
    for (int64_t i = lo; i < hi; i++) {                                               \
        float g = (LOAD_GRAD) * coef;                                                 \
        float param = p[i] * decay;                                                   \
        float mi = m[i] + one_minus_b1 * (g - m[i]);                                  \
        float vi = v[i] * b2 + one_minus_b2 * g * g;                                  \
        param -= step_size * mi / (sqrtf(vi) / bc2 + eps);                            \
        m[i] = mi;                                                                    \
        v[i] = vi;                                                                    \
        p[i] = param;                                                                 \
        STORE;                                                                        \
    }

static void adamw_tensor(tensors *ts, int64_t t, int64_t lo, int64_t hi) {
    float *restrict p = ts->params[t], *restrict m = ts->exp_avgs[t], *restrict v = ts->exp_avg_sqs[t];
    uint16_t *restrict out = ts->outs[t];
    const float coef = ts->grad_coef, b1 = ts->beta1, b2 = ts->beta2, eps = ts->eps;
    const float one_minus_b1 = 1.0f - b1, one_minus_b2 = 1.0f - b2;
    const float step_size = ts->step_size, bc2 = ts->bias_correction2_sqrt, decay = ts->decay_factor;
    const uint16_t *restrict gh = (const uint16_t *)ts->grads[t];
    const float *restrict gf = (const float *)ts->grads[t];
    if (ts->grad_is_bf16[t] && out) {
        ADAMW_LOOP(bf16_to_float(gh[i]), out[i] = float_to_bf16(param))
    } else if (ts->grad_is_bf16[t]) {
        ADAMW_LOOP(bf16_to_float(gh[i]), (void)0)
    } else if (out) {
        ADAMW_LOOP(gf[i], out[i] = float_to_bf16(param))
    } else {
        ADAMW_LOOP(gf[i], (void)0)
    }
}

/* Sum of squares with 16 float lanes per block of 1,024 elements (so it vectorizes), blocks summed in double. */
#define LANES 16
#define BLOCK 1024
#define SQUARES_LOOP(LOAD)                                                            \
    for (int64_t start = lo; start < hi; start += BLOCK) {                            \
        int64_t stop = start + BLOCK < hi ? start + BLOCK : hi, i = start;            \
        float lanes[LANES] = {0};                                                     \
        for (; i + LANES <= stop; i += LANES)                                         \
            for (int k = 0; k < LANES; k++) {                                         \
                float x = LOAD(i + k);                                                \
                lanes[k] += x * x;                                                    \
            }                                                                         \
        for (; i < stop; i++) {                                                       \
            float x = LOAD(i);                                                        \
            lanes[0] += x * x;                                                        \
        }                                                                             \
        for (int k = 0; k < LANES; k++) s += lanes[k];                                \
    }
#define LOAD_BF16(j) bf16_to_float(gh[j])
#define LOAD_FP32(j) gf[j]

static void squares_tensor(tensors *ts, int64_t t, int64_t lo, int64_t hi) {
    const uint16_t *restrict gh = (const uint16_t *)ts->grads[t];
    const float *restrict gf = (const float *)ts->grads[t];
    double s = 0.0;
    if (ts->grad_is_bf16[t]) {
        SQUARES_LOOP(LOAD_BF16)
    } else {
        SQUARES_LOOP(LOAD_FP32)
    }
#pragma omp atomic
    ts->sum_squares += s;
}

static void adamw_range(void *arg, int64_t lo, int64_t hi) { walk(arg, lo, hi, adamw_tensor); }
static void squares_range(void *arg, int64_t lo, int64_t hi) { walk(arg, lo, hi, squares_tensor); }

double adamw_sum_squares(int64_t count, const int64_t *sizes, const void *const *grads, const int32_t *grad_is_bf16,
                         int threads) {
    tensors ts = {.count = count, .sizes = sizes, .grads = grads, .grad_is_bf16 = grad_is_bf16};
    parallel_for(total_size(&ts), 1, threads, squares_range, &ts);
    return ts.sum_squares;
}

void adamw_step(int64_t count, const int64_t *sizes, float *const *params, float *const *exp_avgs,
                float *const *exp_avg_sqs, const void *const *grads, const int32_t *grad_is_bf16, uint16_t *const *outs,
                float decay_factor, float grad_coef, float beta1, float beta2, float eps, float step_size,
                float bias_correction2_sqrt, int threads) {
    tensors ts = {.count = count, .sizes = sizes, .params = params, .exp_avgs = exp_avgs, .exp_avg_sqs = exp_avg_sqs,
                  .grads = grads, .grad_is_bf16 = grad_is_bf16, .outs = outs, .decay_factor = decay_factor,
                  .grad_coef = grad_coef, .beta1 = beta1, .beta2 = beta2, .eps = eps, .step_size = step_size,
                  .bias_correction2_sqrt = bias_correction2_sqrt};
    parallel_for(total_size(&ts), 1, threads, adamw_range, &ts);
}
