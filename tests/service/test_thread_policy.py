"""The service's threads: the batch thread holds torch's pool, every other thread computes with
one, and the thread counts come from the runtime's settings."""

from __future__ import annotations

import asyncio
import threading
from unittest.mock import MagicMock

import pytest
import torch

from model.runtime import RuntimeSettings
from service.core.config import ServiceSettings
from service.pipeline import LocalizationService


def _in_new_thread() -> int:
    out: list[int] = []
    t = threading.Thread(target=lambda: out.append(torch.get_num_threads()))
    t.start()
    t.join()
    return out[0]


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


def test_service_settings_take_the_runtime_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert issubclass(ServiceSettings, RuntimeSettings)
    monkeypatch.setenv("CVM_SEARCH_THREADS", "2")
    monkeypatch.setenv("CVM_TORCH_THREADS", "5")
    settings = ServiceSettings()
    assert (settings.search_threads, settings.torch_threads) == (2, 5)
    monkeypatch.setenv("CVM_TORCH_THREADS", "-1")
    with pytest.raises(ValueError, match="torch_threads"):
        ServiceSettings()
