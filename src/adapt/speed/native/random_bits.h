/* Counter-based random bits shared by the dropout kernels: 16 bits per counter value, four per SplitMix64
   output (of seed + counter / 4). A draw depends only on (seed, counter), never on which thread makes it or
   in what order, so a backward pass can redraw its forward's mask. */
#ifndef ADAPT_RANDOM_BITS_H
#define ADAPT_RANDOM_BITS_H
#include <stdint.h>

static inline uint64_t splitmix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint32_t random16(uint64_t seed, uint64_t counter) {
    return (uint32_t)(splitmix64(seed + (counter >> 2)) >> (16 * (counter & 3))) & 0xffffu;
}
#endif
