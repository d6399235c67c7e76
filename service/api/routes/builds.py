"""GET /builds/active, /builds/{id}/overview.png and /builds/{id}/coverage: what the map page draws
under the results (the imagery's overview as a basemap, and the outline of the indexed area)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Response
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse

from service.api.deps import CatalogDep, StateDep
from service.api.params import ASCII_ID
from service.catalog import FINISHED, Catalog
from service.core.state import AppState
from service.coverage import Coverage, coverage_of
from service.errors import NotReady, OverviewMissing, UnknownBuild
from service.schemas import BuildOut, CoverageOut, ErrorOut, OverviewOut, error_responses
from service.snapshot import IndexSnapshot, resolve_index_dir
from storage.overview import OVERVIEW_PNG, read_overview

router = APIRouter(prefix="/builds", tags=["builds"])

# Build ids are 32-bit integers in the catalogue.
BUILD_ID_MAX = 2**31 - 1
BuildId = Annotated[int, PathParam(ge=0, le=BUILD_ID_MAX, description="build id"), ASCII_ID]
# Reading every tile's bbox of a large build that is not served takes longer than a tile lookup.
BOUNDS_TIMEOUT_S = 60.0
COVERAGE_CACHE = 16
NO_OVERVIEW = "has no overview (built before overviews were made, or of pre-cut tiles only)"
ERRORS = error_responses(
    {
        404: "no build with that id, or none of its tiles or files",
        422: "build id not an integer in [0, 2**31 - 1]",
        503: "catalogue database not connected or not reachable",
    }
)


# The coverage's 200 is GeoJSON; its errors are JSON like every other (stated per status, as a
# route's own media type would otherwise be documented for them).
JSON_ERRORS = {
    code: {
        "description": answer["description"],
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ErrorOut.__name__}"}}},
    }
    for code, answer in ERRORS.items()
}


class GeoJSONResponse(JSONResponse):
    media_type = "application/geo+json"


def served(state: AppState) -> IndexSnapshot | None:
    return state.store.current if state.store is not None else None


async def coverage(state: AppState, catalog: Catalog | None, build_id: int) -> Coverage:
    """The coverage of a build: from the served snapshot's tiles, else from the catalogue; kept
    for finished builds (their tiles never change)."""
    found = state.coverages.get(build_id)
    if found is not None:
        return found
    snap = served(state)
    if snap is not None and snap.build_id == build_id:
        places = list(snap.tiles.values())
        bounds = await asyncio.to_thread(
            lambda: np.asarray([(t.west, t.south, t.east, t.north) for t in places], dtype=np.float64)
        )
        keep = True
    else:
        if catalog is None:
            raise NotReady("the catalogue is not connected yet")
        info = await catalog.run(catalog.build, build_id)
        if info is None:
            raise UnknownBuild(f"no build with id {build_id}")
        bounds = await catalog.run(catalog.tile_bounds, build_id, timeout_s=BOUNDS_TIMEOUT_S)
        keep = info.status in FINISHED
    if len(bounds) == 0:
        raise UnknownBuild(f"build {build_id} has no tiles")
    result = await asyncio.to_thread(coverage_of, bounds)
    if keep:
        while len(state.coverages) >= COVERAGE_CACHE:
            state.coverages.pop(next(iter(state.coverages)))
        state.coverages[build_id] = result
    return result


async def build_folder(state: AppState, catalog: Catalog, build_id: int) -> Path:
    """The folder of a build's index files (and overview)."""
    snap = served(state)
    if snap is not None and snap.build_id == build_id:
        return snap.index_dir
    info = await catalog.run(catalog.build, build_id)
    if info is None:
        raise UnknownBuild(f"no build with id {build_id}")
    if not info.index_path:
        raise OverviewMissing(f"build {build_id} {NO_OVERVIEW}")
    return resolve_index_dir(info.index_path, state.settings.index_root)


@router.get(
    "/active",
    response_model=BuildOut,
    responses=error_responses({503: "no build served yet (index not loaded), or catalogue not reachable"}),
    summary="The served build: extent, overview and coverage links",
)
async def active_build(state: StateDep) -> BuildOut:
    if state.store is None:
        raise NotReady("index not loaded: startup not finished")
    snap = state.store.require()
    cov = await coverage(state, state.catalog, snap.build_id)
    overview = await asyncio.to_thread(read_overview, snap.index_dir)
    return BuildOut(
        build_id=snap.build_id,
        n_tiles=snap.ntotal,
        bbox=cov.bbox,
        overview=None
        if overview is None
        else OverviewOut(
            url=f"/builds/{snap.build_id}/overview.png",
            bounds=overview.bounds,
            width=overview.width,
            height=overview.height,
        ),
        coverage_url=f"/builds/{snap.build_id}/coverage",
    )


@router.get(
    "/{build_id}/overview.png",
    response_class=Response,
    responses={
        200: {
            "description": "the build's imagery, downsampled and warped to Web Mercator (RGBA)",
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
        },
        **ERRORS,
    },
    summary="Overview image of a build's imagery (the page's basemap)",
)
async def overview_png(build_id: BuildId, state: StateDep, catalog: CatalogDep) -> Response:
    folder = await build_folder(state, catalog, build_id)
    if await asyncio.to_thread(read_overview, folder) is None:
        raise OverviewMissing(f"build {build_id} {NO_OVERVIEW}")
    try:
        png = await asyncio.to_thread((folder / OVERVIEW_PNG).read_bytes)
    except OSError:
        raise OverviewMissing(f"build {build_id}: its {OVERVIEW_PNG} cannot be read") from None
    # A build's overview is written before the build is published and never changes afterwards.
    return Response(png, media_type="image/png", headers={"Cache-Control": "public, max-age=86400"})


@router.get(
    "/{build_id}/coverage",
    response_model=CoverageOut,
    response_class=GeoJSONResponse,
    responses=JSON_ERRORS,
    summary="The area a build covers, as a GeoJSON Feature",
)
async def build_coverage(build_id: BuildId, state: StateDep) -> CoverageOut:
    cov = await coverage(state, state.catalog, build_id)
    return CoverageOut.model_validate(
        {
            "type": "Feature",
            "bbox": cov.bbox,
            "geometry": cov.geometry,
            "properties": {"build_id": build_id, "n_tiles": cov.n_tiles, "cells": cov.cells},
        }
    )
