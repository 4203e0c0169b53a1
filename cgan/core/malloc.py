"""Keep large freed buffers in the process instead of handing them back to the system (glibc only).

glibc's malloc gives every freed block above its mmap threshold (at most 32 MB) back to the system and
trims the heap's free top, so a network whose activations are that large page-faults them back in at
every batch. Inception at 299 x 299 is such a network (FID's CPU time and page faults with and without
this: docs/speed.md). A training step of cgan's own networks was not faster, so only FID calls this.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # mallopt's parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
LARGE = 1 << 30  # 1 GiB: blocks below it are kept and reused, the heap is not trimmed below it

_applied: bool | None = None


def keep_large_buffers() -> bool:
    """Raise glibc's mmap and trim thresholds for this process, once; True where they were raised.

    A no-op (False) off glibc, and where the user has set malloc tunables of their own in GLIBC_TUNABLES."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux") or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return _applied
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs without mallopt
        return _applied
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(M_MMAP_THRESHOLD, LARGE)) and bool(mallopt(M_TRIM_THRESHOLD, LARGE))
    return _applied
