"""An interrupted build (SIGKILL mid-embedding) resumes to exactly the uninterrupted result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

from indexer.cli import main
from storage import catalog
from storage.db import make_engine, session_scope
from storage.faiss_index import read_index
from tests.support.paths import REPO_ROOT


def _args(url: str, idx: Path, weights: Path, cogeo: Path) -> list[str]:
    # 15 m stride over cogeo: 784 tiles in 13 shards of 64, enough shards for a kill to land mid-embedding
    return [
        "--database-url", url, "--index-dir", str(idx), "build", "--no-progress", "--weights", str(weights),
        "--imagery", str(cogeo), "--stride-m", "15", "--shard-size", "64", "--batch-size", "16",
    ]  # fmt: skip


def _result(url: str, idx: Path) -> tuple[dict[int, tuple[float, float]], dict[int, np.ndarray]]:
    engine = make_engine(url)
    with session_scope(engine) as s:
        b = catalog.get_active_build(s)
        assert b is not None and b.status == "complete"
        tiles = {t.id: (t.lat, t.lon) for t in catalog.iter_tiles(s, b.id)}
        folder = Path(str(b.index_path))
    engine.dispose()
    index, _ = read_index(folder)
    ids = faiss.vector_to_array(faiss.downcast_index(index).id_map)
    return tiles, {int(i): index.reconstruct(int(i)) for i in ids}


def _kill_mid_embedding(cmd: list[str], shard_dir: Path, total_shards: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(list(shard_dir.glob("shard-*.npz"))) < 3:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "no shard written in time"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert 3 <= len(list(shard_dir.glob("shard-*.npz"))) < total_shards


def test_sigkill_then_resume_equals_uninterrupted_build(
    tmp_path: Path, tiny_weights: Path, mercator_cog: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cogeo = mercator_cog
    url_a, idx_a = f"sqlite:///{tmp_path / 'a.db'}", tmp_path / "idx-a"
    url_b, idx_b = f"sqlite:///{tmp_path / 'b.db'}", tmp_path / "idx-b"
    assert main(_args(url_a, idx_a, tiny_weights, cogeo)) == 0
    expected_tiles, expected_vectors = _result(url_a, idx_a)
    assert len(expected_tiles) == 28 * 28  # (484 m of ground - 70) // 15 + 1 = 28 per axis

    cmd = [sys.executable, "-m", "indexer.cli", *_args(url_b, idx_b, tiny_weights, cogeo)]
    _kill_mid_embedding(cmd, idx_b / "build-1.work" / "shards", total_shards=13)
    engine = make_engine(url_b)
    with session_scope(engine) as s:
        assert catalog.get_active_build(s) is None  # nothing half-built is ever served
        assert catalog.get_build(s, 1).status == "building"
    engine.dispose()
    assert not (idx_b / "build-1").exists()

    capsys.readouterr()
    assert main(_args(url_b, idx_b, tiny_weights, cogeo)) == 0  # same command: resumes build 1
    assert "build 1: complete (resumed)" in capsys.readouterr().out
    tiles, vectors = _result(url_b, idx_b)
    assert tiles == expected_tiles  # same ids, same places: no duplicate, no gap
    assert vectors.keys() == expected_vectors.keys()
    for i, v in vectors.items():
        np.testing.assert_array_equal(v, expected_vectors[i])
    assert not (idx_b / "build-1.work").exists()
