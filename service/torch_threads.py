"""Torch's intra-op thread pool belongs to one thread; every other thread computes on one core.

libgomp, torch's OpenMP runtime, gives every thread that runs a parallel region a pool of worker
threads of its own, kept for as long as that thread lives. Once the pools of a process hold more
threads than there are cores, libgomp's barriers stop spinning and put their threads to sleep,
and every parallel region then pays for waking its workers. Measured on the 2-core development
machine: a 4-view forward pass of the shipped weights took 10.5 ms while one thread had used
torch, and 17.5 ms, in any thread, once a second live thread had run a single parallel operation
with 2 threads (docs/benchmarks.md). Loading the weights in a helper thread was enough.

So the service gives the pool to its batch thread (forward passes and searches, `claim_pool`) and
everything else - loading the weights, decoding, the index watcher, the event loop - computes with
one thread (`compute_single_threaded`), which creates no pool.
"""

from __future__ import annotations

import os

import torch


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
    torch.set_num_threads(n)
    # A thread takes the process default at its first torch call, even after setting its own count;
    # this call is that first one, while the default is still `n`.
    torch.get_num_threads()
