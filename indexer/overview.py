"""The build's overview (storage.overview): its rasters drawn into one small Web Mercator image,
written into the build folder when the index is published, for the map page's basemap.

Only raster inputs are drawn; a build of pre-cut tiles alone has no overview. An overview that
cannot be made is reported on stderr and leaves the build as it is: the page then shows the
coverage outline without a basemap.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Collection
from pathlib import Path

from pyproj.exceptions import CRSError
from rasterio.errors import RasterioError

from indexer.params import BuildParams
from storage.overview import Overview, OverviewSource, write_overview

log = logging.getLogger(__name__)


def overview_sources(params: BuildParams, exclude: Collection[str] = ()) -> list[OverviewSource]:
    """The build's rasters as read for its tiles (bands, stretch), less `exclude` (failed files)."""
    return [
        OverviewSource(info.path, tuple(info.bands), info.stretch)  # type: ignore[arg-type]
        for path, info in sorted(params.raster_infos.items())
        if path not in exclude
    ]


def write_build_overview(folder: Path, params: BuildParams, exclude: Collection[str] = ()) -> Overview | None:
    """overview.png + overview.json of the build's rasters in `folder`; None when there are none
    or the overview cannot be made (reported, not raised)."""
    sources = overview_sources(params, exclude)
    if not sources:
        return None
    try:
        return write_overview(folder, sources)
    except (RasterioError, CRSError, OSError, ValueError) as exc:
        log.warning("no overview written into %s: %s", folder, exc)
        print(f"warning: no overview of the imagery (the map page shows no basemap): {exc}", file=sys.stderr)
        return None
