/* Dropout on bf16 CPU tensors in one pass: each element draws 16 random bits from a counter-based generator
   (SplitMix64 of seed + element/4, four 16-bit draws per 64-bit value) and is kept when the draw is at
   least `threshold` (= round(p * 65536)); kept values are scaled by 1 / (1 - p) in fp32 and rounded to
   nearest even, exactly as torch computes `where(keep, x, 0) * scale` on bf16. The keep mask is written
   for the backward pass. Counter-based draws make the result independent of how the work is split
   across threads; the seed comes from torch's generator, so `torch.manual_seed` and checkpointed RNG
   state decide the masks. PyTorch's path for the same thing (Mersenne Twister bits, a compare, a select
   and a multiply, each a pass over memory) was ~10% of a MiniLM training step. 

   The same kernels serve fp32 tensors (dropout_f32_*): the same bits and keep rule, so a seed gives the same
   mask in either precision; the kept values are x * scale in fp32, as torch computes them. */
#include <stdint.h>

#include "bf16.h"
#include "parallel.h"
#include "random_bits.h"

static inline float load_bf16(uint16_t v) { return bf16_to_float(v); }
static inline uint16_t store_bf16(float v) { return float_to_bf16(v); }
static inline float load_f32(float v) { return v; }
static inline float store_f32(float v) { return v; }

/* dropout_<NAME>_forward / _backward for elements of type T, read and written through load_NAME / store_NAME.
   forward_range handles elements [lo, hi) with lo a multiple of 4, so every 64-bit draw serves one aligned
   group of four. */
#define DROPOUT_KERNELS(NAME, T)                                                                                    \
    typedef struct {                                                                                                \
        const T *x;                                                                                                 \
        T *y;                                                                                                       \
        uint8_t *mask;                                                                                              \
        uint64_t seed;                                                                                              \
        uint32_t threshold;                                                                                         \
        float scale;                                                                                                \
    } NAME##_forward_args;                                                                                          \
                                                                                                                    \
    static void NAME##_forward_range(void *arg, int64_t lo, int64_t hi) {                                          \
        const NAME##_forward_args *a = arg;                                                                         \
        /* restrict locals: without them the uint8_t mask store may alias the fields and gcc won't vectorise */     \
        const T *restrict x = a->x;                                                                                 \
        T *restrict y = a->y;                                                                                       \
        uint8_t *restrict mask = a->mask;                                                                           \
        const uint64_t seed = a->seed;                                                                              \
        const uint32_t threshold = a->threshold;                                                                    \
        const float scale = a->scale;                                                                               \
        for (int64_t i = lo; i < hi; i++) {                                                                         \
            uint8_t keep = random16(seed, (uint64_t)i) >= threshold;                                                \
            mask[i] = keep;                                                                                         \
            y[i] = keep ? store_##NAME(load_##NAME(x[i]) * scale) : (T)0;                                           \
        }                                                                                                           \
    }                                                                                                               \
                                                                                                                    \
    typedef struct {                                                                                                \
        const T *grad;                                                                                              \
        const uint8_t *mask;                                                                                        \
        T *out;                                                                                                     \
        float scale;                                                                                                \
    } NAME##_backward_args;                                                                                         \
                                                                                                                    \
    static void NAME##_backward_range(void *arg, int64_t lo, int64_t hi) {                                         \
        const NAME##_backward_args *a = arg;                                                                        \
        const T *restrict grad = a->grad;                                                                           \
        const uint8_t *restrict mask = a->mask;                                                                     \
        T *restrict out = a->out;                                                                                   \
        const float scale = a->scale;                                                                               \
        for (int64_t i = lo; i < hi; i++) out[i] = mask[i] ? store_##NAME(load_##NAME(grad[i]) * scale) : (T)0;     \
    }                                                                                                               \
                                                                                                                    \
    void dropout_##NAME##_forward(int64_t n, const T *x, T *y, uint8_t *mask, uint64_t seed, uint32_t threshold,   \
                                  float scale, int threads) {                                                       \
        NAME##_forward_args a = {x, y, mask, seed, threshold, scale};                                               \
        parallel_for(n, 4, threads, NAME##_forward_range, &a);                                                      \
    }                                                                                                               \
                                                                                                                    \
    void dropout_##NAME##_backward(int64_t n, const T *grad, const uint8_t *mask, T *out, float scale, int threads) { \
        NAME##_backward_args a = {grad, mask, out, scale};                                                          \
        parallel_for(n, 4, threads, NAME##_backward_range, &a);                                                     \
    }

DROPOUT_KERNELS(bf16, uint16_t)
DROPOUT_KERNELS(f32, float)
