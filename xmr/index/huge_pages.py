"""Back large in-memory arrays with 2 MiB pages (Linux transparent huge pages), for random-access search.

A graph search reads a few hundred vectors at random places in an index of hundreds of MB: with 4 KiB pages
nearly every read also misses the TLB, and under a virtual machine a miss walks two page tables. NumPy asks for
huge pages on its own large arrays; FAISS's C++ arrays (``std::vector`` through ``malloc``) do not get them unless
the system's THP mode is ``always``. On 723,485 x 384 PyPI vectors (HNSW32, efSearch 32-64) huge pages took FAISS's
single-query p50 to 0.84-0.85x and its batch QPS to 1.14-1.18x (``eval/bench/index-layout/README.md``).

``madvise(MADV_HUGEPAGE)`` marks a range; ``MADV_COLLAPSE`` (Linux 6.1+) moves its pages into huge pages now
instead of waiting for ``khugepaged``. Where neither applies (other systems, THP ``never``, an older kernel, memory
too fragmented) nothing changes but the speed. ``XMR_HUGE_PAGES=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import os
import sys
from functools import cache
from pathlib import Path

HUGE_PAGE = 2 << 20  # bytes: x86-64 and arm64 (4 KiB base pages) transparent huge page size
MADV_HUGEPAGE = 14
MADV_COLLAPSE = 25
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


@cache
def _madvise() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """libc's ``madvise``, where huge pages can be asked for at all."""
    if not sys.platform.startswith("linux") or os.environ.get("XMR_HUGE_PAGES", "1") == "0":
        return None
    try:
        if "[never]" in THP_MODE.read_text():
            return None
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


def advise(address: int, nbytes: int) -> int:
    """Ask for huge pages over the whole 2 MiB pages inside ``[address, address + nbytes)``; returns the bytes now
    collapsed into huge pages (0 where the range holds no whole huge page or the system declines)."""
    madvise = _madvise()
    start = -(-address // HUGE_PAGE) * HUGE_PAGE
    end = (address + nbytes) // HUGE_PAGE * HUGE_PAGE
    if madvise is None or end <= start or madvise(start, end - start, MADV_HUGEPAGE) != 0:
        return 0
    return end - start if madvise(start, end - start, MADV_COLLAPSE) == 0 else 0

