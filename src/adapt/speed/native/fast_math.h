/* exp in fp32 for the kernels' vectorized loops (libm's expf calls do not vectorize). */
#ifndef ADAPT_FAST_MATH_H
#define ADAPT_FAST_MATH_H
#include <math.h>
#include <stdint.h>

/* exp(x) for x <= 0: Cephes' expf polynomial (about 1 ulp) */
static inline float exp_nonpositive(float x) {
    x = x < -87.0f ? -87.0f : x;
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float y = ((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r + 4.1665795894e-2f) * r +
               1.6666665459e-1f) * r + 5.0000001201e-1f;
    y = y * r * r + r + 1.0f;
    union { int32_t i; float f; } scale = {.i = ((int32_t)n + 127) << 23};
    return y * scale.f;
}
#endif
