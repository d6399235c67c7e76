"""Training as the service is used: displaced positives, semi-positives, look-alike batches.

The service indexes tiles of 70 m every 35 m (`cvm-index build` defaults), so a query lies
anywhere in its tile's 35 m stride cell and the neighbouring, overlapping tiles show it too.
Three things bring training closer to that:

* `ServedCropDataset`: a synthetic world's pairs with the aerial crop cut from the world's
  orthophoto at a centre displaced uniformly by up to `offset_m` east and north of the camera
  (`--offset-m`; half the stride, 17.5 m, is where the index puts a query at worst), instead of
  the pre-cut crop centred on the camera.
* Semi-positives (`--semi-positive-m R`): a batch's pair positions (`epoch_geometry`,
  `attach_geometry`) give `semi_positive_mask`, the pairs (i, j) where ground j lies within R
  metres of tile i's centre (or, for VIGOR, where tile i is one of the tiles labelled as
  showing ground j); `model.losses.weighted_soft_margin_loss` leaves them out of the negatives.
* Hard negatives (`--hard-negatives`): `hard_negative_order` groups the epoch's pairs into
  batches of descriptor neighbours (look-alike tiles) that are geographically apart.

Positions are (latitude, longitude) in degrees: distances are great-circle ones, so data of any
extent is handled alike. Pairs of different `--data` folders never count as near each other
(synthetic worlds all share one origin): each folder is its own `group`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Unpack

import cv2
import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from model.config import Preprocessing
from model.cvact import CVACTDataset
from model.data import (
    CVUSADataset,
    DatasetError,
    PairBatch,
    PairDataset,
    PairOptions,
    SampleFailure,
    collate_pairs,
    ground_table_rows,
)
from model.metrics import haversine_m
from model.transforms import load_image_rgb
from model.vigor import VigorDataset

# Seed stream of the crop offsets: separate from the augmentation's generator (seeded by
# (seed, epoch, index) alone), so switching offsets on does not change the augmentation draws.
_OFFSET_STREAM = 0x0FF5E7
_HARD_STREAM = 0x4A2D
# CVACT's UTM positions are in zone 55 south (Canberra).
CVACT_EPSG = 32755


class ServedCropDataset(CVUSADataset):
    """A synthetic world's `split` pairs with aerial crops cut from `ortho.tif` around a centre
    displaced by (dx, dy) metres east and north, each drawn uniformly in [-offset_m, offset_m]
    from a generator seeded by (seed, epoch, index) (`offset`), so a resumed run draws the same.

    The crop has the world's aerial size and resolution (`world.json`: `aerial_m`, `aerial_px`;
    70 m in 256 px) and is resampled as `cvm synth` cuts its crops (bilinear, north-up), but
    without the synthetic camera response of the pre-cut crops: the index, too, cuts its tiles
    from the orthophoto itself. A centre is moved back inside the raster when the displaced crop
    would leave it (the index has no tiles hanging over its edge).
    """

    def __init__(
        self,
        world: str | Path,
        split: str,
        prep: Preprocessing,
        offset_m: float,
        **options: Unpack[PairOptions],
    ) -> None:
        if not offset_m >= 0.0:
            raise ValueError(f"offset_m must be >= 0, got {offset_m}")
        self.world = Path(world)
        for name in ("world.json", "ortho.tif", "ground.csv"):
            if not (self.world / name).is_file():
                raise DatasetError(
                    "--offset-m needs a synthetic world folder (world.json, ortho.tif, ground.csv); "
                    f"{self.world / name} is missing"
                )
        super().__init__(self.world / "cvusa", split, prep, **options)
        self.offset_m = float(offset_m)
        meta = _read_json(self.world / "world.json")
        try:
            self.aerial_m, self.aerial_px = float(meta["aerial_m"]), int(meta["aerial_px"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{self.world / 'world.json'}: bad aerial_m / aerial_px ({exc})") from exc
        import rasterio  # noqa: PLC0415 (only this dataset reads GeoTIFFs)

        with rasterio.open(self.world / "ortho.tif") as ds:
            t = ds.transform
            if t.b != 0.0 or t.d != 0.0 or t.a != -t.e:
                raise DatasetError(f"{self.world / 'ortho.tif'}: not a north-up raster with square pixels")
            self.gsd_m, self.west, self.top = float(t.a), float(t.c), float(t.f)
            self.width, self.height, self.crs = int(ds.width), int(ds.height), ds.crs.to_string()
        latlon = read_ground_latlon(self.world / "ground.csv")
        absent = [r.key for r in self.records if r.key not in latlon]
        if absent:
            listed = ", ".join(absent[:5])
            raise DatasetError(f"{self.world / 'ground.csv'} has no position for pair(s) {listed}")
        self.ground_latlon = np.array([latlon[r.key] for r in self.records], dtype=np.float64).reshape(-1, 2)
        lat, lon = self.ground_latlon[:, 0], self.ground_latlon[:, 1]
        east, north = _transformer("EPSG:4326", self.crs).transform(lon, lat)
        # Continuous pixel coordinates with pixel centres at +0.5 (as `cvm synth` places cameras).
        self.ground_px = np.stack(
            [(np.asarray(east) - self.west) / self.gsd_m, (self.top - np.asarray(north)) / self.gsd_m], axis=1
        ).reshape(-1, 2)
        self._ortho: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Worker processes read the orthophoto themselves instead of receiving a pickled copy.
        state = dict(self.__dict__)
        state["_ortho"] = None
        return state

    def ortho(self) -> np.ndarray:
        """The orthophoto (H, W, 3) uint8 RGB, read once per process."""
        if self._ortho is None:
            import rasterio  # noqa: PLC0415

            with rasterio.open(self.world / "ortho.tif") as ds:
                self._ortho = np.ascontiguousarray(ds.read([1, 2, 3]).transpose(1, 2, 0))
        return self._ortho

    def offset(self, index: int) -> tuple[float, float]:
        """(east, north) metres of pair `index`'s crop centre from its camera in this epoch, before
        any move back inside the raster (`tile_centre_px` applies that)."""
        if self.offset_m == 0.0:
            return 0.0, 0.0
        rng = np.random.default_rng([self.seed, self.epoch, index, _OFFSET_STREAM])
        dx, dy = rng.uniform(-self.offset_m, self.offset_m, size=2)
        return float(dx), float(dy)

    def tile_centre_px(self, index: int) -> tuple[float, float]:
        """Continuous pixel (x, y) of pair `index`'s crop centre in this epoch."""
        dx, dy = self.offset(index)
        half = self.aerial_m / self.gsd_m / 2.0
        x = float(np.clip(self.ground_px[index, 0] + dx / self.gsd_m, half, self.width - half))
        y = float(np.clip(self.ground_px[index, 1] - dy / self.gsd_m, half, self.height - half))
        return x, y

    def load_rgb(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rec = self.records[index]
        grd = load_image_rgb(rec.grd, fit=self.ground_fit(rec))
        x, y = self.tile_centre_px(index)
        return grd, crop_ortho(self.ortho(), x, y, self.aerial_m / self.gsd_m, self.aerial_px)

    def geometry(self) -> tuple[np.ndarray, np.ndarray]:
        """(n, 2) tile centres and (n, 2) camera positions (lat, lon) of this epoch's pairs."""
        centres = np.array([self.tile_centre_px(i) for i in range(len(self))], dtype=np.float64)
        centres = centres.reshape(-1, 2)
        east = self.west + centres[:, 0] * self.gsd_m
        north = self.top - centres[:, 1] * self.gsd_m
        lon, lat = _transformer(self.crs, "EPSG:4326").transform(east, north)
        return np.stack([np.asarray(lat), np.asarray(lon)], axis=1).reshape(-1, 2), self.ground_latlon


def crop_ortho(ortho: np.ndarray, x_px: float, y_px: float, side_px: float, out_px: int) -> np.ndarray:
    """North-up (out_px, out_px, 3) crop of `ortho` covering side_px x side_px source pixels centred
    on the continuous position (x_px, y_px) (pixel centres at +0.5), bilinear, as `cvm synth`
    cuts its aerial crops (`synth.pairs.aerial_crop`)."""
    scale = side_px / out_px  # source pixels per output pixel
    # OpenCV puts pixel centres at integer coordinates, ours at +0.5: hence the -0.5.
    x0 = x_px - side_px / 2 + 0.5 * scale - 0.5
    y0 = y_px - side_px / 2 + 0.5 * scale - 0.5
    m = np.array([[scale, 0.0, x0], [0.0, scale, y0]])
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(ortho, m, (out_px, out_px), flags=flags, borderMode=cv2.BORDER_REFLECT)


def read_ground_latlon(path: Path) -> dict[str, tuple[float, float]]:
    """key (7-digit id) -> (lat, lon) from a world's ground.csv."""
    out: dict[str, tuple[float, float]] = {}
    for lineno, key, row in ground_table_rows(path, {"id", "lat", "lon"}):
        try:
            out[key] = (float(row["lat"]), float(row["lon"]))
        except ValueError as exc:
            raise DatasetError(f"{path}:{lineno}: bad lat/lon ({exc})") from exc
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    if not isinstance(value, dict):
        raise DatasetError(f"{path} must hold a JSON object")
    return value


def _transformer(src: str, dst: str) -> Any:
    from pyproj import Transformer  # noqa: PLC0415

    return Transformer.from_crs(src, dst, always_xy=True)


@dataclass
class EpochGeometry:
    """Where every pair of the training set is in the current epoch.

    position: (n, 4) float64 tile lat, tile lon, ground lat, ground lon (NaN where unknown);
    group: (n,) int64, the `--data` folder (and VIGOR city) of each pair: pairs of different
    groups are never near each other; tiles: (n, 4) int64 ids of the tiles labelled as showing
    the ground image, the pair's own first (VIGOR; -1 elsewhere), or None when no dataset has them.
    """

    position: np.ndarray
    group: np.ndarray
    tiles: np.ndarray | None = None

    def take(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        idx = np.asarray(index, dtype=np.int64)
        tiles = None if self.tiles is None else torch.from_numpy(self.tiles[idx])
        return torch.from_numpy(self.position[idx]), torch.from_numpy(self.group[idx]), tiles


def dataset_geometry(ds: PairDataset) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
    """(tile latlon (n, 2), ground latlon (n, 2), labelled tiles (n, 4) or None) of one dataset in
    its current epoch, or None when its positions are unknown."""
    if isinstance(ds, ServedCropDataset):
        tile, ground = ds.geometry()
        return tile, ground, None
    if isinstance(ds, VigorDataset):
        tiles = np.concatenate([ds.positive[:, None], ds.semi_positive], axis=1)
        return ds.gallery_latlon[ds.positive], ds.query_latlon(), tiles
    if isinstance(ds, CVACTDataset):
        # The tile is centred on the panorama: one position for both.
        lon, lat = _transformer(f"EPSG:{CVACT_EPSG}", "EPSG:4326").transform(ds.utm[:, 0], ds.utm[:, 1])
        latlon = np.stack([np.asarray(lat), np.asarray(lon)], axis=1).reshape(-1, 2)
        return latlon, latlon, None
    if isinstance(ds, CVUSADataset):
        loc = ds.locations()
        if loc is None:
            return None
        return loc[:, 0:2], loc[:, 2:4], None
    return None


class GlobalIndex(Dataset):
    """`dataset` with each sample's (and failure's) index made its position in `dataset` itself: a
    ConcatDataset's parts number their samples from 0 each, the epoch geometry and the mining
    need the concatenation's numbering."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        sample = self.dataset[index]
        if isinstance(sample, SampleFailure):
            return SampleFailure(index, sample.path, sample.reason)
        return sample[0], sample[1], index


def _parts(dataset: Dataset) -> list[PairDataset]:
    if isinstance(dataset, PairDataset):
        return [dataset]
    if isinstance(dataset, ConcatDataset):
        return [p for d in dataset.datasets for p in _parts(d)]
    raise TypeError(f"cannot locate the pairs of a {type(dataset).__name__}")


def epoch_geometry(dataset: Dataset) -> EpochGeometry:
    """The positions of every pair of `dataset` (a `PairDataset` or a ConcatDataset of them, in
    their current epoch, see `model.data.set_epoch`), in dataset order."""
    positions, groups, tiles = [], [], []
    any_tiles = False
    for k, part in enumerate(_parts(dataset)):
        n = len(part)
        pos = np.full((n, 4), np.nan)
        group = np.full(n, k * 16, dtype=np.int64)
        labelled = np.full((n, 4), -1, dtype=np.int64)
        geo = dataset_geometry(part)
        if geo is not None:
            tile, ground, ids = geo
            pos[:, 0:2], pos[:, 2:4] = tile, ground
            if ids is not None:
                labelled, any_tiles = ids.astype(np.int64), True
        if isinstance(part, VigorDataset):
            # One group per city: tiles of different cities are never compared.
            city = {c: i for i, c in enumerate(part.cities)}
            group = k * 16 + np.array([city[lab.city] for lab in part.labels], dtype=np.int64)
        positions.append(pos)
        groups.append(group)
        tiles.append(labelled)
    return EpochGeometry(
        np.concatenate(positions), np.concatenate(groups), np.concatenate(tiles) if any_tiles else None
    )


def attach_geometry(batch: PairBatch, geometry: EpochGeometry) -> PairBatch:
    """Fill the batch's position, group and tiles from the epoch's geometry (by batch.index)."""
    batch.position, batch.group, batch.tiles = geometry.take(batch.index)
    return batch


def semi_positive_mask(
    position: torch.Tensor, group: torch.Tensor, radius_m: float, tiles: torch.Tensor | None = None
) -> torch.Tensor:
    """(n, n) bool, True at (i, j), i != j, when satellite i's tile also shows ground j: ground j
    lies less than `radius_m` metres (great circle) from tile i's centre, or tile i is one of the
    tiles labelled as showing ground j (`tiles`, VIGOR's positive and semi-positives). Only pairs of
    the same group count; unknown (NaN) positions are never near anything.

    position: (n, 4) tile lat, tile lon, ground lat, ground lon; group: (n,) int; tiles: (n, k).
    """
    pos = position.detach().cpu().numpy().astype(np.float64)
    n = pos.shape[0]
    near = haversine_m(pos[:, None, 0], pos[:, None, 1], pos[None, :, 2], pos[None, :, 3]) < radius_m
    if tiles is not None:
        t = tiles.cpu().numpy()
        near |= (t[:, None, 0, None] == t[None, :, :]).any(axis=-1) & (t[:, None, 0] >= 0)
    g = group.cpu().numpy()
    near &= g[:, None] == g[None, :]
    near[np.arange(n), np.arange(n)] = False
    return torch.from_numpy(near)


@torch.no_grad()
def embed_satellites(
    net: Any, dataset: Dataset, batch_size: int = 64, workers: int = 0, device: str = "cpu"
) -> tuple[torch.Tensor, np.ndarray]:
    """Satellite descriptors (m, d) float32 of the loadable pairs of `dataset` as the epoch will
    show them (same crops and augmentation draws), and their indices in `dataset` (m,). The model is
    put in eval mode (no dropout, BatchNorm's running statistics) and set back afterwards, and no
    global RNG is drawn from, so mining leaves a resumed run unchanged."""
    was_training = net.training
    net.eval()
    loader = DataLoader(
        GlobalIndex(dataset),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_pairs,
        generator=torch.Generator(),
    )
    out, index = [], []
    try:
        for batch in loader:
            if len(batch):
                out.append(net.embed_satellite(batch.sat.to(device)).float().cpu())
                index.append(batch.index.numpy())
    finally:
        net.train(was_training)
    if not out:
        return torch.empty(0, 0), np.empty(0, dtype=np.int64)
    return torch.cat(out), np.concatenate(index)


def _neighbours(desc: torch.Tensor, k: int, block: int = 1024) -> np.ndarray:
    """(m, k) indices of each row's k most similar other rows (dot product), most similar first;
    computed in blocks of rows so that large sets never need the full m x m matrix."""
    m = desc.shape[0]
    out = np.empty((m, k), dtype=np.int64)
    for start in range(0, m, block):
        sim = desc[start : start + block] @ desc.T
        rows = torch.arange(sim.shape[0])
        sim[rows, rows + start] = -torch.inf
        out[start : start + block] = torch.topk(sim, k, dim=1).indices.numpy()
    return out


def hard_negative_order(
    desc: torch.Tensor,
    index: np.ndarray,
    n: int,
    geometry: EpochGeometry,
    radius_m: float,
    batch_size: int,
    seed: int,
    epoch: int,
) -> torch.Tensor:
    """An epoch order (a permutation of range(n)) whose consecutive `batch_size` runs are groups of
    look-alikes: descriptor neighbours (`desc` (m, d) of dataset rows `index`) that pairwise do not
    show each other (the `semi_positive_mask` relation at `radius_m`, both ways).

    Anchors are taken in an order drawn from (seed, epoch); each takes its nearest unassigned,
    admissible neighbours among its 4 x batch_size most similar. Pairs left in incomplete groups
    (and rows without a descriptor) fill further batches in a random order; full batches come in
    a random order, a short remainder last (where the loader's drop_last drops it). Deterministic
    given the descriptors, seed and epoch.
    """
    rng = np.random.default_rng([seed, epoch, _HARD_STREAM])
    m = len(index)
    groups: list[list[int]] = []
    rest: list[int] = []
    if m > 1:
        k = min(m - 1, 4 * batch_size)
        nbrs = _neighbours(desc, k)
        pos = geometry.position[index]
        grp = geometry.group[index]
        tiles = None if geometry.tiles is None else geometry.tiles[index]
        assigned = np.zeros(m, dtype=bool)
        for a in rng.permutation(m):
            if assigned[a]:
                continue
            assigned[a] = True
            members = [int(a)]
            for c in nbrs[a]:
                if len(members) == batch_size:
                    break
                if assigned[c] or _near_any(int(c), members, pos, grp, tiles, radius_m):
                    continue
                assigned[c] = True
                members.append(int(c))
            if len(members) == batch_size:
                groups.append([int(index[j]) for j in members])
            else:
                rest.extend(int(index[j]) for j in members)
    seen = np.zeros(n, dtype=bool)
    seen[np.asarray(index, dtype=np.int64)] = True
    rest.extend(int(i) for i in np.flatnonzero(~seen))
    rest = [rest[j] for j in rng.permutation(len(rest))]
    batches = groups + [rest[s : s + batch_size] for s in range(0, len(rest), batch_size)]
    full = [b for b in batches if len(b) == batch_size]
    short = [i for b in batches if len(b) < batch_size for i in b]
    order = [i for j in rng.permutation(len(full)) for i in full[j]] + short
    return torch.tensor(order, dtype=torch.int64)


def _near_any(
    c: int,
    members: Sequence[int],
    pos: np.ndarray,
    grp: np.ndarray,
    tiles: np.ndarray | None,
    radius_m: float,
) -> bool:
    """Whether pair c and any of `members` show each other (the semi-positive relation, both ways)."""
    mem = np.asarray(members)
    mem = mem[grp[mem] == grp[c]]
    if mem.size == 0:
        return False
    if radius_m > 0:
        d1 = haversine_m(pos[c, 0], pos[c, 1], pos[mem, 2], pos[mem, 3])
        d2 = haversine_m(pos[mem, 0], pos[mem, 1], pos[c, 2], pos[c, 3])
        if bool(np.any(d1 < radius_m) or np.any(d2 < radius_m)):
            return True
    if tiles is not None:
        # VIGOR: one's own tile is among the tiles labelled for the other (-1 pads the rows).
        own, theirs = tiles[c, 0], tiles[mem, 0]
        if own >= 0 and bool(np.isin(own, tiles[mem]).any()):
            return True
        if bool(np.isin(theirs[theirs >= 0], tiles[c]).any()):
            return True
    return False
