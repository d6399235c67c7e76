"""Pydantic models of the HTTP API (requests, responses, GeoJSON)."""

from __future__ import annotations

import json
from pathlib import PurePath
from typing import Annotated, Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, Field, WithJsonSchema
from pydantic.json_schema import models_json_schema

from service.catalog import TileRecord
from service.core.config import ServiceSettings
from service.locate import LocationEstimate
from service.pipeline import LocalizeResult


def number_array(n: int) -> WithJsonSchema:
    """JSON schema of an n-tuple of floats as an array of n numbers. Pydantic writes tuples with
    `prefixItems`, valid OpenAPI 3.1 that some tools (schemathesis among them) still mishandle."""
    return WithJsonSchema({"type": "array", "items": {"type": "number"}, "minItems": n, "maxItems": n})


Bbox = Annotated[tuple[float, float, float, float], number_array(4)]
HeatPoint = Annotated[tuple[float, float, float], number_array(3)]


class CandidateOut(BaseModel):
    """One ranked tile. bbox is [west, south, east, north] in degrees."""

    rank: int = Field(ge=1)
    tile_id: int
    lat: float
    lon: float
    score: float = Field(description="inner product of the L2-normalised descriptors (cosine)")
    bbox: Bbox


class EstimateOut(BaseModel):
    """Where the query most likely is: the weighted centre of the best-scoring group of nearby tiles,
    a radius around it, and the calibrated probability that the true place lies within the radius."""

    lat: float
    lon: float
    radius_m: float = Field(ge=0, description="radius around (lat, lon), metres")
    confidence: float = Field(
        ge=0, le=1, description="probability that the true place lies within radius_m (calibrated)"
    )
    confident: bool = Field(description="confidence reached the calibrated threshold")
    note: str | None = Field(default=None, description='"no confident match" when not confident')
    reason: str | None = Field(
        default=None,
        description="why the answer is no confident match whatever the tiles say: the image is "
        "unlike the imagery the weights were calibrated on (null otherwise)",
    )


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
    estimate: EstimateOut | None = Field(
        default=None, description="the location estimate from the consensus of the best tiles"
    )
    heat: list[HeatPoint] = Field(
        default_factory=list,
        description="with ?heat=N: the N best tiles of the same search as [lon, lat, score], best first",
    )


class PointOut(BaseModel):
    """GeoJSON Point of a candidate's tile centre."""

    type: Literal["Point"]
    coordinates: Annotated[tuple[float, float], number_array(2)] = Field(description="[lon, lat] in degrees")


class CandidatePropertiesOut(CandidateOut):
    """A candidate's JSON fields and its role in the collection."""

    role: Literal["candidate"]


class CandidateFeatureOut(BaseModel):
    """GeoJSON Feature of one ranked tile; `properties` are the candidate's JSON fields."""

    type: Literal["Feature"]
    id: int = Field(description="tile id")
    bbox: Bbox
    geometry: PointOut
    properties: CandidatePropertiesOut


class EstimatePropertiesOut(BaseModel):
    """The estimate's fields other than its position (the Point)."""

    role: Literal["estimate"]
    radius_m: float
    confidence: float
    confident: bool
    note: str | None
    reason: str | None = None


class EstimateFeatureOut(BaseModel):
    """GeoJSON Feature of the location estimate (`properties.role` = "estimate")."""

    type: Literal["Feature"]
    geometry: PointOut
    properties: EstimatePropertiesOut


class LocalizeGeoJsonOut(BaseModel):
    """Answer of POST /localize as an RFC 7946 FeatureCollection (`?format=geojson`, or an Accept
    header asking for application/geo+json); the request-level fields are foreign members."""

    type: Literal["FeatureCollection"]
    features: list[CandidateFeatureOut | EstimateFeatureOut] = Field(
        description="the candidates (role candidate), then the estimate (role estimate) when there is one"
    )
    build_id: int
    kind: Literal["panorama", "photo"]
    k: int
    timings_ms: dict[str, float]
    batch_size: int
    heat: list[HeatPoint] = Field(default_factory=list, description="as in the JSON answer")


class ErrorOut(BaseModel):
    """Body of every error answer (4xx, 503): `{"detail": "<what is wrong>"}`."""

    detail: str = Field(description="what is wrong, in words")


def error_responses(descriptions: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries of a route: each status code with its description and an ErrorOut body."""
    return {code: {"model": ErrorOut, "description": text} for code, text in descriptions.items()}


class TileOut(BaseModel):
    """Metadata of one tile (GET /tiles/{id})."""

    tile_id: int
    build_id: int
    lat: float
    lon: float
    bbox: Bbox
    footprint: dict[str, Any] = Field(description="GeoJSON Polygon of the true footprint ([lon, lat])")
    source: str = Field(description="file name of the tile's source raster or image (no server folders)")
    window: Annotated[tuple[float, float, float, float], number_array(4)] | None = Field(
        description="(col_off, row_off, width, height) in source pixels; null for pre-cut tiles"
    )
    crs: str | None
    gsd_m: float | None
    size_m: float
    image_url: str


class OverviewOut(BaseModel):
    """A build's overview image (its imagery downsampled, in Web Mercator)."""

    url: str = Field(description="the PNG (RGBA; transparent where there is no imagery)")
    bounds: Bbox = Field(description="[west, south, east, north] of the image's corners, degrees")
    width: int = Field(description="pixels")
    height: int = Field(description="pixels")


class BuildOut(BaseModel):
    """The served build (GET /builds/active): what the map page needs to draw it."""

    build_id: int
    n_tiles: int = Field(description="tiles in the index")
    bbox: Bbox = Field(description="[west, south, east, north] of all tiles, degrees")
    overview: OverviewOut | None = Field(description="the basemap; null for a build without one")
    coverage_url: str = Field(description="GeoJSON Feature of the covered area")


class CoveragePropertiesOut(BaseModel):
    build_id: int
    n_tiles: int
    cells: Annotated[
        tuple[int, int],
        WithJsonSchema({"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2}),
    ] = Field(description="(rows, cols) of the grid the tiles' bboxes were merged on")


class CoverageGeometryOut(BaseModel):
    """GeoJSON MultiPolygon ([lon, lat] rings, exteriors counterclockwise)."""

    type: Literal["MultiPolygon"]
    coordinates: list[list[list[Annotated[tuple[float, float], number_array(2)]]]]


class CoverageOut(BaseModel):
    """The area a build covers (GET /builds/{id}/coverage): an RFC 7946 Feature."""

    type: Literal["Feature"]
    bbox: Bbox
    geometry: CoverageGeometryOut
    properties: CoveragePropertiesOut


class HealthOut(BaseModel):
    status: str


class ReadyOut(BaseModel):
    ready: bool
    reasons: list[str] = Field(description="why the service is not ready (empty when ready)")
    warnings: list[str] = Field(
        default_factory=list,
        description="ready, but not as configured (e.g. an older build served: the active one is corrupt)",
    )
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
        estimate=estimate_out(result.estimate),
        heat=result.heat,  # type: ignore[arg-type]
    )


def localize_geojson(out: LocalizeOut) -> dict[str, Any]:
    """RFC 7946 FeatureCollection: one Point ([lon, lat]) per candidate, same properties and
    `role` "candidate"; then the estimate as a Point with `role` "estimate" and its radius,
    confidence, confident, note and reason."""
    features: list[dict[str, Any]] = [
        {
            "type": "Feature",
            "id": c.tile_id,
            "bbox": list(c.bbox),
            "geometry": {"type": "Point", "coordinates": [c.lon, c.lat]},
            "properties": {**c.model_dump(mode="json"), "role": "candidate"},
        }
        for c in out.candidates
    ]
    est = out.estimate
    if est is not None:
        props = est.model_dump(mode="json", exclude={"lat", "lon"})
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [est.lon, est.lat]},
                "properties": {"role": "estimate", **props},
            }
        )
    # Foreign members (RFC 7946 section 6.1) carry the request-level fields.
    extra = out.model_dump(mode="json", exclude={"candidates", "estimate"})
    return {"type": "FeatureCollection", "features": features, **extra}


def estimate_out(est: LocationEstimate | None) -> EstimateOut | None:
    """The JSON form of a location estimate (position rounded to 1e-7 degrees, radius to 0.1 m)."""
    if est is None:
        return None
    return EstimateOut(
        lat=round(est.lat, 7),
        lon=round(est.lon, 7),
        radius_m=round(est.radius_m, 1),
        confidence=round(est.confidence, 4),
        confident=est.confident,
        note=est.note,
        reason=est.reason,
    )


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


SCHEMA_REF = "#/components/schemas/{model}"
# Models the routes name by `$ref` only (the GeoJSON answer), which FastAPI does not collect itself.
REFERENCED_MODELS: tuple[type[BaseModel], ...] = (LocalizeGeoJsonOut, ErrorOut)
VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")


def install_openapi(app: FastAPI, settings: ServiceSettings) -> None:
    """Make `app.openapi()` state what the service really answers.

    FastAPI documents a 422 with its own `HTTPValidationError` body on every route with parameters;
    this service answers `{"detail": "<text>"}` (service.errors), so every 422 is an ErrorOut. The
    models referenced only by `$ref` are added to the components, and the upload limits of this
    instance are written into the description of POST /localize's body.
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)  # generates and caches app.openapi_schema
            _fix_openapi(schema, settings)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def _fix_openapi(schema: dict[str, Any], settings: ServiceSettings) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    _, defs = models_json_schema([(m, "serialization") for m in REFERENCED_MODELS], ref_template=SCHEMA_REF)
    for name, definition in defs.get("$defs", {}).items():
        components.setdefault(name, definition)
    error_ref = SCHEMA_REF.format(model=ErrorOut.__name__)
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            answer = operation.get("responses", {}).get("422")
            if answer is None:
                continue
            content = answer.setdefault("content", {}).setdefault("application/json", {})
            if content.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                answer["description"] = "invalid request: `detail` names each invalid input and why"
                content["schema"] = {"$ref": error_ref}
    text = json.dumps(schema.get("paths", {}))
    for name in VALIDATION_SCHEMAS:
        if f'/{name}"' not in text:
            components.pop(name, None)
    if settings.api_key is not None and settings.api_key.get_secret_value():
        _require_api_key(schema, error_ref)
    body = schema.get("paths", {}).get("/localize", {}).get("post", {}).get("requestBody")
    if body is not None:
        body["description"] = (
            f"{body.get('description', '')}. This instance: at most {settings.max_upload_mb:g} MiB "
            f"({settings.max_upload_bytes} bytes) and {settings.max_image_pixels} pixels"
        )


def _require_api_key(schema: dict[str, Any], error_ref: str) -> None:
    """State the API key (CVM_API_KEY) as a security scheme of every route that needs it."""
    from service.api_key import HEADER, is_open

    schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes["ApiKey"] = {"type": "apiKey", "in": "header", "name": HEADER}
    schemes["Bearer"] = {"type": "http", "scheme": "bearer"}
    for path, operations in schema.get("paths", {}).items():
        if is_open(path):
            continue
        for operation in operations.values():
            operation["security"] = [{"ApiKey": []}, {"Bearer": []}]
            operation.setdefault("responses", {})["401"] = {
                "description": "missing or wrong API key",
                "content": {"application/json": {"schema": {"$ref": error_ref}}},
            }
