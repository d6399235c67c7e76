"""Pydantic models of the HTTP API (requests, responses, GeoJSON)."""

from __future__ import annotations

import json
from pathlib import PurePath
from typing import Any, Literal

from pydantic import BaseModel, Field

from service.catalog import TileRecord
from service.pipeline import LocalizeResult

Bbox = tuple[float, float, float, float]


class CandidateOut(BaseModel):
    """One ranked tile. bbox is [west, south, east, north] in degrees."""

    rank: int = Field(ge=1)
    tile_id: int
    lat: float
    lon: float
    score: float = Field(description="inner product of the L2-normalised descriptors (cosine)")
    bbox: Bbox


class LocalizeOut(BaseModel):
    """Answer of POST /localize."""

    build_id: int
    kind: Literal["panorama", "photo"]
    k: int
    candidates: list[CandidateOut]
    timings_ms: dict[str, float] = Field(
        description="decode, preprocess, queue, forward, search, database and total, in ms"
    )
    batch_size: int = Field(description="images in the forward pass this request shared")


class TileOut(BaseModel):
    """Metadata of one tile (GET /tiles/{id})."""

    tile_id: int
    build_id: int
    lat: float
    lon: float
    bbox: Bbox
    footprint: dict[str, Any] = Field(description="GeoJSON Polygon of the true footprint ([lon, lat])")
    source: str = Field(description="file name of the tile's source raster or image (no server folders)")
    window: tuple[float, float, float, float] | None = Field(
        description="(col_off, row_off, width, height) in source pixels; null for pre-cut tiles"
    )
    crs: str | None
    gsd_m: float | None
    size_m: float
    image_url: str


class HealthOut(BaseModel):
    status: str


class ReadyOut(BaseModel):
    ready: bool
    reasons: list[str]
    build_id: int | None
    ntotal: int | None
    weights_sha256: str | None


def localize_out(result: LocalizeResult, k: int) -> LocalizeOut:
    """The JSON answer of a localisation."""
    cands = [
        CandidateOut(
            rank=c.rank, tile_id=c.tile.id, lat=c.tile.lat, lon=c.tile.lon, score=c.score, bbox=c.tile.bbox
        )
        for c in result.candidates
    ]
    return LocalizeOut(
        build_id=result.build_id,
        kind=result.kind,  # type: ignore[arg-type]
        k=k,
        candidates=cands,
        timings_ms=result.timings_ms,
        batch_size=result.batch_size,
    )


def localize_geojson(out: LocalizeOut) -> dict[str, Any]:
    """RFC 7946 FeatureCollection: one Point ([lon, lat]) per candidate, same properties."""
    features = [
        {
            "type": "Feature",
            "id": c.tile_id,
            "bbox": list(c.bbox),
            "geometry": {"type": "Point", "coordinates": [c.lon, c.lat]},
            "properties": c.model_dump(mode="json"),
        }
        for c in out.candidates
    ]
    # Foreign members (RFC 7946 section 6.1) carry the request-level fields.
    extra = out.model_dump(mode="json", exclude={"candidates"})
    return {"type": "FeatureCollection", "features": features, **extra}


def tile_out(tile: TileRecord) -> TileOut:
    """The JSON metadata of a tile."""
    window = None
    if not tile.is_precut:
        window = (tile.col_off, tile.row_off, tile.width, tile.height)
    try:
        footprint = json.loads(tile.footprint)
    except ValueError:
        footprint = {}
    return TileOut(
        tile_id=tile.id,
        build_id=tile.build_id,
        lat=tile.lat,
        lon=tile.lon,
        bbox=tile.bbox,
        footprint=footprint,
        source=PurePath(tile.source).name,
        window=window,  # type: ignore[arg-type]
        crs=tile.crs,
        gsd_m=tile.gsd_m,
        size_m=tile.size_m,
        image_url=f"/tiles/{tile.id}/image",
    )
