"""GET /tiles/{id} (metadata) and GET /tiles/{id}/image (PNG cut from the source raster)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Response

from service.api.deps import CatalogDep, SettingsDep
from service.api.params import ASCII_ID
from service.catalog import Catalog, TileRecord
from service.errors import TileNotFound
from service.schemas import TileOut, error_responses, tile_out
from service.tile_images import render_tile_png

router = APIRouter(prefix="/tiles", tags=["tiles"])

# Ids are 64-bit signed in the catalogue and in FAISS; a larger number names no tile.
TILE_ID_MAX = 2**63 - 1
TileId = Annotated[int, Path(ge=0, le=TILE_ID_MAX, description="tile id (= its FAISS id)"), ASCII_ID]
ERRORS = error_responses(
    {
        404: "no such tile, or its source is gone",
        422: "tile id not an integer in [0, 2**63 - 1]",
        503: "catalogue database not connected or not reachable",
    }
)


async def find_tile(tile_id: int, catalog: Catalog) -> TileRecord:
    """A tile of any build (the catalogue is the reference, not the served snapshot)."""
    tile = await catalog.run(catalog.tile, tile_id)
    if tile is None:
        raise TileNotFound(f"no tile with id {tile_id}")
    return tile


@router.get("/{tile_id}", response_model=TileOut, responses=ERRORS, summary="Tile metadata")
async def get_tile(tile_id: TileId, catalog: CatalogDep) -> TileOut:
    return tile_out(await find_tile(tile_id, catalog))


@router.get(
    "/{tile_id}/image",
    response_class=Response,
    responses={
        200: {
            "description": "the tile's imagery, resampled to CVM_TILE_IMAGE_PX pixels a side",
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
        },
        **ERRORS,
    },
    summary="Tile imagery as PNG",
)
async def get_tile_image(tile_id: TileId, catalog: CatalogDep, settings: SettingsDep) -> Response:
    tile = await find_tile(tile_id, catalog)
    png = await asyncio.to_thread(render_tile_png, tile, settings.tile_image_px)
    # A tile id never changes its pixels (a new build gets new ids), so browsers may keep it.
    return Response(png, media_type="image/png", headers={"Cache-Control": "public, max-age=86400"})
