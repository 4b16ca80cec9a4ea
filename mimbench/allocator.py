"""Keep the memory that freed tensors leave inside the process (glibc's malloc only).

By default glibc returns large freed blocks to the operating system (munmap, or trimming the
top of the heap), so the next allocation of the same size faults its pages in again, zeroed
one by one. A training step frees and allocates the same activations every time: on the
2-core machine of docs/performance.md, 200 tiny steps took ~27 % less time with freed memory
kept (same losses), and the next batch's views were no longer ~2.5x slower to build right
after a step than a moment later. With blocks up to
1 GiB kept, the process's memory stays at its peak instead of dropping between steps.
MIMBENCH_KEEP_FREED_MEMORY=0 leaves glibc's defaults.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, <malloc.h>
KEEP_UP_TO = 1 << 30  # bytes: smaller blocks come from the heap and stay in it when freed


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks of up to 1 GiB; True if it now does, False where the C
    library is not glibc or MIMBENCH_KEEP_FREED_MEMORY=0."""
    if os.environ.get("MIMBENCH_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS, Windows)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, KEEP_UP_TO) == 1 and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
