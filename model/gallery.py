"""A dataset's aerial tiles as a pre-cut tile list for `cvm-index build --tiles-csv`.

Each tile is written with its true centre and its ground footprint:

* **VIGOR** (`model.vigor`): the centre is in the tile's name (`satellite_<lat>_<lon>.png`); a
  tile is 640 x 640 px of Web Mercator at zoom 20, so its side is 640 x `metres_per_pixel(lat)`
  (about 72.4 m in New York, 64.4 m in Seattle). SliceMatch (Lentsch et al., CVPR 2023) measured
  0.113248 / 0.100817 / 0.118141 / 0.111262 m per pixel for New York / Seattle / San Francisco /
  Chicago, within 0.2 % of that formula at the cities' latitudes.
* **CVACT** (`model.cvact`): `ACT_data.mat` holds a UTM position (easting, northing) per pair
  and no zone; Canberra lies in zone 55 south, so positions are read as WGS 84 / UTM 55S
  (EPSG:32755; `utm_epsg` names another projected CRS, such as GDA94 / MGA zone 55,
  EPSG:28355). A `satview_polish` tile is 1200 x 1200 px centred on its pair's position. The CVACT
  paper gives 0.12 m per pixel (Google Maps zoom 20); its author explains that the images were
  fetched with a 2x upsampling (OriCNN issue #5), so one image pixel spans half of that, the
  zoom-21 Web Mercator resolution: about 0.061 m at Canberra's latitude, 73 m per tile. (A car
  in the README's sample tile is about 80 px long, i.e. 0.06 m per pixel, not 0.12.)

Nothing is dropped silently: tiles whose file is missing or not a readable image are left out of
the list and returned by name (`Gallery.problems`).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from model.cvact import ACT_DATA_FILE, SATELLITE_DIR, SPLIT_KEYS, cvact_image_root, read_act_data
from model.data import DatasetError
from model.vigor import (
    TILE_LIST,
    ZOOM,
    _image_dir,
    metres_per_pixel,
    read_tile_list,
    tile_centre,
    vigor_split_dir,
)

CSV_COLUMNS = ("path", "lat", "lon", "size_m", "name")
# WGS 84 / UTM zone 55S: Canberra (148.9-149.4 E) lies in zone 55 (144-150 E), south.
CVACT_UTM_EPSG = 32755
CVACT_TILE_PX = 1200
# The tiles were fetched at zoom 20 with a 2x upsampling: one pixel is a zoom-21 pixel.
CVACT_PIXEL_ZOOM = 21
VIGOR_TILE_PX = 640


@dataclass(frozen=True)
class GalleryTile:
    """One aerial tile: its file, true centre (degrees, WGS 84), side on the ground (metres), name."""

    path: Path
    lat: float
    lon: float
    size_m: float
    name: str


@dataclass
class Gallery:
    """The tiles a dataset offers, and those left out with the reason (`problems`: (path, why))."""

    dataset: str
    tiles: list[GalleryTile] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    listed: int = 0

    def write_csv(self, out: Path) -> None:
        """The tile list as `cvm-index build --tiles-csv` reads it (absolute paths), written
        atomically; `name` is an extra column the indexer ignores."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for t in self.tiles:
            # repr-exact floats, so the catalogue stores exactly the centre computed here
            writer.writerow([str(t.path), repr(t.lat), repr(t.lon), repr(t.size_m), t.name])
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(buf.getvalue(), encoding="utf-8")
        os.replace(tmp, out)


def _check_image(path: Path) -> str | None:
    """None when `path` opens as an image (header only), else why not."""
    if not path.is_file():
        return "missing"
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, UnidentifiedImageError) as exc:
        return f"not a readable image ({exc})"
    if w < 1 or h < 1:
        return "empty image"
    return None


def _add(gallery: Gallery, tile: GalleryTile, check_images: bool) -> None:
    gallery.listed += 1
    why = _check_image(tile.path) if check_images else None
    if why is None:
        gallery.tiles.append(tile)
    else:
        gallery.problems.append((str(tile.path), why))


def vigor_cities(root: Path) -> list[str]:
    """The cities of a VIGOR folder: those with a tile list under its split folder."""
    splits = vigor_split_dir(root)
    if splits is None:
        raise DatasetError(f"{root} is not a VIGOR folder (splits/<City>/{TILE_LIST})")
    return sorted(d.name for d in splits.iterdir() if (d / TILE_LIST).is_file())


def vigor_gallery(
    root: str | Path, cities: Sequence[str] | None = None, check_images: bool = True
) -> Gallery:
    """Every tile listed in `splits/<City>/satellite_list.txt` of `cities` (default: all)."""
    root = Path(root)
    known = vigor_cities(root)
    splits = vigor_split_dir(root)
    assert splits is not None  # vigor_cities checked it
    chosen = list(cities) if cities else known
    unknown = [c for c in chosen if c not in known]
    if unknown:
        raise DatasetError(
            f"{splits}: no tile list for {', '.join(unknown)} (cities there: {', '.join(known) or 'none'})"
        )
    gallery = Gallery("vigor")
    for city in chosen:
        sat_dir = _image_dir(root, city, "satellite")
        for name in read_tile_list(splits / city / TILE_LIST):
            lat, lon = tile_centre(name)
            if not (-85.0 < lat < 85.0 and -180.0 <= lon <= 180.0):
                raise DatasetError(f"{splits / city / TILE_LIST}: tile {name} has no valid centre")
            size_m = VIGOR_TILE_PX * float(metres_per_pixel(lat, ZOOM))
            _add(gallery, GalleryTile(sat_dir / name, lat, lon, size_m, f"{city}/{name}"), check_images)
    return gallery


def utm_to_latlon(easting: np.ndarray, northing: np.ndarray, epsg: int) -> tuple[np.ndarray, np.ndarray]:
    """(lat, lon) degrees of projected coordinates in `epsg` (pyproj, always x = easting)."""
    from pyproj import CRS, Transformer
    from pyproj.exceptions import CRSError

    try:
        crs = CRS.from_epsg(epsg)
    except CRSError as exc:
        raise DatasetError(f"EPSG:{epsg} is not a known CRS ({exc})") from None
    if not crs.is_projected:
        raise DatasetError(f"EPSG:{epsg} is not a projected CRS; CVACT positions are metres")
    to_wgs84 = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    lon, lat = to_wgs84.transform(np.asarray(easting, np.float64), np.asarray(northing, np.float64))
    return np.asarray(lat), np.asarray(lon)


def cvact_tile_size_m(lat: float, tile_px: int = CVACT_TILE_PX) -> float:
    """Ground side of a CVACT aerial tile at latitude `lat` (metres)."""
    return tile_px * float(metres_per_pixel(lat, CVACT_PIXEL_ZOOM))


def cvact_gallery(
    root: str | Path, split: str = "val", utm_epsg: int = CVACT_UTM_EPSG, check_images: bool = True
) -> Gallery:
    """The aerial tiles of a CVACT split ("train", "val" = CVACT_val, "test" = CVACT_test), each
    centred on its pair's UTM position."""
    root = Path(root)
    if split not in SPLIT_KEYS:
        raise DatasetError(f"unknown CVACT split {split!r}; expected one of {', '.join(SPLIT_KEYS)}")
    meta_path = root / ACT_DATA_FILE
    meta = read_act_data(meta_path)
    if split not in meta.splits:
        struct, fld = SPLIT_KEYS[split]
        raise DatasetError(f"{meta_path} has no {struct}.{fld} (the {split} split)")
    rows = meta.splits[split]
    utm = meta.utm[rows]
    if utm.size and not np.all(np.isfinite(utm)):
        raise DatasetError(f"{meta_path}: utm holds non-finite positions")
    # A UTM easting is 500 km +- 334 km inside its zone; a northing is 0..10,000 km.
    if utm.size and (
        utm[:, 0].min() < 100_000
        or utm[:, 0].max() > 900_000
        or utm[:, 1].min() < 0
        or utm[:, 1].max() > 10_000_000
    ):
        raise DatasetError(f"{meta_path}: utm does not hold UTM eastings/northings in metres")
    lat, lon = utm_to_latlon(utm[:, 0], utm[:, 1], utm_epsg)
    if lat.size and not (np.all(np.isfinite(lat)) and np.all(np.isfinite(lon))):
        raise DatasetError(f"{meta_path}: utm positions do not convert from EPSG:{utm_epsg}")
    images = cvact_image_root(root, split)
    gallery = Gallery("cvact")
    for k, i in enumerate(rows):
        pano_id = meta.pano_ids[int(i)]
        path = images / SATELLITE_DIR / f"{pano_id}_satView_polish.jpg"
        tile = GalleryTile(path, float(lat[k]), float(lon[k]), cvact_tile_size_m(float(lat[k])), pano_id)
        _add(gallery, tile, check_images)
    return gallery


def open_gallery(
    data: str | Path,
    *,
    cities: Sequence[str] | None = None,
    split: str | None = None,
    utm_epsg: int | None = None,
    check_images: bool = True,
) -> Gallery:
    """The gallery of the CVACT or VIGOR folder `data` (detected as `cvm train` does)."""
    from model.cvact import is_cvact_root
    from model.vigor import is_vigor_root

    path = Path(data)
    if is_cvact_root(path):
        if cities:
            raise DatasetError(f"--city applies to VIGOR folders; {path} is a CVACT folder")
        return cvact_gallery(path, split or "val", utm_epsg or CVACT_UTM_EPSG, check_images)
    if is_vigor_root(path):
        if split is not None or utm_epsg is not None:
            raise DatasetError(
                f"--split and --utm-epsg apply to CVACT folders; {path} is a VIGOR folder "
                "(its gallery is every listed tile, centred by its name)"
            )
        return vigor_gallery(path, cities, check_images)
    raise DatasetError(
        f"{path} is neither a CVACT folder ({ACT_DATA_FILE}) nor a VIGOR folder (splits/<City>/{TILE_LIST})"
    )


def summarise(gallery: Gallery) -> str:
    """One line: how many tiles were listed, written and left out."""
    left = len(gallery.problems)
    text = f"{gallery.dataset}: {len(gallery.tiles)} of {gallery.listed} tiles written"
    return text + (f", {left} left out (listed above)" if left else "")
