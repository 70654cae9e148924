"""Keep freed large blocks in glibc's heap instead of returning them to the OS.

The dense engine allocates the same large buffers (convolution outputs, crops) slab after slab.
By default glibc serves blocks above its mmap threshold with fresh mappings and unmaps them on
free, so every slab pays first-touch page faults again (~15% of a whole-brain run on 2 cores).
Raising the mmap and trim thresholds makes freed blocks reusable, the same effect PyTorch's CPU
performance guide gets from jemalloc/tcmalloc. Applied once per process, on glibc only;
SPATIALSEG_NO_MALLOC_TUNING=1 turns it off.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_done = False


def keep_freed_memory() -> bool:
    """Apply the tuning (idempotent). Returns whether it is in effect."""
    global _done
    if _done:
        return True
    if os.environ.get("SPATIALSEG_NO_MALLOC_TUNING", "").strip() in ("1", "true", "yes"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # glibc before 2.35-ish caps the mmap threshold at 32 MiB (HEAP_MAX/2 on 64-bit): fall back to it
    mmap_ok = bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30) or mallopt(_M_MMAP_THRESHOLD, 32 << 20))
    trim_ok = bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    mallopt(_M_TOP_PAD, 256 << 20)
    _done = mmap_ok and trim_ok
    return _done
