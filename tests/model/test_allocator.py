"""reuse_freed_memory: repeated large allocations stop faulting in fresh pages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from model.allocator import reuse_freed_memory

REPO = Path(__file__).resolve().parents[2]

# Allocates and touches six 4 MiB buffers (each above glibc's initial mmap threshold), as a forward
# pass does its activations, frees them, 50 times, and prints the minor page faults of those rounds.
PROBE = """
import resource, sys
import numpy as np
if sys.argv[1] == "tuned":
    from model.allocator import reuse_freed_memory
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


def test_reuse_freed_memory_is_done_once() -> None:
    assert reuse_freed_memory() is reuse_freed_memory()
