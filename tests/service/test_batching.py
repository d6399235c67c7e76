"""Micro-batching: concurrent requests share forward passes and get the same answers."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from service.batcher import MicroBatcher
from service.errors import NotReady
from service.main import create_app
from tests.support.service_world import World, panorama_bytes, photo_bytes


class Recorder:
    """A batch function that squares numbers and records the batches it was given."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.delay_s = delay_s
        self.thread_names: set[str] = set()

    def __call__(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        self.thread_names.add(threading.current_thread().name)
        time.sleep(self.delay_s)
        return [i * i for i in items]


async def _submit_all(batcher: MicroBatcher[int, int], items: list[int]) -> list[int]:
    await batcher.start()
    try:
        results = await asyncio.gather(*(batcher.submit(i) for i in items))
    finally:
        await batcher.stop()
    return [r for r, _ in results]


def test_batch_concurrent_submissions_into_few_calls() -> None:
    fn = Recorder()
    results = asyncio.run(_submit_all(MicroBatcher(fn, window_s=0.05, max_batch=16), list(range(10))))
    assert results == [i * i for i in range(10)]
    assert len(fn.batches) == 1
    assert sorted(fn.batches[0]) == list(range(10))
    # The batch function runs off the event loop thread.
    assert fn.thread_names and all(n.startswith("cvm-forward") for n in fn.thread_names)


def test_batch_respects_max_batch() -> None:
    fn = Recorder()
    results = asyncio.run(_submit_all(MicroBatcher(fn, window_s=0.05, max_batch=4), list(range(10))))
    assert results == [i * i for i in range(10)]
    assert [len(b) for b in fn.batches] == [4, 4, 2]


def test_batch_lone_request_does_not_wait_for_window() -> None:
    async def one() -> float:
        batcher = MicroBatcher(Recorder(), window_s=2.0, max_batch=16)
        await batcher.start()
        t0 = time.perf_counter()
        await batcher.submit(3)
        elapsed = time.perf_counter() - t0
        await batcher.stop()
        return elapsed

    assert asyncio.run(one()) < 0.5  # nobody else announced: no 2 s window


def test_batch_waits_for_announced_requests() -> None:
    async def scenario() -> list[list[int]]:
        fn = Recorder()
        batcher = MicroBatcher(fn, window_s=1.0, max_batch=16)
        await batcher.start()

        async def late() -> int:
            with batcher.incoming():
                await asyncio.sleep(0.05)  # still "decoding" when the first item is queued
            return (await batcher.submit(2))[0]

        task = asyncio.create_task(late())
        await asyncio.sleep(0)  # let `late` announce itself
        first = await batcher.submit(1)
        await task
        await batcher.stop()
        assert first[1].batch_size == 2
        return fn.batches

    assert asyncio.run(scenario()) == [[1, 2]]


def test_batch_error_reaches_every_request_and_loop_survives() -> None:
    def failing(items: Sequence[int]) -> list[int]:
        if 13 in items:
            raise ValueError("unlucky")
        return list(items)

    async def scenario() -> tuple[list[object], int]:
        batcher = MicroBatcher(failing, window_s=0.05, max_batch=16)
        await batcher.start()
        outcomes = await asyncio.gather(batcher.submit(13), batcher.submit(1), return_exceptions=True)
        after = (await batcher.submit(7))[0]
        await batcher.stop()
        return outcomes, after

    outcomes, after = asyncio.run(scenario())
    assert all(isinstance(o, ValueError) for o in outcomes)
    assert after == 7


def test_batch_submit_after_stop_is_not_ready() -> None:
    async def scenario() -> None:
        batcher = MicroBatcher(Recorder(), window_s=0.0, max_batch=1)
        await batcher.start()
        await batcher.stop()
        with pytest.raises(NotReady):
            await batcher.submit(1)

    asyncio.run(scenario())


def test_concurrent_http_requests_share_forwards_with_same_answers(world: World) -> None:
    images = [("p.png", panorama_bytes()), ("q.jpg", photo_bytes())] * 6  # 12 requests
    with TestClient(create_app(world.settings(batch_window_ms=200.0, max_batch=16))) as client:
        localizer = client.app.state.cvm.localizer  # type: ignore[attr-defined]

        def ask(item: tuple[str, bytes]) -> dict:
            resp = client.post("/localize", params={"k": 5}, files={"image": item})
            assert resp.status_code == 200, resp.text
            return resp.json()

        sequential = [ask(item) for item in images[:2]]
        before = localizer.forward_calls
        with ThreadPoolExecutor(max_workers=len(images)) as pool:
            concurrent = list(pool.map(ask, images))
        forwards = localizer.forward_calls - before

    assert forwards < len(images)
    assert max(r["batch_size"] for r in concurrent) > 1
    for i, got in enumerate(concurrent):
        want = sequential[i % 2]
        assert [c["tile_id"] for c in got["candidates"]] == [c["tile_id"] for c in want["candidates"]]
        for a, b in zip(got["candidates"], want["candidates"], strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_batch_solo_runs_in_batch_thread_and_later_batches_wait() -> None:
    async def scenario() -> tuple[bool, bool, str, list[int], bool]:
        fn = Recorder()
        batcher = MicroBatcher(fn, window_s=0.0, max_batch=16)
        await batcher.start()
        idle_before = batcher.idle()
        release = threading.Event()

        def alone() -> str:
            release.wait(5.0)
            return threading.current_thread().name

        solo = asyncio.create_task(batcher.solo(alone))
        await asyncio.sleep(0.01)
        idle_during = batcher.idle()
        queued = asyncio.create_task(batcher.submit(4))
        await asyncio.sleep(0.05)
        waited = not queued.done()  # the one batch thread is still running the solo call
        release.set()
        name = await solo
        result, _ = await queued
        await batcher.stop()
        return idle_before, idle_during, name, [result], waited

    idle_before, idle_during, name, results, waited = asyncio.run(scenario())
    assert idle_before and not idle_during
    assert name.startswith("cvm-forward")
    assert results == [16] and waited


def test_batch_not_idle_while_a_request_is_announced() -> None:
    async def scenario() -> tuple[bool, bool]:
        batcher = MicroBatcher(Recorder(), window_s=0.0, max_batch=16)
        await batcher.start()
        with batcher.incoming():
            announced = batcher.idle()
        after = batcher.idle()
        await batcher.stop()
        return announced, after

    assert asyncio.run(scenario()) == (False, True)


def test_lone_http_request_is_a_batch_of_one_without_queueing(client: TestClient) -> None:
    localizer = client.app.state.cvm.localizer  # type: ignore[attr-defined]
    before = localizer.forward_calls
    body = client.post("/localize", files={"image": ("p.png", panorama_bytes())}).json()
    assert localizer.forward_calls == before + 1
    assert body["batch_size"] == 1
    assert body["timings_ms"]["queue"] == 0.0
