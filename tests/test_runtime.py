"""The CLI's process settings: user values win, collection waits for the end of set-up, then resumes."""

from __future__ import annotations

import gc
import os

from adapt.speed import runtime


def test_start_bounds_caches_and_defers_collection_until_setup_done(monkeypatch):
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "7")
    monkeypatch.delenv("LRU_CACHE_CAPACITY", raising=False)
    was_enabled = gc.isenabled()
    try:
        runtime.start()
        assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "7"  # the user's value wins
        assert os.environ["LRU_CACHE_CAPACITY"] == "1"
        assert os.environ["TRANSFORMERS_VERBOSITY"] == "error"
        assert not gc.isenabled()
        runtime.setup_done()
        assert gc.isenabled() and gc.get_freeze_count() > 0
        runtime.setup_done()  # a second call (several model loads in one process) changes nothing
        assert gc.isenabled()
    finally:
        os.environ.pop("LRU_CACHE_CAPACITY", None)
        gc.unfreeze()
        (gc.enable if was_enabled else gc.disable)()


def test_setup_done_leaves_a_library_callers_collector_alone():
    gc.disable()
    try:
        runtime.setup_done()  # start() never ran: not a CLI process
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_command_line_applies_its_settings_before_torch_and_transformers_load():
    """`import adapt.cli` (what the `adapt` script runs before `runtime.start`) loads neither torch nor
    transformers, so their imports run with collection deferred and the oneDNN cache bounds already set."""
    import subprocess
    import sys

    code = ("import sys, adapt.cli, adapt.speed; print(sorted(m for m in ('torch', 'transformers', 'datasets') "
            "if m in sys.modules)); from adapt.speed import padding_free; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:2] == ["[]", "True"]


def test_freed_memory_is_kept_unless_the_user_chose_malloc_settings(monkeypatch):
    for name in [n for n in os.environ if n.startswith("MALLOC_") or n in ("GLIBC_TUNABLES", "LD_PRELOAD")]:
        monkeypatch.delenv(name)
    assert runtime.keep_freed_memory()  # glibc (this machine's C library) accepts both options
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert not runtime.keep_freed_memory()
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("LD_PRELOAD", "libjemalloc.so.2")
    assert not runtime.keep_freed_memory()
