"""`cvm-index build --engine ray`: the same tile ids and bit-identical vectors as the local
engine, on a local Ray cluster of 2 CPUs; resumes after a killed actor and a killed driver; clear
errors without Ray and for a bad address."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from indexer import ray_engine
from indexer.cli import main
from indexer.embed import TileTask
from indexer.errors import UsageError
from storage import catalog
from storage.db import make_engine, session_scope
from tests.indexer.test_resume import _args, _kill_mid_embedding, _result

# _args: 784 tiles (28 x 28 at a 15 m stride over the generated cogeo.tif) in 13 shards of 64,
# batches of 16
SHARDS = 13

Result = tuple[dict[int, tuple[float, float]], dict[int, np.ndarray]]


def _same(got: Result, expected: Result) -> None:
    tiles, vectors = got
    assert tiles == expected[0]  # same ids at the same places
    assert vectors.keys() == expected[1].keys()
    for i, v in vectors.items():
        assert np.array_equal(v, expected[1][i]), f"tile {i}: vectors differ"


def _status(url: str) -> str:
    engine = make_engine(url)
    with session_scope(engine) as s:
        build = catalog.get_build(s, 1)
        assert build is not None
        status = build.status
    engine.dispose()
    return status


# --- without a cluster ---------------------------------------------------------------------------


def test_engine_ray_without_ray_names_the_extra(
    tmp_path: Path, tiny_weights: Path, mercator_cog: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when absent
    url, idx = f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "idx"
    assert main([*_args(url, idx, tiny_weights, mercator_cog), "--engine", "ray"]) == 2
    err = capsys.readouterr().err
    assert "--engine ray needs Ray" in err and "pip install 'cvm-geoloc[ray]'" in err
    assert "Traceback" not in err
    assert not (tmp_path / "c.db").exists() and not idx.exists()  # nothing written


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("127.0.0.1:1", "--ray-address 127.0.0.1:1: no Ray cluster answers there"),
        ("ray://127.0.0.1:1", "--ray-address ray://127.0.0.1:1: no Ray cluster answers there"),
        ("localhost:port", "--ray-address localhost:port: not HOST:PORT, ray://HOST:PORT or auto"),
    ],
)
def test_bad_ray_address_is_a_clear_error(
    tmp_path: Path, tiny_weights: Path, mercator_cog: Path, capsys, address: str, message: str
) -> None:
    url, idx = f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "idx"
    started = time.monotonic()
    code = main([*_args(url, idx, tiny_weights, mercator_cog), "--engine", "ray", "--ray-address", address])
    assert code == 2
    err = capsys.readouterr().err
    assert f"cvm-index: error: {message}" in err and "Traceback" not in err
    assert time.monotonic() - started < 30  # Ray alone retries an unreachable address for minutes
    assert not (tmp_path / "c.db").exists()


def test_ray_options_need_engine_ray(tmp_path: Path, tiny_weights: Path, mercator_cog: Path, capsys) -> None:
    url, idx = f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "idx"
    assert main([*_args(url, idx, tiny_weights, mercator_cog), "--ray-address", "auto"]) == 2
    assert "--ray-address and --ray-actors go with --engine ray" in capsys.readouterr().err


def _fake_ray(**resources: float) -> SimpleNamespace:
    return SimpleNamespace(cluster_resources=lambda: dict(resources))


def test_pool_one_gpu_per_actor_when_the_cluster_has_gpus() -> None:
    setup = ray_engine.plan_resources(_fake_ray(CPU=32, GPU=4), "auto", 0, 0)
    assert (setup.actors, setup.gpus, setup.device) == (4, 1, "cuda")
    assert ray_engine.plan_resources(_fake_ray(CPU=32, GPU=4), "auto", 2, 0).actors == 2
    cpu = ray_engine.plan_resources(_fake_ray(CPU=32, GPU=4), "cpu", 0, 3)
    assert (cpu.actors, cpu.gpus, cpu.device, cpu.threads) == (16, 0, "cpu", 3)
    # without --torch-threads, 16 CPU actors share the 32 CPUs instead of taking a thread per core each
    shared = ray_engine.plan_resources(_fake_ray(CPU=32, GPU=4), "cpu", 0, 0)
    assert (shared.actors, shared.threads) == (16, 2)
    with pytest.raises(UsageError, match="more GPU actors than the cluster's 4 GPUs"):
        ray_engine.plan_resources(_fake_ray(CPU=32, GPU=4), "auto", 5, 0)


def test_pool_leaves_cpus_to_the_readers() -> None:
    setup = ray_engine.plan_resources(_fake_ray(CPU=2), "auto", 0, 0)
    assert (setup.actors, setup.gpus, setup.cpus) == (1, 0, 1.0)  # 1 CPU embeds, 1 reads
    assert setup.threads == 0  # a single actor: one thread per core, as the local engine
    with pytest.raises(UsageError, match="would leave none of the Ray cluster's 2 CPUs to read tiles"):
        ray_engine.plan_resources(_fake_ray(CPU=2), "auto", 2, 0)
    with pytest.raises(UsageError, match="--device cuda asked for, but the Ray cluster has no GPU"):
        ray_engine.plan_resources(_fake_ray(CPU=8), "cuda", 0, 0)


def test_shard_rows_carry_the_tasks_unchanged() -> None:
    shard = [TileTask(7, "/a.tif", (0.5, 1.25, 117.2, 117.2)), TileTask(8, "/tiles/b.png", None)]
    assert ray_engine.item_tasks(ray_engine.shard_item(shard)) == shard


def test_a_workers_error_is_reported_by_its_own_line() -> None:
    # the shape of Ray's ActorDiedError for an actor whose constructor raised (Ray 2.60)
    ray_error = RuntimeError(
        "The actor died because of an error raised in its creation task, ray::MapWorker(...)\n"
        '  File "/x/ray/data/_internal/util.py", line 115, in __init__\n'
        "    super().__init__(*args, **kwargs)\n"
        "indexer.errors.UsageError: /w.pt: this worker's file is not the build's weights (sha256 differs)"
    )
    assert ray_engine._first_line(ray_error) == (
        "indexer.errors.UsageError: /w.pt: this worker's file is not the build's weights (sha256 differs)"
    )
    assert ray_engine._first_line(ConnectionError("refused\nmore")) == "refused"


# --- on a local Ray cluster of 2 CPUs ----------------------------------------------------------


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A local Ray cluster (2 CPUs) for the module; the builds in this process join it."""
    import ray

    # Ray's usage statistics would be sent over the network: not from a test
    saved = os.environ.get("RAY_USAGE_STATS_ENABLED")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    # address "local": a new instance even where `ray start` runs a cluster on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("RAY_USAGE_STATS_ENABLED", None)
        else:
            os.environ["RAY_USAGE_STATS_ENABLED"] = saved


@pytest.fixture(scope="module")
def local_result(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path, mercator_cog: Path) -> Result:
    """The local engine's build of the inputs every test here builds."""
    tmp = tmp_path_factory.mktemp("local")
    url = f"sqlite:///{tmp / 'local.db'}"
    assert main(_args(url, tmp / "idx", tiny_weights, mercator_cog)) == 0
    return _result(url, tmp / "idx")


@pytest.mark.slow
def test_ray_engine_gives_the_local_engines_result(
    tmp_path: Path, tiny_weights: Path, mercator_cog: Path, ray_address: str, local_result: Result, capsys
) -> None:
    url, idx = f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "idx"
    assert main([*_args(url, idx, tiny_weights, mercator_cog), "--engine", "ray"]) == 0
    captured = capsys.readouterr()
    assert "ray: 1 embedding actor(s) (CPU," in captured.err
    assert "build 1: complete" in captured.out
    _same(_result(url, idx), local_result)


@pytest.mark.slow
def test_killed_actor_is_restarted_and_the_build_completes(
    tmp_path: Path,
    tiny_weights: Path,
    mercator_cog: Path,
    ray_address: str,
    local_result: Result,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, idx = f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "idx"
    monkeypatch.setenv(ray_engine.FAULT_ENV, "10")  # the actor dies after 10 of the 49 batches
    assert main([*_args(url, idx, tiny_weights, mercator_cog), "--engine", "ray"]) == 0
    assert (idx / ".ray-fault-1").exists()  # the actor did exit mid-build
    _same(_result(url, idx), local_result)


@pytest.mark.slow
@pytest.mark.parametrize("first_engine", ["ray", "local"])
def test_killed_driver_resumes_on_ray_to_the_same_result(
    tmp_path: Path,
    tiny_weights: Path,
    mercator_cog: Path,
    ray_address: str,
    local_result: Result,
    capsys: pytest.CaptureFixture[str],
    first_engine: str,
) -> None:
    url, idx = f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "idx"
    args = [*_args(url, idx, tiny_weights, mercator_cog), "--engine", "ray"]
    # the driver as its own process, killed -9 mid-build: a Ray driver joining the module's
    # cluster by address, or a local build (the engine is not part of the fingerprint)
    first = [*args, "--ray-address", ray_address] if first_engine == "ray" else args[:-2]
    shards = idx / "build-1.work" / "shards"
    _kill_mid_embedding([sys.executable, "-m", "indexer.cli", *first], shards, total_shards=SHARDS)
    assert _status(url) == "building"
    capsys.readouterr()
    assert main(args) == 0  # the same inputs: resumes build 1 on Ray, skipping the shards written
    assert "build 1: complete (resumed)" in capsys.readouterr().out
    _same(_result(url, idx), local_result)
