"""POST /localize: rank the tiles of the active build for an uploaded ground image."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import JSONResponse

from service.api.deps import LocalizationDep, MetricsDep
from service.schemas import LocalizeOut, localize_geojson, localize_out

router = APIRouter(tags=["localize"])

GEOJSON = "application/geo+json"
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "empty upload"},
    413: {"description": "upload over CVM_MAX_UPLOAD_MB, or image over CVM_MAX_IMAGE_PIXELS"},
    415: {"description": "not a JPEG, PNG or WebP image"},
    422: {"description": "undecodable (e.g. truncated) image, missing field, k out of range"},
    503: {"description": "model or index not loaded"},
}


def wants_geojson(request: Request, fmt: str | None) -> bool:
    """`?format=geojson`, or an Accept header asking for GeoJSON (and `?format=json` not given)."""
    if fmt is not None:
        return fmt == "geojson"
    return GEOJSON in request.headers.get("accept", "")


@router.post(
    "/localize",
    response_model=LocalizeOut,
    responses={200: {"content": {GEOJSON: {}}}, **ERRORS},
    summary="Top-k satellite tiles for a ground photo or panorama",
)
async def localize(
    request: Request,
    service: LocalizationDep,
    metrics: MetricsDep,
    image: Annotated[UploadFile, File(description="JPEG, PNG or WebP ground image")],
    k: Annotated[int, Query(ge=1, le=100, description="number of candidates")] = 5,
    kind: Annotated[
        Literal["panorama", "photo"] | None,
        Query(description="input kind; default: panorama when width / height >= 3, else photo"),
    ] = None,
    format: Annotated[Literal["json", "geojson"] | None, Query(description="answer format")] = None,
) -> Any:
    data = await image.read()
    result = await service.localize(data, k, kind)
    metrics.observe_localize(result.timings_ms, result.batch_size)
    out = localize_out(result, k)
    if wants_geojson(request, format):
        return JSONResponse(localize_geojson(out), media_type=GEOJSON)
    return out
