"""Keep freed buffers in the heap, so that repeated forward passes do not page-fault.

glibc serves every allocation above its mmap threshold (128 KiB at start, raised dynamically) with
fresh pages from the kernel, unmaps them when they are freed and trims the heap's free top. A
forward pass allocates its activations anew each time, so each pass faults in new zeroed pages:
measured on the development machine, a batch of 4 views of the shipped weights faulted about 2,900
pages (11 MiB) per pass and took 35 ms instead of 23 ms (docs/benchmarks.md). Fixed thresholds
(allocations up to 32 MiB from the heap, freed memory returned to the kernel only above 64 MiB of
free top) keep those pages mapped from one pass to the next, at the cost of holding up to about
64 MiB that a quiet process could have returned.

Long-running work that repeats forward passes (the service, `cvm train` / `cvm eval`,
`cvm-index build`, the benchmarks) calls `reuse_freed_memory()` once at start.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)

# mallopt parameters (glibc <malloc.h>).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's largest dynamic threshold on 64-bit
TRIM_THRESHOLD_BYTES = 64 << 20


@functools.cache
def reuse_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (once per process). False where the C library is not
    glibc or refuses, which only costs speed."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        log.debug("no mallopt in the C library %r: allocator left as it is", name)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    ok = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 and ok
    return ok
