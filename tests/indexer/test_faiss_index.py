"""Index choice, recall against exact search, and index/metadata consistency checks."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from storage import faiss_index as fi
from storage.errors import IndexMismatch
from storage.settings import Settings
from tests.support.vectors import clustered


def test_choose_spec_by_size() -> None:
    assert fi.choose_spec("auto", 49_999, 256).kind == "flat"
    big = fi.choose_spec("auto", 1_000_000, 256)
    assert big.kind == "ivfpq" and big.factory == "IVF4000,PQ64x8" and big.nprobe is not None
    assert fi.choose_spec("hnsw", 10, 256).factory == "IDMap2,HNSW32"
    with pytest.raises(ValueError, match="unknown index type"):
        fi.choose_spec("lsh", 10, 8)


@pytest.mark.parametrize("kind,floor", [("ivfpq", 0.6), ("hnsw", 0.95)])
def test_approximate_index_recall_against_brute_force(kind: str, floor: float) -> None:
    x = clustered(1500, 32)
    ids = np.arange(1000, 2500, dtype=np.int64)
    spec = fi.choose_spec(kind, len(x), 32)
    index = fi.train(fi.new_index(spec, 32), spec, x[:: max(1, len(x) // max(spec.train_size, 1))])
    index.add_with_ids(x, ids)
    queries = x[::10]
    recall = fi.measure_recall(index, queries, iter([x[:600], x[600:]]), ids)
    # brute force computed here with numpy, independently of faiss
    exact = ids[np.argsort(-(queries @ x.T), axis=1)[:, :10]]
    _, approx = index.search(queries, 10)
    by_hand = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall == pytest.approx(by_hand, abs=0.01)
    assert recall >= floor


def test_read_index_checks_metadata(tmp_path: Path) -> None:
    x = clustered(100, 8)
    spec = fi.choose_spec("flat", 100, 8)
    index = fi.new_index(spec, 8)
    index.add_with_ids(x, np.arange(100, dtype=np.int64) + 5)
    fi.write_index(index, tmp_path, {"factory": spec.factory, "weights_sha256": "ab", "build_id": 1})
    loaded, meta = fi.read_index(tmp_path)
    assert loaded.ntotal == 100 and meta["metric"] == "inner_product" and meta["d"] == 8
    assert loaded.metric_type == faiss.METRIC_INNER_PRODUCT
    np.testing.assert_array_equal(fi.stored_vectors(loaded, np.array([5, 104])), x[[0, 99]])
    meta["ntotal"] = 99
    (tmp_path / fi.META_FILE).write_text(json.dumps(meta))
    with pytest.raises(IndexMismatch, match="holds 100 vectors of 8 dims, index_meta.json says 99"):
        fi.read_index(tmp_path)
    (tmp_path / fi.INDEX_FILE).write_bytes(b"garbage")
    with pytest.raises(IndexMismatch, match="checksum mismatch"):
        fi.read_index(tmp_path)
    del meta["index_sha256"]  # as a build written before checksums were recorded
    (tmp_path / fi.META_FILE).write_text(json.dumps(meta))
    with pytest.raises(IndexMismatch, match="unreadable FAISS index"):
        fi.read_index(tmp_path)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CVM_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("CVM_DATABASE_URL", raising=False)
    monkeypatch.delenv("CVM_INDEX_DIR", raising=False)
    s = Settings()
    assert s.database_url == f"sqlite:///{tmp_path / 'cvm.db'}" and s.index_dir == tmp_path / "indexes"
    monkeypatch.setenv("CVM_DATABASE_URL", "postgresql+psycopg://u@h/db")
    monkeypatch.setenv("CVM_INDEX_DIR", str(tmp_path / "x"))
    s = Settings()
    assert s.database_url == "postgresql+psycopg://u@h/db" and s.index_dir == tmp_path / "x"


def _written(tmp_path: Path, kind: str, x: np.ndarray, name: str = "b") -> Path:
    spec = fi.choose_spec(kind, len(x), x.shape[1])
    index = fi.train(fi.new_index(spec, x.shape[1]), spec, x)
    index.add_with_ids(x, np.arange(len(x), dtype=np.int64))
    folder = tmp_path / name
    fi.write_index(index, folder, {"factory": spec.factory})
    return folder


def test_metadata_records_the_index_checksum(tmp_path: Path) -> None:
    import hashlib

    folder = _written(tmp_path, "flat", clustered(50, 8))
    meta = json.loads((folder / fi.META_FILE).read_text())
    assert meta["index_sha256"] == hashlib.sha256((folder / fi.INDEX_FILE).read_bytes()).hexdigest()


def test_a_changed_byte_is_refused_by_checksum_naming_the_file(tmp_path: Path) -> None:
    folder = _written(tmp_path, "flat", clustered(50, 8))
    data = bytearray((folder / fi.INDEX_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one stored vector: FAISS alone would not notice
    (folder / fi.INDEX_FILE).write_bytes(bytes(data))
    with pytest.raises(IndexMismatch, match=f"{folder / fi.INDEX_FILE}: checksum mismatch"):
        fi.read_index(folder)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_a_nan_vector_is_refused(tmp_path: Path, kind: str) -> None:
    x = clustered(60, 8)
    x[17, 3] = np.nan
    folder = _written(tmp_path, kind, x)  # checksum of the file as written: only the NaN is wrong
    with pytest.raises(IndexMismatch, match="not finite"):
        fi.read_index(folder)


def test_huge_size_field_in_an_unchecksummed_index_is_a_clear_error(tmp_path: Path) -> None:
    import struct

    x = clustered(40, 8)
    folder = _written(tmp_path, "flat", x)
    data = bytearray((folder / fi.INDEX_FILE).read_bytes())
    at = data.find(struct.pack("<Q", x.size))  # the stored vectors' element count
    assert at > 0
    data[at : at + 8] = struct.pack("<Q", 1 << 60)
    (folder / fi.INDEX_FILE).write_bytes(bytes(data))
    meta = json.loads((folder / fi.META_FILE).read_text())
    del meta["index_sha256"]  # as a build written before checksums were recorded
    (folder / fi.META_FILE).write_text(json.dumps(meta))
    with pytest.raises(IndexMismatch, match=f"{folder / fi.INDEX_FILE}: unreadable FAISS index"):
        fi.read_index(folder)


@pytest.mark.parametrize(("kind", "n"), [("flat", 3000), ("hnsw", 2000), ("ivfpq", 2000)])
def test_memory_estimate_matches_the_built_index(kind: str, n: int) -> None:
    """What `cvm-index build --dry-run` reports is within 2 % of the index's measured size."""
    d = 32
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    spec = fi.choose_spec(kind, n, d)
    index = fi.train(fi.new_index(spec, d), spec, x[: spec.train_size] if spec.train_size else x)
    index.add_with_ids(x, np.arange(n, dtype=np.int64))
    estimate = fi.estimate_memory(spec, n, d)
    assert estimate.n == n and abs(estimate.total / fi.index_bytes(index) - 1) < 0.02
