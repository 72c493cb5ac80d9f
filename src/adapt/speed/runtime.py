"""Process-wide settings of a command-line run: quiet libraries, bounded oneDNN caches, and a garbage
collector that stays out of start-up and exit. Only the `adapt` entry points apply them; importing adapt
as a library changes nothing in the caller's process."""

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


def start() -> None:
    """First thing in a CLI process. Both caches read their size on first use, so setting the variables
    here is in time; a value the user set wins. Importing torch, transformers and datasets creates about a
    million long-lived objects and almost no garbage, yet the collector traverses them all several times
    (about 1 s of a short run), so collection waits until `setup_done`."""
    global _collection_deferred
    for name, value in {**QUIET_LIBRARIES, **BOUNDED_CPU_CACHES}.items():
        os.environ.setdefault(name, value)
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
