/* A parallel for over [0, n) on POSIX threads, shared by adapt's native kernels: the caller's thread takes
   the first share, so one thread costs no thread start; small ranges run inline. */
#ifndef ADAPT_PARALLEL_H
#define ADAPT_PARALLEL_H
#include <pthread.h>
#include <stdint.h>

#define ADAPT_MAX_THREADS 64
#define ADAPT_MIN_SHARE 32768 /* elements: below this a thread start costs more than it saves */

typedef void (*range_fn)(void *arg, int64_t lo, int64_t hi);

typedef struct {
    range_fn fn;
    void *arg;
    int64_t lo, hi;
} adapt_share;

static void *adapt_run_share(void *p) {
    adapt_share *s = p;
    if (s->lo < s->hi) s->fn(s->arg, s->lo, s->hi);
    return NULL;
}

/* Shares start at multiples of `align`. */
static inline void parallel_for(int64_t n, int64_t align, int threads, range_fn fn, void *arg) {
    if (threads > ADAPT_MAX_THREADS) threads = ADAPT_MAX_THREADS;
    if (threads > n / ADAPT_MIN_SHARE) threads = (int)(n / ADAPT_MIN_SHARE);
    if (threads <= 1) {
        if (n > 0) fn(arg, 0, n);
        return;
    }
    adapt_share shares[ADAPT_MAX_THREADS];
    pthread_t ids[ADAPT_MAX_THREADS];
    int started[ADAPT_MAX_THREADS] = {0};
    for (int k = 0; k < threads; k++) {
        shares[k].fn = fn;
        shares[k].arg = arg;
        shares[k].lo = n * k / threads / align * align;
        shares[k].hi = k + 1 == threads ? n : n * (k + 1) / threads / align * align;
    }
    for (int k = 1; k < threads; k++) started[k] = pthread_create(&ids[k], NULL, adapt_run_share, &shares[k]) == 0;
    adapt_run_share(&shares[0]);
    for (int k = 1; k < threads; k++) {
        if (started[k]) pthread_join(ids[k], NULL);
        else adapt_run_share(&shares[k]); /* no thread to be had: run its share here */
    }
}
#endif
