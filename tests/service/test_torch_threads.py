"""Torch's thread pool belongs to the service's batch thread; every other thread uses one."""

from __future__ import annotations

import asyncio
import os
import threading
from unittest.mock import MagicMock

import torch

from service.pipeline import LocalizationService
from service.torch_threads import claim_pool, compute_single_threaded


def _in_new_thread() -> int:
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
        assert torch.get_num_threads() == 1 and _in_new_thread() == 1
    finally:
        torch.set_num_threads(before)


def test_only_the_batch_thread_holds_the_pool() -> None:
    before = torch.get_num_threads()
    service = LocalizationService(MagicMock(), MagicMock(), window_s=0.001, max_batch=4, torch_threads=3)

    async def scenario() -> tuple[int, int, int]:
        await service.start()
        try:
            batch = await service.batcher.solo(torch.get_num_threads)
            return batch, torch.get_num_threads(), await asyncio.to_thread(torch.get_num_threads)
        finally:
            await service.stop()

    try:
        batch, loop_thread, helper = asyncio.run(scenario())
        assert batch == 3  # the batch thread: forward passes and searches
        assert loop_thread == 1 and helper == 1 and _in_new_thread() == 1
    finally:
        torch.set_num_threads(before)
