"""Domain exceptions of the service and the one table mapping them to HTTP status codes.

Handlers and the classes they call raise these; `install_error_handlers` turns them into JSON
`{"detail": "<what is wrong>"}` responses. Anything not in the table is a server fault (500) and
its details are logged, never sent.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """Base of the errors the service reports to its caller; the message is the `detail`."""


class EmptyUpload(ServiceError):
    """The uploaded file has no bytes."""


class UnsupportedImage(ServiceError):
    """The upload is not an image, or not one of the accepted formats."""


class CorruptImage(ServiceError):
    """The upload claims an accepted format but cannot be decoded (e.g. truncated)."""


class ImageTooLarge(ServiceError):
    """The image header announces more pixels than the service decodes."""


class ImageShapeRejected(ServiceError):
    """The image header announces a shape no camera makes (a strip, or a side of a few pixels)."""


class UploadTooLarge(ServiceError):
    """The request body is over the upload limit."""


class TileNotFound(ServiceError):
    """No tile has the requested id."""


class TileSourceMissing(ServiceError):
    """The tile exists but its source raster or image file is gone or unreadable."""


class UnknownBuild(ServiceError):
    """No build has the requested id."""


class OverviewMissing(ServiceError):
    """The build has no overview image (an older build, or one of pre-cut tiles only)."""


class NotReady(ServiceError):
    """The model or the index is not loaded (yet)."""


class CatalogUnavailable(ServiceError):
    """The catalogue database cannot be reached."""


class IndexBuildError(ServiceError):
    """An index build's files are missing or do not match the served weights."""


class BadPrior(ServiceError):
    """A search prior (near/radius_m, bbox) that is malformed, out of range or holds no tile."""


STATUS_CODES: dict[type[ServiceError], int] = {
    EmptyUpload: 400,
    UnsupportedImage: 415,
    CorruptImage: 422,
    ImageTooLarge: 413,
    ImageShapeRejected: 422,
    UploadTooLarge: 413,
    TileNotFound: 404,
    TileSourceMissing: 404,
    UnknownBuild: 404,
    OverviewMissing: 404,
    NotReady: 503,
    CatalogUnavailable: 503,
    IndexBuildError: 503,
    BadPrior: 422,
}


def status_code_for(exc: ServiceError) -> int:
    """The HTTP status of a domain exception (most specific class in the table wins)."""
    for cls in type(exc).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]  # type: ignore[index]
    return 500


def error_response(status_code: int, detail: str) -> JSONResponse:
    """The JSON body every error of this service has."""
    return JSONResponse({"detail": detail}, status_code=status_code)


def _validation_detail(exc: RequestValidationError) -> str:
    """One readable line per invalid input, e.g. "query parameter 'k': ... less than or equal to 100"."""
    kinds = {"query": "query parameter", "path": "path parameter", "body": "form field"}
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        where = kinds.get(loc[0], loc[0]) if loc else "request"
        name = ".".join(loc[1:]) or "body"
        parts.append(f"{where} {name!r}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return error_response(status_code_for(exc), str(exc))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, _validation_detail(exc))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal server error (logged)")


def install_error_handlers(app: FastAPI) -> None:
    """Register the status table and the validation/HTTP/unexpected handlers on `app`."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
