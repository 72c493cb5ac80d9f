/* One pass of AdamW for bf16-master training on CPU: reads each weight's gradient (bf16 from the model's
   backward, or fp32), applies the clipping coefficient, updates the fp32 master and both moments, and writes
   the new weight back into the bf16 model, rounded to nearest even as torch's copy_ does. The unfused
   PyTorch path makes five passes over memory for this (gradient copy to fp32, norm, clip, AdamW, copy to
   bf16); on a memory-bound CPU update that is most of its time.

   Built by the Makefile into libadamw_bf16.so and called through ctypes (adapt/fused_adamw.py); no
   Python or PyTorch headers are needed. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    int64_t count;             /* number of tensors */
    const int64_t *sizes;      /* elements per tensor */
    float *const *params;      /* fp32 masters */
    float *const *exp_avgs;
    float *const *exp_avg_sqs;
    const void *const *grads;  /* bf16 (uint16) or fp32, per grad_is_bf16 */
    const int32_t *grad_is_bf16;
    uint16_t *const *outs;     /* bf16 model weights to refresh, or NULL entries */
    float decay_factor;        /* 1 - lr * weight_decay */
    float grad_coef, beta1, beta2, eps, step_size, bias_correction2_sqrt;
    int64_t begin, end;        /* this worker's share of the concatenated elements */
    double sum_squares;        /* norm pass output */
} job_t;

static inline float bf16_to_float(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t float_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  /* NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
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

static void adamw_range(const job_t *job, int64_t t, int64_t lo, int64_t hi) {
    float *restrict p = job->params[t], *restrict m = job->exp_avgs[t], *restrict v = job->exp_avg_sqs[t];
    uint16_t *restrict out = job->outs[t];
    const float coef = job->grad_coef, b1 = job->beta1, b2 = job->beta2, eps = job->eps;
    const float one_minus_b1 = 1.0f - b1, one_minus_b2 = 1.0f - b2;
    const float step_size = job->step_size, bc2 = job->bias_correction2_sqrt, decay = job->decay_factor;
    const uint16_t *restrict gh = (const uint16_t *)job->grads[t];
    const float *restrict gf = (const float *)job->grads[t];
    if (job->grad_is_bf16[t] && out) {
        ADAMW_LOOP(bf16_to_float(gh[i]), out[i] = float_to_bf16(param))
    } else if (job->grad_is_bf16[t]) {
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

static void squares_range(job_t *job, int64_t t, int64_t lo, int64_t hi) {
    const uint16_t *restrict gh = (const uint16_t *)job->grads[t];
    const float *restrict gf = (const float *)job->grads[t];
    double s = 0.0;
#define LOAD_BF16(j) bf16_to_float(gh[j])
#define LOAD_FP32(j) gf[j]
    if (job->grad_is_bf16[t]) {
        SQUARES_LOOP(LOAD_BF16)
    } else {
        SQUARES_LOOP(LOAD_FP32)
    }
    job->sum_squares += s;
}

/* Walk this worker's [begin, end) share of the tensors laid end to end. */
static void for_share(job_t *job, void (*fn)(job_t *, int64_t, int64_t, int64_t)) {
    int64_t offset = 0;
    for (int64_t t = 0; t < job->count && offset < job->end; offset += job->sizes[t], t++) {
        int64_t lo = job->begin > offset ? job->begin - offset : 0;
        int64_t hi = job->end - offset < job->sizes[t] ? job->end - offset : job->sizes[t];
        if (lo < hi) fn(job, t, lo, hi);
    }
}

static void adamw_fn(job_t *job, int64_t t, int64_t lo, int64_t hi) { adamw_range(job, t, lo, hi); }
static void *adamw_worker(void *arg) { for_share((job_t *)arg, adamw_fn); return NULL; }
static void *squares_worker(void *arg) { for_share((job_t *)arg, squares_range); return NULL; }

#define MAX_THREADS 64

static double run(job_t *base, int threads, void *(*worker)(void *)) {
    int64_t total = 0;
    for (int64_t t = 0; t < base->count; t++) total += base->sizes[t];
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    job_t jobs[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int k = 0; k < threads; k++) {
        jobs[k] = *base;
        jobs[k].begin = total * k / threads;
        jobs[k].end = total * (k + 1) / threads;
        jobs[k].sum_squares = 0.0;
    }
    for (int k = 1; k < threads; k++) started[k] = pthread_create(&ids[k], NULL, worker, &jobs[k]) == 0;
    worker(&jobs[0]);
    for (int k = 1; k < threads; k++) {
        if (started[k]) pthread_join(ids[k], NULL);
        else worker(&jobs[k]);  /* no thread to be had: do its share here */
    }
    double s = 0.0;
    for (int k = 0; k < threads; k++) s += jobs[k].sum_squares;
    return s;
}

double adamw_sum_squares(int64_t count, const int64_t *sizes, const void *const *grads, const int32_t *grad_is_bf16,
                         int threads) {
    job_t job = {0};
    job.count = count; job.sizes = sizes; job.grads = grads; job.grad_is_bf16 = grad_is_bf16;
    return run(&job, threads, squares_worker);
}

void adamw_step(int64_t count, const int64_t *sizes, float *const *params, float *const *exp_avgs,
                float *const *exp_avg_sqs, const void *const *grads, const int32_t *grad_is_bf16, uint16_t *const *outs,
                float decay_factor, float grad_coef, float beta1, float beta2, float eps, float step_size,
                float bias_correction2_sqrt, int threads) {
    job_t job = {0};
    job.count = count; job.sizes = sizes; job.params = params; job.exp_avgs = exp_avgs; job.exp_avg_sqs = exp_avg_sqs;
    job.grads = grads; job.grad_is_bf16 = grad_is_bf16; job.outs = outs; job.decay_factor = decay_factor;
    job.grad_coef = grad_coef; job.beta1 = beta1; job.beta2 = beta2; job.eps = eps; job.step_size = step_size;
    job.bias_correction2_sqrt = bias_correction2_sqrt;
    run(&job, threads, adamw_worker);
}
