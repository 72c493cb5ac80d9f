/* Dropout on fp32 CPU tensors in one pass, the fp32 twin of dropout_bf16.c: the same counter-based bits
   (random16 of seed and element index) and keep rule (draw >= threshold), so one seed gives the bf16 kernel's
   mask; kept values are multiplied by 1 / (1 - p) in fp32, exactly as torch computes `where(keep, x, 0) * scale`.
   The keep mask is written for the backward pass. On CPUs without native bf16 (fp32 training) PyTorch's path
   (Mersenne Twister bits, a compare, a select and a multiply) was ~10% of a MiniLM training step. */
#include <stdint.h>

#include "parallel.h"
#include "random_bits.h"

typedef struct {
    const float *x;
    float *y;
    uint8_t *mask;
    uint64_t seed;
    uint32_t threshold;
    float scale;
} forward_args;

/* Elements [lo, hi) with lo a multiple of 4, so every 64-bit draw serves one aligned group of four. */
static void forward_range(void *arg, int64_t lo, int64_t hi) {
    const forward_args *a = arg;
    const float *restrict x = a->x;
    float *restrict y = a->y;
    uint8_t *restrict mask = a->mask;
    const uint64_t seed = a->seed;
    const uint32_t threshold = a->threshold;
    const float scale = a->scale;
    for (int64_t i = lo; i < hi; i++) {
        uint8_t keep = random16(seed, (uint64_t)i) >= threshold;
        mask[i] = keep;
        y[i] = keep ? x[i] * scale : 0.0f;
    }
}

typedef struct {
    const float *grad;
    const uint8_t *mask;
    float *out;
    float scale;
} backward_args;

static void backward_range(void *arg, int64_t lo, int64_t hi) {
    const backward_args *a = arg;
    const float *restrict g = a->grad;
    const uint8_t *restrict mask = a->mask;
    float *restrict out = a->out;
    const float scale = a->scale;
    for (int64_t i = lo; i < hi; i++) out[i] = mask[i] ? g[i] * scale : 0.0f;
}

void dropout_f32_forward(int64_t n, const float *x, float *y, uint8_t *mask, uint64_t seed, uint32_t threshold,
                         float scale, int threads) {
    forward_args a = {x, y, mask, seed, threshold, scale};
    parallel_for(n, 4, threads, forward_range, &a);
}

void dropout_f32_backward(int64_t n, const float *grad, const uint8_t *mask, float *out, float scale, int threads) {
    backward_args a = {grad, mask, out, scale};
    parallel_for(n, 4, threads, backward_range, &a);
}
