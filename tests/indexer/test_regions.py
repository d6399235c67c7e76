"""Region shards (`cvm-index build --region-km`): the grouping, the build's folders, `info` and
`verify`, and the service's search over the regions (all, or those a prior reaches), which must
equal the search of the same tiles in one index."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import pytest

from cli.main import main as cvm_main
from indexer.cli import main
from model.checkpoint import file_sha256
from service.catalog import Catalog
from service.flat_search import FlatView
from service.prior import Prior
from service.snapshot import IndexPart, IndexSnapshot, load_snapshot
from storage import faiss_index as fi
from storage import regions
from storage.db import make_engine
from tests.support.service_world import panorama_bytes
from tests.support.vectors import random_places

# ------------------------------------------------------------------------------------ grouping


def test_regions_are_cells_about_km_wide_at_any_latitude() -> None:
    """Points 100 m apart along a parallel and along a meridian: a 5 km region holds about 50 of
    them in each direction, at the equator and at 60 degrees north."""
    for lat0 in (0.0, 60.0):
        m_per_deg_lon = math.pi * 6_371_008.8 / 180 * math.cos(math.radians(lat0))
        lons = 10.0 + np.arange(400) * 100.0 / m_per_deg_lon
        lats = lat0 + np.arange(400) * 100.0 / (math.pi * 6_371_008.8 / 180)
        for cells in (
            regions.region_cells(np.full(400, lat0), lons, 5.0),
            regions.region_cells(lats, np.full(400, 10.0), 5.0),
        ):
            _, counts = np.unique(cells, axis=0, return_counts=True)
            inner = counts[1:-1]  # the first and last cells are cut by the line's ends
            assert len(inner) >= 6 and (np.abs(inner - 50) <= 1).all(), (lat0, counts)


def test_group_by_region_partitions_the_tiles_and_boxes_their_centres() -> None:
    rng = np.random.default_rng(3)
    ids = rng.permutation(5000)[:600].astype(np.int64) + 1
    lats, lons = 45.0 + rng.random(600) * 0.3, 15.0 + rng.random(600) * 0.4
    groups = list(regions.group_by_region(ids, lats, lons, 10.0))
    assert 6 <= len(groups) <= 30
    seen = np.concatenate([g for _, g in groups])
    assert sorted(seen.tolist()) == sorted(ids.tolist())  # every tile in exactly one region
    where = dict(zip(ids.tolist(), zip(lats, lons, strict=True), strict=True))
    for region, members in groups:
        assert region.ntotal == len(members) and (np.diff(members) > 0).all()
        w, s, e, n = region.bbox
        pts = np.array([where[int(i)] for i in members])
        assert pts[:, 0].min() == s and pts[:, 0].max() == n and pts[:, 1].min() == w and pts[:, 1].max() == e


# ------------------------------------------------------------------- the service's search over regions


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _index(kind: str, x: np.ndarray, ids: np.ndarray, work: Path) -> object:
    d = x.shape[1]
    factory = {"flat": "IDMap2,Flat", "hnsw": "IDMap2,HNSW16", "ivfpq": "IVF8,PQ8x4"}[kind]
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add_with_ids(x, ids)
    if kind == "ivfpq":  # as built: compressed, with its exact vectors kept for re-ranking
        faiss.extract_index_ivf(index).nprobe = 2
        fi.attach_exact(index, fi.write_exact_vectors(work, [(ids, x)], len(ids), d))
    return index


def _snapshots(
    kind: str, tmp_path: Path, two_pass: bool = False
) -> tuple[IndexSnapshot, IndexSnapshot, np.ndarray]:
    """The same 3,000 tiles (over 2 x 2 degrees) as one index and as regions of 60 km, and 6 queries."""
    rng = np.random.default_rng(11)
    n, d = 3000, 32
    x = _unit(rng, n, d)
    ids = np.arange(n, dtype=np.int64) * 2 + 5
    places = random_places(n, rng, ids)
    lats = np.array([places[int(i)].lat for i in ids])
    lons = np.array([places[int(i)].lon for i in ids])
    row = {int(i): r for r, i in enumerate(ids)}
    limit = 0 if two_pass else 10**12

    def view(index: object) -> FlatView | None:
        return FlatView.of(index, min_values_two_pass=limit) if kind == "flat" else None

    whole = _index(kind, x, ids, tmp_path / "whole")
    parts = []
    for region, members in regions.group_by_region(ids, lats, lons, 60.0):
        rows = [row[int(i)] for i in members]
        # a region too small to train on gets a flat index, as the indexer gives it
        small = len(members) < 64
        index = _index("flat" if small else kind, x[rows], members, tmp_path / region.name)
        parts.append(IndexPart(index, view(index) if not small else FlatView.of(index), region.name))
    assert len(parts) > 4
    one = IndexSnapshot(1, whole, {}, places, Path("."), flat=view(whole))
    split = IndexSnapshot(1, None, {}, places, Path("."), regions=tuple(parts))
    queries = np.concatenate([_unit(rng, 4, d), x[[7, 99]] + 0.05 * _unit(rng, 2, d)])
    return one, split, queries


def _brute_filtered(
    snap: IndexSnapshot, x_of: dict[int, np.ndarray], q: np.ndarray, k: int, allowed: np.ndarray
):
    """Exact inner products of every allowed tile's vector, best first, ties by id."""
    vecs = np.stack([x_of[int(i)] for i in allowed])
    scores = q @ vecs.T
    order = [np.lexsort((allowed, -s))[:k] for s in scores]
    return [allowed[o] for o in order], [s[o] for s, o in zip(scores, order, strict=True)]


@pytest.mark.parametrize(
    ("kind", "two_pass"), [("flat", False), ("flat", True), ("hnsw", False), ("ivfpq", False)]
)
def test_region_search_with_a_prior_equals_exhaustive_search_filtered(
    kind: str, two_pass: bool, tmp_path: Path
) -> None:
    one, split, queries = _snapshots(kind, tmp_path, two_pass)
    x_of = {}
    for part in split.parts:
        for i in part.ids:
            exact = fi.exact_vectors_of(part.index)  # those the re-rank scores with, if kept
            x_of[int(i)] = fi.stored_vectors(part.index, np.array([i]))[0] if exact is None else None
        if exact is not None:
            x_of |= {int(i): np.asarray(v) for i, v in zip(exact.ids, exact.vectors, strict=True)}
    for box in ((14.2, 44.3, 14.6, 44.7), (14.0, 44.0, 15.5, 45.6)):
        allowed = split.select(Prior(bbox=box))
        assert 50 < len(allowed) < split.ntotal
        reached = split.searched_parts(allowed)
        assert 1 <= reached <= len(split.parts)
        for k in (1, 10, 40):
            scores, ids = split.search(queries, k, allowed)
            want_ids, want_scores = _brute_filtered(split, x_of, queries, k, allowed)
            _, one_ids = one.search(queries, k, allowed)
            for r in range(len(queries)):
                np.testing.assert_array_equal(ids[r], want_ids[r])
                np.testing.assert_allclose(scores[r], want_scores[r], rtol=1e-5, atol=1e-5)
                np.testing.assert_array_equal(one_ids[r], ids[r])  # the same as one index
    small = split.select(Prior(bbox=(14.2, 44.3, 14.6, 44.7)))
    assert split.searched_parts(small) < len(split.parts)  # a small prior skips regions


def test_region_search_without_a_prior_merges_every_region(tmp_path: Path) -> None:
    one, split, queries = _snapshots("flat", tmp_path)
    for k in (1, 10, 100):
        s1, i1 = one.search(queries, k)
        s2, i2 = split.search(queries, k)
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_allclose(s1, s2, rtol=1e-6, atol=1e-6)
    assert split.searched_parts() == len(split.parts) and split.ntotal == one.ntotal == 3000


# ------------------------------------------------------------------------------ built by the CLI


def _raster_far_apart(make_raster: Callable[..., Path]) -> list[str]:
    # two rasters about 30 km apart (UTM 33N): two regions of 10 km at least
    a = make_raster("a.tif", size=(300, 300), origin=(500000.0, 5000000.0), seed=1)
    b = make_raster("b.tif", size=(300, 300), origin=(530000.0, 5000000.0), seed=2)
    return [str(a), str(b)]


def test_region_build_info_verify_and_service(
    tmp_path: Path,
    make_raster: Callable[..., Path],
    tiny_weights: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, idx = f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "idx"
    common = ["--database-url", url, "--index-dir", str(idx)]
    build = [
        *common,
        "build",
        "--no-progress",
        "--weights",
        str(tiny_weights),
        "--imagery",
        *_raster_far_apart(make_raster),
    ]
    assert main([*build, "--index-type", "flat", "--no-activate"]) == 0  # build 1: one index
    assert main([*build, "--index-type", "flat", "--region-km", "10"]) == 0  # build 2: regions
    capsys.readouterr()
    assert main([*common, "info", "--json", "2"]) == 0
    info = json.loads(capsys.readouterr().out)
    folder = Path(info["index_path"])
    meta = json.loads((folder / fi.META_FILE).read_text())
    assert (
        info["params"]["region_km"] == 10 and info["index"]["ntotal"] == 18 and info["stats"]["regions"] == 2
    )
    assert [r["ntotal"] for r in meta["regions"]] == [9, 9] and not (folder / fi.INDEX_FILE).exists()
    for r in meta["regions"]:
        sub = folder / regions.SHARDS_DIR / r["name"]
        assert json.loads((sub / fi.META_FILE).read_text())["ntotal"] == 9
    assert main([*common, "info", "2"]) == 0
    out = capsys.readouterr().out
    assert "regions        2 of about 10 km" in out and out.count("      9 tiles  centres in ") == 2
    assert main([*common, "verify", "2"]) == 0
    assert "ok   re-embed         all 18 tiles" in capsys.readouterr().out
    # the service's snapshot: two regions; the same answers as the one-index build
    engine = make_engine(url)
    catalog = Catalog(engine)
    sha = file_sha256(tiny_weights)
    b1, b2 = catalog.build(1), catalog.build(2)
    assert b1 is not None and b2 is not None
    split = load_snapshot(catalog, b2, idx, sha, meta["d"])
    one = load_snapshot(catalog, b1, idx, sha, meta["d"])
    engine.dispose()
    assert len(split.parts) == 2 and split.ntotal == 18 and len(one.parts) == 1
    rng = np.random.default_rng(0)
    q = _unit(rng, 3, meta["d"])
    mapping = dict(zip(sorted(one.tiles), sorted(split.tiles), strict=True))  # build 2 ids follow build 1's
    _, i1 = one.search(q, 18)
    _, i2 = split.search(q, 18)
    np.testing.assert_array_equal(np.vectorize(mapping.get)(i1), i2)
    west = min(t.lon for t in split.tiles.values()) + 0.05
    allowed = split.select(Prior(bbox=(0.0, -80.0, west, 80.0)))
    assert len(allowed) == 9 and split.searched_parts(allowed) == 1
    # served: `cvm localize` (the service's pipeline) answers from the regions, with a prior
    # only from the region it reaches
    for key, value in (
        ("CVM_DATABASE_URL", url),
        ("CVM_INDEX_DIR", str(idx)),
        ("CVM_WEIGHTS", str(tiny_weights)),
    ):
        monkeypatch.setenv(key, value)
    pano = tmp_path / "pano.png"
    pano.write_bytes(panorama_bytes())
    capsys.readouterr()
    assert cvm_main(["localize", str(pano), "--kind", "panorama", "--k", "18", "--json"]) == 0
    everywhere = json.loads(capsys.readouterr().out)["candidates"]
    assert sorted(c["tile_id"] for c in everywhere) == sorted(split.tiles)
    assert (
        cvm_main(
            ["localize", str(pano), "--kind", "panorama", "--k", "18", "--json", "--bbox", f"0,-80,{west},80"]
        )
        == 0
    )
    inside = json.loads(capsys.readouterr().out)["candidates"]
    assert sorted(c["tile_id"] for c in inside) == allowed.tolist()
    assert [c["tile_id"] for c in inside] == [
        c["tile_id"] for c in everywhere if c["tile_id"] in set(allowed.tolist())
    ]
    # a damaged region is named when the build is loaded or verified
    shard = folder / regions.SHARDS_DIR / meta["regions"][1]["name"] / fi.INDEX_FILE
    shard.write_bytes(b"damaged")
    assert main([*common, "verify", "2"]) == 1
    assert f"{shard}: checksum mismatch" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "must be > 0, got 0"),
        ("-3", "must be > 0"),
        ("20000", "must be between 0.1 and 10000 km"),
        ("x", "invalid"),
    ],
)
def test_bad_region_km_is_a_cli_error_naming_the_option(
    value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["build", "--imagery", "x.tif", "--region-km", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --region-km" in err and message in err and "Traceback" not in err


def test_split_vectors_writes_each_region_its_own_rows_in_id_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    ids = np.sort(rng.choice(100_000, 700, replace=False)).astype(np.int64)
    x = rng.standard_normal((700, 8)).astype(np.float32)
    lats, lons = 45.0 + rng.random(700) * 0.5, 15.0 + rng.random(700) * 0.5
    groups = list(regions.group_by_region(ids, lats, lons, 15.0))
    blocks = [(ids[a : a + 64], x[a : a + 64]) for a in range(0, 700, 64)]
    paths = regions.split_vectors(tmp_path, blocks, groups, 8)
    row = {int(i): r for r, i in enumerate(ids)}
    for (region, members), path in zip(groups, paths, strict=True):
        got = list(regions.read_blocks(path))
        got_ids = np.concatenate([i for i, _ in got])
        got_x = np.concatenate([v for _, v in got])
        np.testing.assert_array_equal(got_ids, members)
        np.testing.assert_array_equal(got_x, x[[row[int(i)] for i in members]])
        assert region.name in path.name
    with pytest.raises(ValueError, match="vectors of the"):  # a tile missing from the blocks
        regions.split_vectors(tmp_path / "short", blocks[1:], groups, 8)


def test_small_regions_get_flat_indexes_and_a_budget_a_region_cannot_meet_names_it() -> None:
    from indexer.errors import IndexerError
    from indexer.publish import REGION_FLAT_BELOW, _spec

    assert _spec("ivfpq", REGION_FLAT_BELOW - 1, 64, None, "00001_00002").kind == "flat"
    assert _spec("ivfpq", REGION_FLAT_BELOW, 64, None, "00001_00002").kind == "ivfpq"
    assert _spec("ivfpq", 100, 64, None).kind == "ivfpq"  # a whole build keeps what was asked
    assert _spec("hnsw", 100, 64, None, "00001_00002").kind == "hnsw"
    with pytest.raises(IndexerError, match="--memory-budget: region 00001_00002: memory budget"):
        _spec("auto", 5000, 1024, 1000, "00001_00002")


def test_ivfpq_region_build_with_small_regions(
    tmp_path: Path, make_raster: Callable[..., Path], tiny_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--index-type ivfpq with regions too small to train: each gets a flat index, the build works."""
    url, idx = f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "idx"
    common = ["--database-url", url, "--index-dir", str(idx)]
    args = [*common, "build", "--no-progress", "--weights", str(tiny_weights), "--imagery"]
    assert main([*args, *_raster_far_apart(make_raster), "--index-type", "ivfpq", "--region-km", "10"]) == 0
    capsys.readouterr()
    assert main([*common, "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    meta = json.loads((Path(info["index_path"]) / fi.META_FILE).read_text())
    assert [r["factory"] for r in meta["regions"]] == ["IDMap2,Flat", "IDMap2,Flat"]
    assert not list(idx.glob("build-*.work"))  # the work folder (region files included) is gone


def test_regions_that_do_not_hold_the_catalogue_tiles_are_refused(tmp_path: Path) -> None:
    from service.errors import IndexBuildError

    _, split, _ = _snapshots("flat", tmp_path)
    split.check_regions()  # consistent: passes
    tiles = dict(split.tiles)
    first = min(tiles)
    tiles[first + 1] = tiles.pop(first)  # the catalogue names a tile no region holds
    odd = IndexSnapshot(1, None, {}, tiles, Path("."), regions=split.regions)
    with pytest.raises(IndexBuildError, match="its regions hold other tile ids than its catalogue"):
        odd.check_regions()


def test_budget_shares_give_small_regions_their_flat_index_and_share_the_rest() -> None:
    d = 64
    flat = fi.serving_bytes(fi.IndexSpec("flat", "IDMap2,Flat"), 1, d)  # bytes per tile, flat
    assert regions.budget_shares([5, 7], d, None) == [None, None]
    # a small region (below 10,000 tiles) gets its flat index; the two large ones the rest, 1:3
    shares = regions.budget_shares([20_000, 500, 60_000], d, 10_000_000)
    assert shares[1] == 500 * flat
    rest = 10_000_000 - 500 * flat
    assert shares[0] == rest * 20_000 // 80_000 and shares[2] == rest * 60_000 // 80_000
    assert sum(s for s in shares if s is not None) <= 10_000_000
    # a budget below the small regions' flat indexes: shared in proportion (the choice then fails)
    assert regions.budget_shares([500, 1500], d, 1000) == [250, 750]


def _region_result(url: str, idx: Path) -> tuple[dict[int, tuple[float, float]], dict[str, dict[int, bytes]]]:
    """The active build's tiles and, per region, each tile's stored vector."""
    engine = make_engine(url)
    catalog = Catalog(engine)
    build = catalog.active_build()
    assert build is not None and build.status == "complete"
    tiles = {t.id: (t.lat, t.lon) for t in catalog.places_of_build(build.id).values()}
    folder = Path(str(build.index_path))
    engine.dispose()
    held = {}
    for region, index, _ in regions.read_regions(folder):
        ids = fi.index_ids(index)
        held[region.name] = {
            int(i): v.tobytes() for i, v in zip(ids, fi._stored_matrix(index, ids), strict=True)
        }
    return tiles, held


def test_a_region_merge_interrupted_resumes_to_the_uninterrupted_result(
    tmp_path: Path,
    make_raster: Callable[..., Path],
    tiny_weights: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Interrupted between two regions' indexes (one region written in the temporary folder), the
    build serves nothing half-made, and the same command resumes to the uninterrupted build."""
    import indexer.publish as publish

    rasters = _raster_far_apart(make_raster)

    def build(db: str, *extra: str) -> int:
        url, idx = f"sqlite:///{tmp_path / db}.db", tmp_path / db
        common = ["--database-url", url, "--index-dir", str(idx), "build", "--no-progress"]
        return main(
            [*common, "--weights", str(tiny_weights), "--imagery", *rasters, "--index-type", "flat", *extra]
        )

    assert build("a", "--region-km", "10") == 0
    expected = _region_result(f"sqlite:///{tmp_path / 'a'}.db", tmp_path / "a")
    assert len(expected[1]) == 2

    assert build("b") == 0  # build 1 (one index) serves while build 2 is made
    real, calls = publish.build_index, []

    def interrupted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:  # the first region's index is already written
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(publish, "build_index", interrupted)
    capsys.readouterr()
    assert build("b", "--region-km", "10") == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    assert (tmp_path / "b" / ".build-2.tmp" / regions.SHARDS_DIR).is_dir()  # a region was written
    engine = make_engine(f"sqlite:///{tmp_path / 'b'}.db")
    catalog = Catalog(engine)
    active, second = catalog.active_build(), catalog.build(2)
    engine.dispose()
    assert active is not None and active.id == 1  # the last good index still serves
    assert second is not None and second.status == "building" and not (tmp_path / "b" / "build-2").exists()

    monkeypatch.setattr(publish, "build_index", real)
    assert build("b", "--region-km", "10") == 0
    assert "build 2: complete (resumed)" in capsys.readouterr().out
    tiles, held = _region_result(f"sqlite:///{tmp_path / 'b'}.db", tmp_path / "b")
    # build 2's ids follow build 1's: the same tiles, places and vectors, region by region
    shift = min(tiles) - min(expected[0])
    assert {i - shift: place for i, place in tiles.items()} == expected[0]
    assert held.keys() == expected[1].keys()
    for name, vectors in held.items():
        assert {i - shift: v for i, v in vectors.items()} == expected[1][name]
    assert not (tmp_path / "b" / ".build-2.tmp").exists() and not list((tmp_path / "b").glob("build-*.work"))
