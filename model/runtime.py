"""Process and thread policy of everything that runs the network: the service, `cvm train` /
`cvm eval` / `cvm localize`, `cvm-index build` and the benchmarks.

Four settings, each explained where it is applied:

* glibc's allocator keeps freed buffers (`reuse_freed_memory`), once per process at start;
* torch's intra-op thread pool belongs to one thread (`claim_pool`), every other thread computes
  with one (`compute_single_threaded`);
* FAISS searches with `search_threads` OpenMP threads in whichever thread searches
  (`set_search_threads`, `search_threads`, `omp_threads`);
* a long build freezes the objects loaded before it (`frozen_heap`).

`RuntimeSettings` holds the thread counts (`CVM_TORCH_THREADS`, `CVM_SEARCH_THREADS`); the
service's settings extend it. torch and faiss are imported only by the functions that use them,
so that importing this module stays cheap (`cvm-index --help`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
import logging
import os
from collections.abc import Iterator

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)


class RuntimeSettings(BaseSettings):
    """Thread counts of the forward pass and of the search (env prefix `CVM_`)."""

    model_config = SettingsConfigDict(env_prefix="CVM_", extra="ignore")

    # FAISS and torch each keep an OpenMP pool; on a few cores their spinning threads slow each
    # other down, so a search uses one thread unless told otherwise.
    search_threads: int = Field(default=1, ge=1, le=256, description="FAISS OpenMP threads")
    torch_threads: int = Field(
        default=0, ge=0, le=256, description="torch intra-op threads of the forward pass; 0: torch's default"
    )


# --- glibc's allocator -------------------------------------------------------------------------

# mallopt parameters (glibc <malloc.h>).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's largest dynamic threshold on 64-bit
TRIM_THRESHOLD_BYTES = 64 << 20


@functools.cache
def reuse_freed_memory() -> bool:
    """Keep freed buffers in the heap, so that repeated forward passes do not page-fault.

    glibc serves every allocation above its mmap threshold (small at start, raised dynamically)
    with fresh pages from the kernel, unmaps them when they are freed and trims the heap's free
    top. A forward pass allocates its activations anew each time, so each pass would fault in new
    zeroed pages, a large part of a small model's forward time (docs/benchmarks.md). Fixed
    thresholds (allocations up to `MMAP_THRESHOLD_BYTES` from the heap, freed memory returned to
    the kernel only above `TRIM_THRESHOLD_BYTES` of free top) keep those pages mapped from one
    pass to the next, at the cost of holding that much memory a quiet process could have returned.

    Sets the thresholds once per process; returns False where the C library is not glibc or
    refuses, which only costs speed.
    """
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


# --- torch's intra-op thread pool --------------------------------------------------------------
#
# libgomp, torch's OpenMP runtime, gives every thread that runs a parallel region a pool of worker
# threads of its own, kept for as long as that thread lives. Once the pools of a process hold more
# threads than there are cores, libgomp's barriers stop spinning and put their threads to sleep,
# and every parallel region then pays for waking its workers: a forward pass became markedly
# slower, in any thread, once a second live thread had run a single parallel operation with more
# than one thread (docs/benchmarks.md). Loading the weights in a helper thread was enough.
#
# So the service gives the pool to its batch thread (forward passes and searches, `claim_pool`)
# and everything else - loading the weights, decoding, the index watcher, the event loop -
# computes with one thread (`compute_single_threaded`), which creates no pool.


def compute_single_threaded() -> None:
    """The calling thread, and every thread that has not run torch yet, compute with one thread.

    torch keeps the count per thread (OpenMP's setting) and a process default for threads that
    have not run torch yet; this sets both, and leaves threads that already run with more alone.
    """
    _set_for_this_thread(1)


def claim_pool(n: int) -> int:
    """Give the calling thread `n` intra-op threads (0: one per core) and return the count.

    This also makes `n` the default of threads that have not run torch yet: call
    `compute_single_threaded` from another thread afterwards.
    """
    count = pool_size(n)
    _set_for_this_thread(count)
    return count


def pool_size(n: int) -> int:
    """The thread count `claim_pool(n)` gives: n, or one per core for 0."""
    return n if n > 0 else (os.cpu_count() or 1)


def _set_for_this_thread(n: int) -> None:
    import torch

    torch.set_num_threads(n)
    # A thread takes the process default at its first torch call, even after setting its own count;
    # this call is that first one, while the default is still `n`.
    torch.get_num_threads()


# --- FAISS's OpenMP threads --------------------------------------------------------------------

# OpenMP threads of every search, applied in the thread that searches (see `omp_threads`).
_search_threads = 1


def set_search_threads(n: int) -> None:
    """Threads FAISS may use for each search, from now on, in whichever thread searches."""
    if n < 1:
        raise ValueError(f"search threads must be at least 1, got {n}")
    global _search_threads
    _search_threads = n


def search_threads() -> int:
    """The thread count of each search (`set_search_threads`; 1 unless set)."""
    return _search_threads


@contextlib.contextmanager
def omp_threads(n: int) -> Iterator[None]:
    """Let OpenMP use `n` threads in the calling thread for the block, then restore the old count.

    The OpenMP thread count is a per-thread setting, so setting it once in the thread that starts
    the service does not reach the thread that searches. When torch is imported before faiss,
    both share torch's OpenMP runtime and this one setting: the searching thread also runs the
    forward passes, which must keep their own count, hence the restore. On a few cores a flat
    search with more threads than one was several times slower than with one.
    """
    import faiss

    before = faiss.omp_get_max_threads()
    if before == n:
        yield
        return
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


# --- the garbage collector ---------------------------------------------------------------------


@contextlib.contextmanager
def frozen_heap() -> Iterator[bool]:
    """Freeze the objects alive now for the block, so that full collections skip them; yields
    whether it froze.

    The libraries and the model loaded before a long build live as long as it: frozen, they are
    not rescanned by each full garbage collection during it, which otherwise takes a noticeable
    pause every time. A caller that froze objects itself keeps its own policy (nothing is done).
    """
    freeze = gc.get_freeze_count() == 0
    if freeze:
        gc.freeze()
    try:
        yield freeze
    finally:
        if freeze:
            gc.unfreeze()
