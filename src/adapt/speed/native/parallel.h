/* A parallel for over [0, n), shared by adapt's native kernels. It runs on OpenMP, which inside a PyTorch
   process resolves to the libgomp torch has already loaded (same soname), so the kernels share torch's
   worker threads: threads of their own would compete with torch's idle workers, which spin for a while
   after each of torch's parallel regions (on a 2-core machine that made the kernels slower than torch). */
#ifndef ADAPT_PARALLEL_H
#define ADAPT_PARALLEL_H
#include <omp.h>
#include <stdint.h>

#define ADAPT_MIN_SHARE 32768 /* elements: below this a share is not worth a worker */

typedef void (*range_fn)(void *arg, int64_t lo, int64_t hi);

/* Shares start at multiples of `align`. */
static inline void parallel_for(int64_t n, int64_t align, int threads, range_fn fn, void *arg) {
    if (threads > n / ADAPT_MIN_SHARE) threads = (int)(n / ADAPT_MIN_SHARE);
    if (threads <= 1) {
        if (n > 0) fn(arg, 0, n);
        return;
    }
#pragma omp parallel num_threads(threads)
    {
        int64_t k = omp_get_thread_num(), team = omp_get_num_threads();
        int64_t lo = n * k / team / align * align;
        int64_t hi = k + 1 == team ? n : n * (k + 1) / team / align * align;
        if (lo < hi) fn(arg, lo, hi);
    }
}
#endif
