"""Process-wide settings of a command-line run: quiet libraries, bounded oneDNN caches, freed memory kept for
reuse, and a garbage collector that stays out of start-up and exit. Only the `adapt` entry points apply them;
importing adapt as a library changes nothing in the caller's process."""

from __future__ import annotations

import gc
import os

QUIET_LIBRARIES = {  # adapt draws its own progress; per-call bars and load reports are noise on a terminal
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}
# Padding-free batches give every training step a new token count, so new bf16 matmul shapes. ideep and
# oneDNN each cache a primitive per shape (1,024 entries by default, about 1 MB apiece): that grew the
# bench's peak RSS by ~450 MB over 63 steps. A step reuses its shapes across layers and in backward, which
# oneDNN's cache of 128 covers at full speed; ideep's second cache adds nothing (0 would crash it).
BOUNDED_CPU_CACHES = {"LRU_CACHE_CAPACITY": "1", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "128"}

_collection_deferred = False
# glibc malloc options (malloc.h): M_TRIM_THRESHOLD, M_MMAP_MAX
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Make glibc's malloc serve large blocks from the heap and keep what is freed for reuse (no mmap per
    block, no trimming), so that the activations and logits a training step allocates reuse pages the process
    already has. By default every block over the mmap threshold (at most 32 MB) is a fresh mapping that the
    kernel fills with zeroed pages on first touch: measured here, a fresh 400 MB tensor cost 2.3x a reused one
    to fill, and a SmolLM2 step of 1,953 tokens took 10.5 s instead of 6.8 s. The process's memory then stays
    at its peak until exit. Returns False (nothing changed) where the C library is not glibc or the user set
    malloc's options (MALLOC_* variables, GLIBC_TUNABLES) or preloads another allocator."""
    import ctypes
    import ctypes.util

    if (any(name.startswith("MALLOC_") for name in os.environ)
            or "GLIBC_TUNABLES" in os.environ or os.environ.get("LD_PRELOAD")):
        return False

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def start() -> None:
    """First thing in a CLI process. Both caches read their size on first use, so setting the variables
    here is in time; a value the user set wins. Importing torch, transformers and datasets creates about a
    million long-lived objects and almost no garbage, yet the collector traverses them all several times
    (about 1 s of a short run), so collection waits until `setup_done`."""
    global _collection_deferred
    for name, value in {**QUIET_LIBRARIES, **BOUNDED_CPU_CACHES}.items():
        os.environ.setdefault(name, value)
    keep_freed_memory()
    if gc.isenabled():
        gc.disable()
        _collection_deferred = True


def setup_done() -> None:
    """The model is loaded: what exists now lives for the whole run, so it is frozen out of every later
    collection, and collection resumes for the run's own garbage."""
    global _collection_deferred
    if _collection_deferred:
        gc.freeze()
        gc.enable()
        _collection_deferred = False


def finish() -> None:
    """Last thing in a CLI process: without this, interpreter shutdown walks the whole heap (~1.2 s)."""
    gc.freeze()
