/* Dropout on bf16 CPU tensors in one pass: each element draws 16 random bits from a counter-based generator
   (SplitMix64 of seed + element/4, four 16-bit draws per 64-bit value) and is kept when the draw is at
   least `threshold` (= round(p * 65536)); kept values are scaled by 1 / (1 - p) in fp32 and rounded to
   nearest even, exactly as torch computes `where(keep, x, 0) * scale` on bf16. The keep mask is written
   for the backward pass. Counter-based draws make the result independent of how the work is split
   across threads; the seed comes from torch's generator, so `torch.manual_seed` and checkpointed RNG
   state decide the masks. PyTorch's path for the same thing (Mersenne Twister bits, a compare, a select
   and a multiply, each a pass over memory) was ~10% of a MiniLM training step. */
#include <stdint.h>

#include "bf16.h"
#include "parallel.h"
#include "random_bits.h"

typedef struct {
    const uint16_t *x;
    uint16_t *y;
    uint8_t *mask;
    uint64_t seed;
    uint32_t threshold;
    float scale;
} forward_args;

/* Elements [lo, hi) with lo a multiple of 4, so every 64-bit draw serves one aligned group of four. */
static void forward_range(void *arg, int64_t lo, int64_t hi) {
    const forward_args *a = arg;
    const uint16_t *restrict x = a->x;
    uint16_t *restrict y = a->y;
    uint8_t *restrict mask = a->mask;
    const uint64_t seed = a->seed;
    const uint32_t threshold = a->threshold;
    const float scale = a->scale;
    for (int64_t i = lo; i < hi; i++) {
        uint8_t keep = random16(seed, (uint64_t)i) >= threshold;
        mask[i] = keep;
        y[i] = keep ? float_to_bf16(bf16_to_float(x[i]) * scale) : 0;
    }
}

typedef struct {
    const uint16_t *grad;
    const uint8_t *mask;
    uint16_t *out;
    float scale;
} backward_args;

static void backward_range(void *arg, int64_t lo, int64_t hi) {
    const backward_args *a = arg;
    const uint16_t *restrict g = a->grad;
    const uint8_t *restrict mask = a->mask;
    uint16_t *restrict out = a->out;
    const float scale = a->scale;
    for (int64_t i = lo; i < hi; i++) out[i] = mask[i] ? float_to_bf16(bf16_to_float(g[i]) * scale) : 0;
}

void dropout_bf16_forward(int64_t n, const uint16_t *x, uint16_t *y, uint8_t *mask, uint64_t seed, uint32_t threshold,
                          float scale, int threads) {
    forward_args a = {x, y, mask, seed, threshold, scale};
    parallel_for(n, 4, threads, forward_range, &a);
}

void dropout_bf16_backward(int64_t n, const uint16_t *grad, const uint8_t *mask, uint16_t *out, float scale, int threads) {
    backward_args a = {grad, mask, out, scale};
    parallel_for(n, 4, threads, backward_range, &a);
}
