"""`scripts/bench_million.py` runs end to end on a small corpus (its figures are benchmarks, not
tested; that it runs, and that its tables hold what they say, is)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from indexer.cli import main
from tests.support.paths import REPO_ROOT


def _run(*args: str) -> str:
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "bench_million.py"), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_bench_million_on_a_small_corpus(
    tmp_path: Path, make_raster: Callable[..., Path], tiny_weights: Path
) -> None:
    data = tmp_path / "data"
    a = make_raster("a.tif", size=(300, 300), origin=(500000.0, 5000000.0), seed=1)
    b = make_raster("b.tif", size=(300, 300), origin=(530000.0, 5000000.0), seed=2)
    common = ["--database-url", f"sqlite:///{data / 'cvm.db'}", "--index-dir", str(data / "indexes")]
    build = [*common, "build", "--no-progress", "--weights", str(tiny_weights), "--index-type", "flat"]
    assert main([*build, "--imagery", str(a)]) == 0
    assert main([*build, "--imagery", str(b), "--region-km", "10"]) == 0  # a build of regions
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((12, 16))  # the tiny weights' descriptors.astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    np.save(tmp_path / "q.npy", queries)
    args = [
        "--data-dir",
        str(data),
        "--builds",
        "1,2",
        "--rotations",
        "2",
        "--queries",
        str(tmp_path / "q.npy"),
    ]
    args += ["--radii-m", "100,1000", "--repeats", "5", "--work", str(tmp_path)]
    out = _run(*args, "--budgets", "1GiB", "--region-km", "20", "--region-budget", "1GiB")
    # 2 x 9 tiles, each with one turned copy
    assert "36 descriptors of 16 dims (18 tiles x 2); 12 queries" in out
    # a budget this large keeps the exact index: recall 1 against exact search
    assert re.search(r"\| 1GiB \(1\.0 GiB\) \| `IDMap2,Flat` \| - \| [\d.,]+ \| 1/1\.0 \| 1\.000 \|", out), (
        out
    )
    assert re.search(r"\| near, 1,000 m \| [\d.,]+ \|", out)
    # regions sharing a large budget: a flat index each, so exact
    assert re.search(r"^\| \d+ \| 9-9 \| [\d.,]+ \| 1\.000 \|", out, re.M), out
    assert "| regions of 20 km (1.0 GiB) |" in out
    assert "| 1GiB" not in _run(*args, "--budgets", "", "--region-km", "20")  # no single index
    prior = _run(*args, "--prior-only")
    assert "| prior (exact vectors of the tiles inside) |" in prior and "near, 100 m" in prior
