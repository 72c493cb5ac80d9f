"""adapt's C kernels for CPU training (the .c files here), compiled by `make install` into
libadapt_native.so for the machine it runs on and called through ctypes: no Python or PyTorch headers,
no build step at import. Without the library (no C compiler, or a plain wheel install) or with
ADAPT_NATIVE=0, every caller takes its PyTorch path instead."""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

LIBRARY = Path(__file__).resolve().parent / "libadapt_native.so"
SWITCH_VARIABLE = "ADAPT_NATIVE"  # "0" turns the kernels off

_POINTERS, _I64, _I32 = ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_int32)
_ATTENTION_INPUTS = [*[ctypes.c_int64] * 3, *[ctypes.c_void_p] * 5, ctypes.c_int, ctypes.c_float, ctypes.c_uint32,
                     ctypes.c_float, ctypes.c_uint64]
_SIGNATURES = {  # name: (result, arguments)
    "adamw_sum_squares": (ctypes.c_double, [ctypes.c_int64, _I64, _POINTERS, _I32, ctypes.c_int]),
    "adamw_step": (None, [ctypes.c_int64, _I64, _POINTERS, _POINTERS, _POINTERS, _POINTERS, _I32, _POINTERS,
                          *[ctypes.c_float] * 7, ctypes.c_int]),
    "dropout_bf16_forward": (None, [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64,
                                    ctypes.c_uint32, ctypes.c_float, ctypes.c_int]),
    "dropout_bf16_backward": (None, [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float,
                                     ctypes.c_int]),
    "dropout_f32_forward": (None, [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64,
                                   ctypes.c_uint32, ctypes.c_float, ctypes.c_int]),
    "dropout_f32_backward": (None, [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float,
                                    ctypes.c_int]),
    # sequences, heads, head size, query and key starts, contiguous queries, keys and values, is bf16,
    # scale, dropout threshold and scale, seed, then the outputs (context, softmax statistics) or, for the
    # backward, the context's gradient, the statistics and the three gradients, then the thread count
    "attention_forward": (None, [*_ATTENTION_INPUTS, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]),
    "attention_backward": (None, [*_ATTENTION_INPUTS, *[ctypes.c_void_p] * 5, ctypes.c_int]),
}


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None when they were not built or are switched off."""
    if os.environ.get(SWITCH_VARIABLE, "1") == "0" or not LIBRARY.exists():
        return None
    try:
        lib = ctypes.CDLL(str(LIBRARY))
    except OSError:  # built for another machine or runtime: the PyTorch paths still work
        return None
    for name, (result, arguments) in _SIGNATURES.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = result, arguments
    return lib


def array(ctype, values) -> ctypes.Array:
    return (ctype * len(values))(*values)
