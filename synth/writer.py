"""`synthesize`: generate a world and write its orthophoto, ground views, CSVs and CVUSA layout.

Output layout under `out`:
    ortho.tif                          orthophoto GeoTIFF (UTM)
    ground/<id>.jpg, photos/<id>.jpg   panoramas and perspective photos
    ground.csv                         id,lat,lon,heading_deg,fov_deg,file,photo_file,split
    world.json                         parameters of the world (seed, frame, sun, split)
    cvusa/bingmap/19/<id>.jpg          70 m x 70 m north-up aerial crops, 256 x 256
    cvusa/streetview/panos/<id>.jpg    the panoramas again
    cvusa/splits/{train,val}-19zl.csv  bingmap,panorama,annotation paths (no header)
    cvusa/split_locations/all.csv      sat_lat,sat_lon,grd_lat,grd_lon,0 (row = int(id) - 1)
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from synth import outputs, pairs, sampling
from synth.generate import generate_world
from synth.geo import DEFAULT_ORIGIN, WorldFrame
from synth.ortho import render_ortho, write_geotiff
from synth.pairs import AERIAL_M, CVUSA_DIR, GROUND_DIR, PHOTOS_DIR, PairSpec
from synth.world import World

ORTHO_TIF = "ortho.tif"
# Everything `prepare_out` clears before an --overwrite run.
OUTPUTS = (ORTHO_TIF, outputs.GROUND_CSV, outputs.WORLD_JSON, GROUND_DIR, PHOTOS_DIR, CVUSA_DIR)


@dataclass(frozen=True)
class SynthOptions:
    """What `cvm synth` makes: world size (m), resolution (m/px), origin (lat, lon) at the centre
    of the world, number of pairs, validation share and worker processes (None: CPU count)."""

    seed: int
    out: Path
    extent_m: float = 2000.0
    gsd_m: float = 0.5
    origin: tuple[float, float] = DEFAULT_ORIGIN
    pairs: int = 1000
    val_fraction: float = 0.2
    workers: int | None = None
    overwrite: bool = False

    def validate(self) -> None:
        if not 200.0 <= self.extent_m <= 20000.0:
            raise ValueError(f"--extent-m must lie in 200..20000 metres, got {self.extent_m}")
        if not 0.1 <= self.gsd_m <= 2.0:
            raise ValueError(f"--gsd-m must lie in 0.1..2.0 metres per pixel, got {self.gsd_m}")
        if self.extent_m / self.gsd_m > 20000:
            raise ValueError(f"{self.extent_m} m at {self.gsd_m} m/px exceeds 20000 px a side")
        if not 1 <= self.pairs <= 9_999_999:
            raise ValueError(f"--pairs must lie in 1..9999999, got {self.pairs}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {self.workers}")


@dataclass
class SynthResult:
    """What was written, and how long each stage took (seconds)."""

    out: Path
    pairs: list[PairSpec]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        return sum(p.split == "train" for p in self.pairs)

    @property
    def n_val(self) -> int:
        return sum(p.split == "val" for p in self.pairs)


def prepare_out(out: Path, overwrite: bool) -> None:
    """Create `out`; refuse a non-empty directory unless `overwrite` (then clear our outputs)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"output directory {out} is not empty; choose another or pass --overwrite")
        for name in OUTPUTS:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    cvusa = (pairs.CVUSA_AERIAL_DIR, pairs.CVUSA_PANO_DIR, outputs.SPLITS_DIR, outputs.LOCATIONS_DIR)
    for sub in (GROUND_DIR, PHOTOS_DIR, *(f"{CVUSA_DIR}/{d}" for d in cvusa)):
        (out / sub).mkdir(parents=True, exist_ok=True)


def place_pairs(world: World, opts: SynthOptions) -> list[PairSpec]:
    """Camera positions, photo headings/FOVs and split of every pair, ids in sampling order."""
    rng = np.random.default_rng([opts.seed, 3])
    extent = world.size_px * world.frame.gsd_m
    plan = sampling.plan_split(extent, opts.pairs, opts.val_fraction, AERIAL_M)
    v_range = sampling.usable_range(extent, AERIAL_M)
    train = sampling.sample_cameras(world, plan.train_u, v_range, plan.n_train, rng)
    val = sampling.sample_cameras(world, plan.val_u, v_range, plan.n_val, rng)
    xy = np.concatenate([train, val])
    splits = ["train"] * len(train) + ["val"] * len(val)
    order = rng.permutation(len(xy))  # ids do not reveal the split
    lon, lat = world.frame.pixel_to_lonlat(xy[:, 0], xy[:, 1])
    return [
        PairSpec(
            id=f"{i + 1:07d}",
            index=i,
            x_px=float(xy[j, 0]),
            y_px=float(xy[j, 1]),
            lat=float(lat[j]),
            lon=float(lon[j]),
            heading_deg=float(rng.uniform(0.0, 360.0)),
            fov_deg=float(rng.uniform(60.0, 90.0)),
            split=splits[j],
        )
        for i, j in enumerate(order)
    ]


def render_all(
    world: World,
    ortho: np.ndarray,
    opts: SynthOptions,
    specs: list[PairSpec],
    progress: Callable[[int, int], None] | None,
) -> None:
    """Render and write every pair, in `opts.workers` spawned processes (1: in this process)."""
    workers = min(opts.workers or os.cpu_count() or 1, len(specs))
    done = 0
    if workers == 1:
        pairs.set_shared(world, ortho, opts.out, opts.seed)
        results = map(pairs.render_pair, specs)
        for _ in results:
            done += 1
            if progress:
                progress(done, len(specs))
        return
    with tempfile.TemporaryDirectory(prefix="cvm-synth-") as tmp:
        shared = pairs.save_shared(world, ortho, Path(tmp), opts.out)
        ctx = mp.get_context("spawn")
        with ctx.Pool(workers, initializer=pairs.init_worker, initargs=(shared,)) as pool:
            for _ in pool.imap_unordered(pairs.render_pair, specs, chunksize=4):
                done += 1
                if progress:
                    progress(done, len(specs))


def synthesize(opts: SynthOptions, progress: Callable[[int, int], None] | None = None) -> SynthResult:
    """Generate the world of `opts.seed` and write every output under `opts.out`."""
    opts.validate()
    prepare_out(opts.out, opts.overwrite)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    world = generate_world(WorldFrame(opts.origin[0], opts.origin[1], opts.extent_m, opts.gsd_m), opts.seed)
    ortho = render_ortho(world)
    timings["world_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    write_geotiff(opts.out / ORTHO_TIF, ortho, world)
    specs = place_pairs(world, opts)
    timings["geotiff_and_sampling_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    render_all(world, ortho, opts, specs, progress)
    timings["pairs_s"] = time.perf_counter() - t2
    outputs.write_tables(opts.out, specs)
    outputs.write_world_json(opts.out, world, len(specs), opts.val_fraction)
    timings["total_s"] = time.perf_counter() - t0
    return SynthResult(opts.out, specs, timings)


def print_progress(done: int, total: int) -> None:
    """Progress on stderr at every tenth."""
    step = max(1, total // 10)
    if done % step == 0 or done == total:
        print(f"  {done}/{total} pairs", file=sys.stderr, flush=True)
