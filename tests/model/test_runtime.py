"""model.runtime: the allocator, torch's thread pool, FAISS's search threads, the frozen heap."""

from __future__ import annotations

import ctypes
import gc
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import faiss
import pytest
import torch

from model import runtime
from model.runtime import (
    RuntimeSettings,
    claim_pool,
    compute_single_threaded,
    frozen_heap,
    omp_threads,
    pool_size,
    reuse_freed_memory,
    search_threads,
    set_search_threads,
)

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")

# Allocates and touches six 4 MiB buffers (each above glibc's initial mmap threshold), as a forward
# pass does its activations, frees them, 50 times, and prints the minor page faults of those rounds.
PROBE = """
import resource, sys
import numpy as np
if sys.argv[1] == "tuned":
    from model.runtime import reuse_freed_memory
    assert reuse_freed_memory()
def round_():
    buffers = [np.empty(1 << 20, dtype=np.float32) for _ in range(6)]
    for a in buffers:
        a.fill(1.0)
    del buffers
round_()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    round_()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


@pytest.mark.skipif(not reuse_freed_memory(), reason="the C library is not glibc")
def test_freed_buffers_are_reused_without_page_faults() -> None:
    plain, tuned = _faults("plain"), _faults("tuned")
    # Untuned, the heap's free top is trimmed after each round and thousands of its pages are
    # faulted in anew; tuned, they stay mapped.
    assert plain >= 50 * 2000, plain
    assert tuned < 50 * 100, tuned


class _FakeLibc:
    """Stands in for the C library: records every mallopt call and answers `answer`."""

    def __init__(self, answer: int) -> None:
        self.calls: list[tuple[int, int]] = []
        self.answer = answer

        def mallopt(param: int, value: int) -> int:
            self.calls.append((param, value))
            return self.answer

        self.mallopt = mallopt


@pytest.fixture()
def fresh_allocator_setting() -> Iterator[None]:
    """`reuse_freed_memory` forgets whether it ran, before and after the test (the real
    thresholds are then set again by the next caller: setting them twice changes nothing)."""
    reuse_freed_memory.cache_clear()
    yield
    reuse_freed_memory.cache_clear()


@pytest.mark.usefixtures("fresh_allocator_setting")
def test_thresholds_are_set_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    libc = _FakeLibc(answer=1)
    opened: list[str | None] = []

    def cdll(name: str | None) -> _FakeLibc:
        opened.append(name)
        return libc

    monkeypatch.setattr(runtime.ctypes, "CDLL", cdll)
    assert reuse_freed_memory() and reuse_freed_memory()
    assert len(opened) == 1
    assert libc.calls == [
        (runtime.M_MMAP_THRESHOLD, runtime.MMAP_THRESHOLD_BYTES),
        (runtime.M_TRIM_THRESHOLD, runtime.TRIM_THRESHOLD_BYTES),
    ]


@pytest.mark.usefixtures("fresh_allocator_setting")
def test_a_refusing_or_missing_mallopt_only_reports_false(monkeypatch: pytest.MonkeyPatch) -> None:
    refusing = _FakeLibc(answer=0)
    monkeypatch.setattr(runtime.ctypes, "CDLL", lambda name: refusing)
    assert reuse_freed_memory() is False
    assert len(refusing.calls) == 2  # both thresholds were tried

    def no_library(name: str | None) -> ctypes.CDLL:
        raise OSError("not found")

    reuse_freed_memory.cache_clear()
    monkeypatch.setattr(runtime.ctypes, "CDLL", no_library)
    assert reuse_freed_memory() is False


def _in_new_thread(fn: Callable[[], T]) -> T:
    # Thread counts are per thread: a fresh thread keeps this test's settings to itself.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn).result()


def _torch_threads_of_a_new_thread() -> int:
    out: list[int] = []
    t = threading.Thread(target=lambda: out.append(torch.get_num_threads()))
    t.start()
    t.join()
    return out[0]


def test_claim_pool_counts() -> None:
    before = torch.get_num_threads()
    try:
        assert claim_pool(0) == (os.cpu_count() or 1) == torch.get_num_threads()
        assert claim_pool(3) == 3 == torch.get_num_threads()
        compute_single_threaded()
        assert torch.get_num_threads() == 1 and _torch_threads_of_a_new_thread() == 1
    finally:
        torch.set_num_threads(before)


def test_pool_size() -> None:
    assert pool_size(5) == 5
    assert pool_size(0) == (os.cpu_count() or 1)


def test_search_threads_are_set_for_every_thread() -> None:
    assert search_threads() == 1  # the default
    set_search_threads(3)
    try:
        assert _in_new_thread(search_threads) == 3
        with pytest.raises(ValueError, match="at least 1"):
            set_search_threads(0)
        assert search_threads() == 3
    finally:
        set_search_threads(1)


def test_omp_threads_sets_and_restores_even_after_an_error() -> None:
    def scenario() -> tuple[int, int, int]:
        faiss.omp_set_num_threads(2)
        with omp_threads(3):
            ok = faiss.omp_get_max_threads()
        inside = 0
        with pytest.raises(RuntimeError), omp_threads(1):
            inside = faiss.omp_get_max_threads()
            raise RuntimeError("search failed")
        return ok, inside, faiss.omp_get_max_threads()

    assert _in_new_thread(scenario) == (3, 1, 2)


def test_frozen_heap_freezes_for_the_block_only() -> None:
    assert gc.get_freeze_count() == 0, "something else left objects frozen"
    with frozen_heap() as froze:
        assert froze and gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
    with pytest.raises(KeyError), frozen_heap():
        raise KeyError("a failed build")
    assert gc.get_freeze_count() == 0


def test_frozen_heap_leaves_a_callers_freeze_alone() -> None:
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with frozen_heap() as froze:
            assert not froze
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CVM_SEARCH_THREADS", raising=False)
    monkeypatch.delenv("CVM_TORCH_THREADS", raising=False)
    assert (RuntimeSettings().search_threads, RuntimeSettings().torch_threads) == (1, 0)
    monkeypatch.setenv("CVM_SEARCH_THREADS", "2")
    monkeypatch.setenv("CVM_TORCH_THREADS", "3")
    assert (RuntimeSettings().search_threads, RuntimeSettings().torch_threads) == (2, 3)
    monkeypatch.setenv("CVM_SEARCH_THREADS", "0")
    with pytest.raises(ValueError, match="search_threads"):
        RuntimeSettings()
