"""`cvm-index build --memory-budget`: the index chosen for a budget, its measured size, the exact
re-rank of compressed indexes (recall, the prior, missing or changed vector files) and the
figures of `cvm-index info`. Expected values come from numpy brute force and hand arithmetic."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import pytest

from indexer.cli import main
from service.flat_search import FlatView, RerankView
from service.prior import Prior
from service.snapshot import IndexSnapshot
from storage import faiss_index as fi
from storage.budget import BudgetError, parse_size
from storage.errors import ExactVectorsError, IndexMismatch
from tests.support.vectors import clustered, random_places

# ------------------------------------------------------------------------------------ the budget


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512MB", 512 * 10**6),
        ("2GiB", 2 * 2**30),
        ("1.5G", int(1.5 * 2**30)),
        ("1000", 1000),
        ("64 kib", 65536),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "12XB", "-5MB", "0", "1e9"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(BudgetError, match="size|more than 0"):
        parse_size(text)


def _hnsw_per_vector(d: int, m: int) -> float:
    # float32 vector, id, 2M level-0 links and ~M/(M-1) upper ones of 4 bytes, a level, an offset
    return 4 * d + 8 + 4 * (2 * m + m / (m - 1)) + 4 + 8


def test_budget_thresholds_flat_hnsw_quantised() -> None:
    n, d = 20_000, 1024
    flat = n * (4 * d + 8 + d)  # vectors, ids and the service's int8 copy
    assert fi.choose_spec("auto", n, d, flat).factory == "IDMap2,Flat"
    # one byte less: HNSW32, which takes less than flat + its int8 copy at d = 1,024
    assert fi.choose_spec("auto", n, d, flat - 1).factory == "IDMap2,HNSW32"

    n = 1_000_000
    hnsw32 = math.ceil(n * _hnsw_per_vector(d, 32))
    assert fi.choose_spec("auto", n, d, hnsw32 + 1000).factory == "IDMap2,HNSW32"
    # largest M whose graph fits: 2M + M/(M-1) <= 21 bytes/4 left over -> M = 9
    budget = int(n * (4 * d + 8 + 12 + 4 * 21))
    assert fi.choose_spec("auto", n, d, budget).factory == "IDMap2,HNSW9"
    # HNSW8 does not fit: quantised, the most sub-quantizers that fit (256 codes + 8 id bytes)
    spec = fi.choose_spec("auto", n, d, int(n * _hnsw_per_vector(d, 8)) - 1)
    assert spec.kind == "ivfpq" and spec.factory == "OPQ256_1280,IVF16384_HNSW32,PQ256x8" and spec.rerank
    # 200 MB: 136 MB of m=128 codes + ~68 MB of tables is too much; m=64 fits
    assert fi.choose_spec("auto", n, d, 200 * 10**6).factory == "OPQ64_448,IVF16384_HNSW32,PQ64x8"
    with pytest.raises(BudgetError, match="too small for 1,000,000 tiles"):
        fi.choose_spec("auto", n, d, 10 * 10**6)
    with pytest.raises(BudgetError, match="quantised indexes need at least 10,000 tiles"):
        fi.choose_spec("auto", 5000, d, 10**6)
    with pytest.raises(BudgetError, match="chooses the index type itself"):
        fi.choose_spec("flat", 5000, d, 10**9)


def test_small_collections_get_flat_coarse_quantizers() -> None:
    # autofaiss's list count: 4 sqrt(n) rounded to a power of two; HNSW only from 1,000 lists
    assert fi.quantised_spec(100_000, 1024, 64).factory == "OPQ64_448,IVF1024_HNSW32,PQ64x8"
    assert fi.quantised_spec(30_000, 1024, 64).factory == "OPQ64_448,IVF512,PQ64x8"  # 4*173=693 -> 512
    assert fi.quantised_spec(10_000, 16, 8).factory == "OPQ8_24,IVF256,PQ8x8"  # <= n/39 lists


# --------------------------------------------------------------------------- a built budget index

N, D, BUDGET = 10_000, 16, 300_000


@pytest.fixture(scope="module")
def budget_build(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, np.ndarray, np.ndarray, fi.IndexSpec]:
    """A budgeted (compressed) index of clustered vectors with its exact vectors, written."""
    x = clustered(N, D, seed=4)
    ids = np.arange(N, dtype=np.int64) * 3 + 7  # tile ids are not rows
    spec = fi.choose_spec("auto", N, D, BUDGET)
    index = fi.train(fi.new_index(spec, D), spec, x[: spec.train_size])
    index.add_with_ids(x, ids)
    folder = tmp_path_factory.mktemp("budget") / "build"
    work = folder.parent / "work"
    exact = fi.write_exact_vectors(
        work, ((ids[i : i + 3000], x[i : i + 3000]) for i in range(0, N, 3000)), N, D
    )
    fi.attach_exact(index, exact)
    fi.write_index(index, folder, {"factory": spec.factory, "index_type": spec.kind, "nprobe": spec.nprobe})
    return folder, x, ids, spec


def _brute(x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return ids[np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :k]]


def _recall(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean([len(set(g) & set(w)) / want.shape[1] for g, w in zip(got, want, strict=True)]))


def test_budget_index_fits_and_is_compressed(budget_build: tuple) -> None:
    folder, _, _, spec = budget_build
    assert spec.factory == "OPQ8_24,IVF256,PQ8x8"  # m = 8 fits 300 kB; m = 16 would not
    index, meta = fi.read_index(folder)
    measured = faiss.serialize_index(index).nbytes
    assert measured <= BUDGET and abs(measured / fi.estimate_memory(spec, N, D).total - 1) < 0.02
    assert (folder / fi.VECTORS_FILE).stat().st_size >= N * D * 4  # the exact vectors, on disk
    assert meta["vectors_sha256"] and meta["vector_ids_sha256"] and fi.exact_vectors_of(index) is not None


def test_rerank_recall_against_brute_force(budget_build: tuple) -> None:
    folder, x, ids, _ = budget_build
    index, _ = fi.read_index(folder)
    rng = np.random.default_rng(1)
    q = x[rng.choice(N, 200, replace=False)] + 0.02 * rng.standard_normal((200, D)).astype(np.float32)
    want = _brute(x, ids, q, 10)
    _, plain = fi.search(index, q, 10, rerank=False)
    _, served = FlatView.of(index).search(q, 10)  # type: ignore[union-attr]
    plain_recall, served_recall = _recall(plain, want), _recall(served, want)
    assert served_recall >= 0.95 and served_recall > plain_recall
    # the storage-side re-rank (build and info figures) gives the same answer as the service's
    _, stored = fi.search(index, q, 10)
    assert _recall(stored, served) > 0.99
    recalls = fi.measure_recalls(index, q, fi.exact_top(q, iter([x[:5000], x[5000:]]), ids), (False, True))
    assert recalls == pytest.approx([plain_recall, _recall(stored, want)], abs=1e-9)


def test_nprobe_is_tuned_to_the_fewest_lists_reaching_the_recall_target(budget_build: tuple) -> None:
    folder, x, ids, _ = budget_build
    index, _ = fi.read_index(folder)
    rng = np.random.default_rng(3)
    q = x[rng.choice(N, 300, replace=False)] + 0.02 * rng.standard_normal((300, D)).astype(np.float32)
    nprobe, recall, tried = fi.tune_nprobe(index, q, fi.exact_top(q, iter([x]), ids), most=64)
    assert [p for p, _ in tried] == [2**i for i in range(len(tried))] and tried[-1] == (nprobe, recall)
    want = _brute(x, ids, q, 10)

    def served_recall(probes: int) -> float:
        fi.set_nprobe(index, probes)
        return _recall(FlatView.of(index).search(q, 10)[1], want)  # type: ignore[union-attr]

    assert 1 < nprobe < 64 and faiss.extract_index_ivf(index).nprobe == nprobe
    assert served_recall(nprobe) >= fi.RECALL_TARGET > served_recall(nprobe // 2)
    assert fi.tune_nprobe(index, q, fi.exact_top(q, iter([x]), ids), most=1)[0] == 1  # never more than `most`


def test_nprobe_tuning_stops_where_recall_stops_rising(budget_build: tuple) -> None:
    # coarse codes and no exact vectors: recall is limited by the codes, not the lists probed,
    # so probing every list costs time and buys (almost) nothing
    _, x, ids, _ = budget_build
    index = faiss.index_factory(D, "IVF64,PQ4x4", faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add_with_ids(x, ids)
    rng = np.random.default_rng(4)
    q = x[rng.choice(N, 300, replace=False)] + 0.02 * rng.standard_normal((300, D)).astype(np.float32)
    want = _brute(x, ids, q, 10)

    def recall_at(probes: int) -> float:
        fi.set_nprobe(index, probes)
        return _recall(index.search(q, 10)[1], want)

    nprobe, recall, tried = fi.tune_nprobe(index, q, fi.exact_top(q, iter([x]), ids), most=64)
    assert faiss.extract_index_ivf(index).nprobe == nprobe < 64
    assert recall < fi.RECALL_TARGET and tried[-1][0] == 2 * nprobe
    assert tried[-1][1] - recall < fi.PLATEAU_GAIN  # the doubling that did not pay
    assert recall == pytest.approx(recall_at(nprobe)) and recall_at(64) < recall + 0.02


@pytest.mark.parametrize("box", [(14.2, 44.3, 14.6, 44.7), (14.0, 44.0, 15.5, 45.6)])  # ~4 %, ~56 %
def test_prior_on_the_budget_index_equals_exhaustive_filtered(budget_build: tuple, box: tuple) -> None:
    folder, x, ids, _ = budget_build
    index, meta = fi.read_index(folder)
    view = FlatView.of(index)
    assert isinstance(view, RerankView) and view.int8 is None
    rng = np.random.default_rng(2)
    snap = IndexSnapshot(
        build_id=1, index=index, meta=meta, tiles=random_places(N, rng, ids), index_dir=folder, flat=view
    )
    allowed = snap.select(Prior(bbox=box))
    q = x[[5, 500, 5000]] + 0.05 * rng.standard_normal((3, D)).astype(np.float32)
    inside = np.isin(ids, allowed)
    for k in (1, 10, 40):
        scores, got = snap.search(q, k, allowed)
        sims = q @ x[inside].T
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]  # ties by row = by id
        np.testing.assert_array_equal(got, ids[inside][order])
        np.testing.assert_allclose(scores, np.take_along_axis(sims, order, axis=1), rtol=1e-5, atol=1e-5)


def test_missing_or_changed_vector_files_are_named_errors(budget_build: tuple, tmp_path: Path) -> None:
    import shutil

    src, *_ = budget_build
    for name in (fi.VECTORS_FILE, fi.VECTOR_IDS_FILE):
        folder = tmp_path / f"missing-{name}"
        shutil.copytree(src, folder)
        (folder / name).unlink()
        with pytest.raises(ExactVectorsError, match=f"{folder / name}: cannot read the exact vectors"):
            fi.read_index(folder)
        folder = tmp_path / f"changed-{name}"
        shutil.copytree(src, folder)
        data = bytearray((folder / name).read_bytes())
        data[-5] ^= 0x01
        (folder / name).write_bytes(bytes(data))
        with pytest.raises(ExactVectorsError, match=f"{folder / name}: checksum mismatch"):
            fi.read_index(folder)
    # the service's loader reports it as it reports any index mismatch
    assert issubclass(ExactVectorsError, IndexMismatch)


def test_info_figures_of_the_budget_index(budget_build: tuple) -> None:
    folder, x, ids, spec = budget_build
    f = fi.index_figures(folder, queries=50)
    index_size = (folder / fi.INDEX_FILE).stat().st_size
    disk = (
        index_size + (folder / fi.VECTORS_FILE).stat().st_size + (folder / fi.VECTOR_IDS_FILE).stat().st_size
    )
    assert f["factory"] == spec.factory and f["ntotal"] == N and f["recall_queries"] == 50
    assert f["ram_bytes_per_tile"] == pytest.approx(index_size / N) and f["disk_bytes_per_tile"] == disk / N
    rows = np.unique(np.linspace(0, N - 1, 50).astype(np.int64))
    want = _brute(x, ids, x[rows], 10)
    index, _ = fi.read_index(folder)
    assert f["recall_at_10"] == pytest.approx(_recall(fi.search(index, x[rows], 10, rerank=False)[1], want))
    assert f["recall_at_10_rerank"] >= 0.95 and f["recall_at_10_rerank"] > f["recall_at_10"]


@pytest.mark.skipif(faiss.get_num_gpus() == 0, reason="no GPU")
def test_gpu_training_of_a_budget_index() -> None:
    x = clustered(N, D, seed=5)
    spec = fi.choose_spec("auto", N, D, BUDGET)
    index = fi.train(fi.new_index(spec, D), spec, x, use_gpu=True)
    index.add_with_ids(x, np.arange(N, dtype=np.int64))
    assert index.is_trained and fi.index_bytes(index) <= BUDGET


# ----------------------------------------------------------------------------------- the CLI


def test_bad_memory_budget_is_a_cli_error_naming_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["build", "--imagery", "x.tif", "--memory-budget", "lots"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --memory-budget" in err and "'lots' is not a size" in err and "Traceback" not in err
    url = f"sqlite:///{tmp_path / 'c.db'}"
    args = ["--database-url", url, "--index-dir", str(tmp_path), "build", "--imagery", "x.tif"]
    assert main([*args, "--memory-budget", "1GB", "--index-type", "flat"]) == 2
    assert "--memory-budget chooses the index type itself" in capsys.readouterr().err


def test_build_within_a_budget_and_info_prints_the_figures(
    tmp_path: Path, make_raster: Callable[..., Path], tiny_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, idx = f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "idx"
    common = ["--database-url", url, "--index-dir", str(idx)]
    raster = str(make_raster("a.tif", size=(300, 300)))
    build = [*common, "build", "--no-progress", "--weights", str(tiny_weights), "--imagery", raster]
    assert main([*build, "--memory-budget", "1GiB"]) == 0
    capsys.readouterr()
    assert main([*common, "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"]["memory_budget"] == 2**30 and info["stats"]["memory_budget"] == 2**30
    folder = Path(info["index_path"])
    meta = json.loads((folder / fi.META_FILE).read_text())
    assert meta["memory_budget"] == 2**30 and meta["factory"] == "IDMap2,Flat"  # 9 tiles: flat fits
    assert main([*common, "info"]) == 0
    out = capsys.readouterr().out
    per_tile = (folder / fi.INDEX_FILE).stat().st_size / 9
    assert "index          flat (IDMap2,Flat), 9 tiles within a budget of 1.0 GiB" in out
    assert f"bytes per tile {per_tile:,.1f} in RAM" in out
    assert "recall@10      1.000 against exact search (9 stored vectors as queries)" in out
    # a budget no index of 9 tiles fits: refused by name once planned, before any embedding, exit 1
    shards_before = sorted(idx.rglob("shard-*.npz"))
    assert main([*build, "--memory-budget", "100B", "--fresh"]) == 1
    err = capsys.readouterr().err
    assert "--memory-budget: memory budget 100 B is too small for 9 tiles" in err
    assert sorted(idx.rglob("shard-*.npz")) == shards_before  # nothing embedded
    assert main([*common, "info", "--json", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "failed"  # not left as "building"
    # an index that cannot be read: the build's fields, the reason, exit 1
    (folder / fi.INDEX_FILE).write_bytes(b"damaged")
    assert main([*common, "info", "1"]) == 1
    out = capsys.readouterr().out
    assert "status          complete" in out and "index          cannot be read: " in out
    assert f"{folder / fi.INDEX_FILE}: checksum mismatch" in out


def test_the_budget_joins_the_fingerprint_only_when_given() -> None:
    import dataclasses
    import hashlib

    from indexer.params import BuildParams
    from tests.indexer.test_params import SHA, STORED_RASTER

    old = BuildParams.from_json(STORED_RASTER, SHA)  # stored before budgets existed
    assert old.memory_budget is None and old.fingerprint() == STORED_RASTER["fingerprint"]
    assert "memory_budget" not in old.to_json()
    budgeted = dataclasses.replace(old, memory_budget=2**30)
    stored = budgeted.to_json()
    keys = ("inputs", "tiles_csv", "tile_size_m", "stride_m", "index_type")
    ident = {k: stored[k] for k in keys} | {"weights_sha256": SHA, "memory_budget": 2**30}
    want = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
    assert stored["memory_budget"] == 2**30 and stored["fingerprint"] == want != old.fingerprint()
    assert BuildParams.from_json(json.loads(json.dumps(stored)), SHA) == budgeted
    assert not budgeted.same_inputs(old.to_json())  # another budget is another build


def test_info_figures_of_an_hnsw_index(tmp_path: Path) -> None:
    x = clustered(3000, 16, seed=6)
    ids = np.arange(3000, dtype=np.int64) * 2 + 1
    spec = fi.IndexSpec("hnsw", "IDMap2,HNSW8")
    index = fi.new_index(spec, 16)
    index.add_with_ids(x, ids)
    fi.write_index(index, tmp_path, {"factory": spec.factory, "index_type": "hnsw"})
    f = fi.index_figures(tmp_path, queries=40)
    size = (tmp_path / fi.INDEX_FILE).stat().st_size
    assert f["ram_bytes_per_tile"] == f["disk_bytes_per_tile"] == size / 3000 and not f["exact_vectors"]
    rows = np.unique(np.linspace(0, 2999, 40).astype(np.int64))
    _, got = index.search(x[rows], 10)
    assert f["recall_at_10"] == pytest.approx(_recall(got, _brute(x, ids, x[rows], 10)))
    assert f["recall_at_10_rerank"] is None and f["recall_queries"] == 40


def test_restricted_rerank_scores_runs_of_rows_in_place_with_the_exact_answer(budget_build: tuple) -> None:
    """A prior's tiles come in runs of consecutive rows (rows of tiles of a raster): scored as
    views of the map, run by run and in chunks, with the answer of scoring every allowed row."""
    folder, x, ids, _ = budget_build
    index, _ = fi.read_index(folder)
    view = FlatView.of(index)
    assert isinstance(view, RerankView)
    rows = np.r_[100:5200, 6000:6003, 7000:7100, N - 9 : N]  # a run longer than a chunk, short ones, the last
    allowed = ids[rows]
    rng = np.random.default_rng(4)
    q = x[rng.choice(rows, 5, replace=False)] + 0.05 * rng.standard_normal((5, D)).astype(np.float32)
    for k in (1, 10, 300):
        scores, got = view.search(q, k, allowed)
        sims = q @ x[rows].T
        for r in range(len(q)):
            order = np.lexsort((rows, -sims[r]))[:k]
            np.testing.assert_array_equal(got[r], ids[rows[order]])
            np.testing.assert_allclose(scores[r], sims[r][order], rtol=1e-5, atol=1e-6)
