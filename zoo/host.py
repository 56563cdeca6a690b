"""The process's C memory allocator, set for the network's many large short-lived tensors (equizoo's own
processes only)."""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest: blocks under it come from the heap, not fresh mappings
TRIM_THRESHOLD = 2**31 - 1  # the largest mallopt takes: freed memory kept for reuse, not given back


def keep_freed_memory() -> bool:
    """Ask glibc to serve blocks under 32 MiB from its heap and to keep freed memory (up to 2 GiB) for reuse.

    By default glibc maps fresh pages for large blocks and gives freed memory back soon, so each call of
    the network faults its tensors' pages in again. On CPU, 1 thread: md17-l2 energy+forces of one aspirin
    frame takes about 1,200 page faults per call, and none with this, and runs 6 to 9 % faster; qm9-l2
    inference of 128 molecules (about 1.1 GB at its peak) takes 56,000-630,000 page faults and 1.8-3.7 s
    per call, and at most about 1,100 faults and 1.5-1.7 s with this (7 processes each). The cost: the
    process keeps the memory of its largest call instead of giving it back. Called by the `equizoo`
    command; a library user may call it too. Does nothing (returns False) off glibc, or where
    `GLIBC_TUNABLES` already sets glibc's malloc tunables (the user's choice wins); returns True when both
    settings took."""
    if not sys.platform.startswith("linux") or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only (not musl)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
