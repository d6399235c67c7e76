"""POST /localize: rank the tiles of the active build for an uploaded ground image."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import JSONResponse

from service.api.deps import LocalizationDep, MetricsDep
from service.prior import BBOX_PATTERN, MAX_RADIUS_M, NEAR_PATTERN, parse_prior
from service.schemas import LocalizeGeoJsonOut, LocalizeOut, error_responses, localize_geojson, localize_out

router = APIRouter(tags=["localize"])

GEOJSON = "application/geo+json"
# Most tiles `?heat=N` answers (2,000 points are about 60 KB of JSON).
HEAT_MAX = 2000
# The formats `service.imaging` accepts, as the media types of the multipart part `image`.
IMAGE_TYPES = "image/jpeg, image/png, image/webp"
ERRORS = error_responses(
    {
        400: "empty upload (0 bytes)",
        408: "request body not received within CVM_BODY_TIMEOUT_S (default 30 s)",
        413: "request body over CVM_MAX_UPLOAD_MB, or image header announcing more than "
        "CVM_MAX_IMAGE_PIXELS pixels",
        415: "not a JPEG, PNG or WebP image",
        422: "undecodable (e.g. truncated) image, a side under 16 px or a long side over 16 times "
        "the short one, missing or non-file `image` field, query parameter out of range, bad search "
        "prior (near/radius_m/bbox malformed or out of range, inverted bbox, near with bbox, no tile "
        "of the build inside)",
        503: "model or index not loaded",
    }
)
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "ranked candidates, as JSON or as GeoJSON",
        "content": {GEOJSON: {"schema": {"$ref": f"#/components/schemas/{LocalizeGeoJsonOut.__name__}"}}},
    },
    **ERRORS,
}
# The search prior's query parameters (`service.prior`).
NEAR_DOC = (
    "search prior: `LAT,LON` (degrees, WGS84); only tiles whose centre lies within "
    "`radius_m` of it are ranked. Not with `bbox`"
)
BBOX_DOC = (
    "search prior: `W,S,E,N` (degrees, west < east, south < north); only tiles whose "
    "centre lies inside are ranked. Not with `near`"
)
# The multipart part `image` is a file of one of the accepted image types (OpenAPI `encoding`).
REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "description": "`image`: a JPEG, PNG or WebP file; the request body is at most CVM_MAX_UPLOAD_MB "
        "(default 20 MiB) and the image at most CVM_MAX_IMAGE_PIXELS pixels (default 40,000,000)",
        "content": {"multipart/form-data": {"encoding": {"image": {"contentType": IMAGE_TYPES}}}},
    }
}


def prior_query(pattern: str, fmt: str, description: str) -> Any:
    """The query parameter of a textual search prior: matching `pattern`, documented as `fmt`."""
    return Query(pattern=pattern, json_schema_extra={"format": fmt}, description=description)


def wants_geojson(request: Request, fmt: str | None) -> bool:
    """`?format=geojson`, or an Accept header asking for GeoJSON (and `?format=json` not given)."""
    if fmt is not None:
        return fmt == "geojson"
    return GEOJSON in request.headers.get("accept", "")


@router.post(
    "/localize",
    response_model=LocalizeOut,
    responses=RESPONSES,
    openapi_extra=REQUEST_BODY,
    summary="Top-k satellite tiles for a ground photo or panorama",
)
async def localize(
    request: Request,
    service: LocalizationDep,
    metrics: MetricsDep,
    image: Annotated[
        UploadFile,
        File(
            description="JPEG, PNG or WebP ground image (a file part), at most CVM_MAX_IMAGE_PIXELS pixels",
            json_schema_extra={"format": "binary"},
        ),
    ],
    k: Annotated[int, Query(ge=1, le=100, description="number of candidates")] = 5,
    kind: Annotated[
        Literal["panorama", "photo"] | None,
        Query(description="input kind; default: panorama when width / height >= 3, else photo"),
    ] = None,
    format: Annotated[Literal["json", "geojson"] | None, Query(description="answer format")] = None,
    heat: Annotated[
        int,
        Query(
            ge=0,
            le=HEAT_MAX,
            description="also answer the N best tiles of the same search as [lon, lat, score] (`heat`), "
            "for a score heat map; 0: none",
        ),
    ] = 0,
    near: Annotated[str | None, prior_query(NEAR_PATTERN, "lat,lon", NEAR_DOC)] = None,
    radius_m: Annotated[
        float | None,
        Query(gt=0, le=MAX_RADIUS_M, description="radius of the `near` prior in metres (required with it)"),
    ] = None,
    bbox: Annotated[str | None, prior_query(BBOX_PATTERN, "w,s,e,n", BBOX_DOC)] = None,
) -> Any:
    prior = parse_prior(near, radius_m, bbox)  # BadPrior: 422 before the upload is read
    data = await image.read()
    result = await service.localize(data, k, kind, heat, prior=prior)
    metrics.observe_localize(result.timings_ms, result.batch_size)
    out = localize_out(result, k)
    if wants_geojson(request, format):
        return JSONResponse(localize_geojson(out), media_type=GEOJSON)
    return out
