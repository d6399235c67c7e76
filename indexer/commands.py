"""The `cvm-index` sub-commands (argparse namespace in, exit code out)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Engine

from indexer.build import BuildOptions, default_read_threads
from indexer.dryrun import DryRunReport
from indexer.errors import UsageError
from indexer.runner import BuildReport, run_build, run_dry
from indexer.verify import verify_build
from storage import catalog, regions
from storage.db import make_engine, session_scope, upgrade
from storage.errors import StorageError
from storage.models import Build, Tile
from storage.settings import Settings


@contextmanager
def _engine(settings: Settings) -> Iterator[Engine]:
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        yield engine
    finally:
        engine.dispose()


def cmd_build(args: argparse.Namespace, settings: Settings) -> int:
    if args.memory_budget is not None and args.index_type != "auto":
        raise UsageError(
            f"--memory-budget chooses the index type itself; give it without --index-type {args.index_type}"
        )
    resume: bool | int | None = False if args.fresh else None
    if args.resume is not None:
        resume = True if args.resume == -1 else int(args.resume)
    opts = BuildOptions(
        imagery=tuple(args.imagery),
        tiles_csv=args.tiles_csv,
        tile_size_m=args.tile_size_m,
        stride_m=args.stride_m,
        batch_size=max(1, args.batch_size),
        index_type=args.index_type,
        activate=not args.no_activate,
        resume=resume,
        shard_size=max(1, args.shard_size),
        read_threads=args.read_threads if args.read_threads > 0 else default_read_threads(),
        progress=not args.no_progress,
        memory_budget=args.memory_budget,
        region_km=args.region_km,
        torch_threads=args.torch_threads,
        engine=args.engine,
        ray_address=args.ray_address,
        ray_actors=args.ray_actors,
    )
    if args.dry_run:
        dry = run_dry(opts, settings, args.weights, args.device)
        _print_dry_run(dry)
        return int(dry.exit_code)
    report = run_build(opts, settings, args.weights, args.device)
    _print_summary(report)
    return report.exit_code


def _print_dry_run(r: DryRunReport) -> None:
    for source, reason in r.rejected:
        print(f"rejected: {reason if source in reason else f'{source}: {reason}'}", file=sys.stderr)
    print(f"dry run ({r.tile_size_m:g} m tiles every {r.stride_m:g} m); nothing was written")
    for path, n in r.counts:
        print(f"  {n:>12,} tiles  {path}")
    print(f"  {r.total:>12,} tiles  total ({len(r.counts)} inputs, {len(r.rejected)} rejected)")
    if not r.total or r.spec is None or r.memory is None:
        print("  nothing to index")
        return
    print(
        f"  embedding: about {_duration(r.embed_seconds)} on {r.device} (an estimate: "
        f"{r.seconds_per_tile * 1000:.1f} ms per tile of {r.views} view(s), measured now on a forward "
        f"pass of {r.probe_tiles} tiles; reading the imagery is not included)"
    )
    m = r.memory
    fixed = f" + {_bytes(m.fixed)} centroids and codebooks" if m.fixed else ""
    print(
        f"  index: {r.spec.kind} ({r.spec.factory}), {m.per_vector:,.0f} bytes per vector x "
        f"{m.n:,}{fixed} = {_bytes(m.total)} (an estimate)"
    )


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def _print_summary(r: BuildReport) -> None:
    c = r.counts
    for source, reason in c.get("rejected", []):
        print(f"rejected: {reason if source in reason else f'{source}: {reason}'}", file=sys.stderr)
    rate = c.get("indexed", 0) / r.seconds if r.seconds > 0 else 0.0
    lines = [
        f"build {r.build_id}: {r.status}{' (resumed)' if r.resumed else ''}",
        f"  tiles indexed {c.get('indexed', 0)} of {c.get('planned', 0)} planned; skipped (nodata) "
        f"{c.get('skipped_nodata', 0)}; dropped (unreadable) {c.get('dropped_unreadable', 0)}; "
        f"rejected inputs {len(c.get('rejected', []))}",
        f"  index {r.index_type or '-'} ({r.factory or '-'})"
        + (f", recall@10 {r.stats['recall_at_10']:.3f}" if "recall_at_10" in r.stats else ""),
        f"  time {r.seconds:.1f} s ({rate:.1f} tiles/s)",
    ]
    print("\n".join(lines))


def _build_dict(b: Build) -> dict[str, Any]:
    keys = ("id", "status", "is_active", "weights_path", "weights_sha256", "model_arch", "embed_dim")
    d: dict[str, Any] = {k: getattr(b, k) for k in keys}
    d |= {k: getattr(b, k) for k in ("index_path", "index_type", "index_factory", "n_tiles")}
    d |= {k: getattr(b, k) for k in ("params", "counts", "timings", "stats")}
    for k in ("created_at", "finished_at", "activated_at"):
        v = getattr(b, k)
        d[k] = v.isoformat() if v is not None else None
    return d


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    with _engine(settings) as engine, session_scope(engine) as session:
        builds = catalog.list_builds(session)
    if not builds:
        print("no builds")
        return 0
    print(f"{'':1} {'id':>5} {'status':9} {'tiles':>9} {'index':6} created")
    for b in builds:
        created = b.created_at.isoformat(timespec="seconds") if b.created_at else "-"
        mark = "*" if b.is_active else " "
        print(f"{mark} {b.id:>5} {b.status:9} {b.n_tiles:>9} {b.index_type or '-':6} {created}")
    return 0


def cmd_info(args: argparse.Namespace, settings: Settings) -> int:
    with _engine(settings) as engine, session_scope(engine) as session:
        d = _build_dict(catalog.resolve_build(session, args.build))
    figures: dict[str, Any] | None = None
    if d["index_path"]:
        try:
            figures = regions.build_figures(Path(d["index_path"]), max(0, args.queries))
        except StorageError as exc:  # the build's fields still say what it is; exit 1
            figures = {"error": str(exc)}
    failed = figures is not None and "error" in figures
    if args.json:
        print(json.dumps(d | {"index": figures}, indent=2, default=str))
        return 1 if failed else 0
    for key, value in d.items():
        if key == "params":
            value = {k: v for k, v in value.items() if k != "sources"}
        print(f"{key:15} {json.dumps(value, default=str) if isinstance(value, dict | list) else value}")
    if figures is not None and failed:
        print(f"index          cannot be read: {figures['error']}")
    elif figures is not None:
        _print_figures(figures)
    return 1 if failed else 0


def _print_figures(f: dict[str, Any]) -> None:
    """The index's figures (`storage.regions.build_figures`), one per line."""
    budget = f" within a budget of {_bytes(f['memory_budget'])}" if f["memory_budget"] else ""
    print(f"index          {f['index_type']} ({f['factory']}), {f['ntotal']:,} tiles{budget}")
    if f.get("regions"):
        regions = f"{len(f['regions'])} of about {f['region_km']:g} km"
        print(f"regions        {regions}, a prior's search reads only those it reaches")
        for r in f["regions"]:
            w, s, e, n = r["bbox"]
            print(f"  {r['name']}  {r['ntotal']:>9,} tiles  centres in {w:.5f},{s:.5f},{e:.5f},{n:.5f}")
    kept = " (with the exact vectors kept for re-ranking)" if f["exact_vectors"] else ""
    print(
        f"bytes per tile {f['ram_bytes_per_tile']:,.1f} in RAM (the loaded index), "
        f"{f['disk_bytes_per_tile']:,.1f} on disk{kept}"
    )
    if f["recall_queries"]:
        line = f"recall@10      {f['recall_at_10']:.3f} against exact search"
        if f["recall_at_10_rerank"] is not None:
            line += f" without re-rank, {f['recall_at_10_rerank']:.3f} with the exact re-rank"
        print(f"{line} ({f['recall_queries']} stored vectors as queries)")


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    with _engine(settings) as engine:
        report = verify_build(engine, args.build, weights=args.weights, sample=args.sample, atol=args.atol)
    for name, passed, detail in report.checks:
        print(f"{'ok  ' if passed else 'FAIL'} {name:16} {detail}")
    print(f"build {report.build_id}: {'verified' if report.ok else 'MISMATCH'}")
    return 0 if report.ok else 1


def cmd_activate(args: argparse.Namespace, settings: Settings) -> int:
    with _engine(settings) as engine, session_scope(engine) as session:
        catalog.activate(session, args.build)
    print(f"build {args.build} is now active")
    return 0


def cmd_tiles(args: argparse.Namespace, settings: Settings) -> int:
    with _engine(settings) as engine, session_scope(engine) as session:
        build = catalog.resolve_build(session, args.build)
        with _output(args.output) as out:
            writer = _write_geojson if args.format == "geojson" else _write_csv
            writer(out, catalog.iter_tiles(session, build.id))
    return 0


@contextmanager
def _output(path: Path | None) -> Iterator[IO[str]]:
    if path is None:
        yield sys.stdout
        return
    with path.open("w", newline="") as fh:
        yield fh


TILE_PROPS = (
    "id",
    "build_id",
    "lat",
    "lon",
    "size_m",
    "gsd_m",
    "source",
    "crs",
    "col_off",
    "row_off",
    "width",
    "height",
)


def _write_geojson(out: IO[str], tiles: Iterator[Tile]) -> None:
    """An RFC 7946 FeatureCollection, streamed: one footprint Polygon per tile, bbox per feature."""
    out.write('{"type": "FeatureCollection", "features": [\n')
    for i, t in enumerate(tiles):
        feature = {
            "type": "Feature",
            "id": t.id,
            "bbox": [t.west, t.south, t.east, t.north],
            "geometry": json.loads(t.footprint),
            "properties": {k: getattr(t, k) for k in TILE_PROPS},
        }
        out.write((",\n" if i else "") + json.dumps(feature))
    out.write("\n]}\n")


def _write_csv(out: IO[str], tiles: Iterator[Tile]) -> None:
    cols = (*TILE_PROPS, "west", "south", "east", "north")
    writer = csv.writer(out)
    writer.writerow(cols)
    for t in tiles:
        writer.writerow([getattr(t, k) for k in cols])
