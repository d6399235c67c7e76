"""Generated requests against the OpenAPI schema: no server errors, every answer as documented.

Schemathesis reads the app's OpenAPI schema (the one a real server over the shared test world
serves, checked below) and sends coverage cases (boundaries, missing and invalid values) and random
cases of every operation, positive and negative, to that server (uvicorn on a free local port,
lifespan run once). Each response is checked against the schema: status code documented, content
type, body schema, no 5xx, valid data accepted and invalid data rejected. The multipart part
`image` is declared with the accepted image types (OpenAPI `encoding`); the strategies registered
below give those types real JPEG, PNG and WebP files, so most generated uploads reach the model
instead of being refused as non-images.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis.specs.openapi.checks import positive_data_acceptance

from service.core.config import ServiceSettings
from service.main import create_app
from tests.support.service_world import World

# Random cases per operation with parameters; the coverage phase adds its own (boundaries,
# invalid values, unsupported methods). About 1,300 requests in all, 15-20 s on 2 cores.
MAX_EXAMPLES = 400
MIN_CASES = 1000
PIL_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}

# (method path, status, media type) of every request sent, filled by test_api_conforms_to_schema.
SENT: Counter[tuple[str, int, str]] = Counter()


@st.composite
def image_files(draw: st.DrawFn, pil_format: str) -> bytes:
    """A small noise image of `pil_format`, grey, RGB or RGBA, of a shape the service accepts
    (each side at least 16 px, at most 16:1), from square to panorama proportions."""
    height = draw(st.integers(min_value=16, max_value=48))
    width = draw(st.integers(min_value=16, max_value=4 * height))
    seed = draw(st.integers(min_value=0, max_value=2**16))
    mode = draw(st.sampled_from(["RGB", "L", "RGBA"] if pil_format != "JPEG" else ["RGB", "L"]))
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    pixels = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(buf, format=pil_format)
    return buf.getvalue()


for media_type, pil_format in PIL_FORMATS.items():
    schemathesis.openapi.media_type(media_type, image_files(pil_format))


def _world_centres() -> list[tuple[float, float]]:
    """(lat, lon) of the shared world's tile centres (tests.support.service_world's grid)."""
    from pyproj import Transformer

    from tests.support.service_world import EPSG, GRID, GSD_M, ORIGIN, TILE_PX

    to_wgs84 = Transformer.from_crs(EPSG, 4326, always_xy=True)
    side = TILE_PX * GSD_M
    centres = []
    for r in range(GRID):
        for c in range(GRID):
            lon, lat = to_wgs84.transform(ORIGIN[0] + (c + 0.5) * side, ORIGIN[1] - (r + 0.5) * side)
            centres.append((lat, lon))
    return centres


# Search priors (`near`, `bbox`) as the schema's formats: a tile centre of the world (inside any
# radius) and boxes around one, so that generated priors reach the model instead of all being
# refused as holding no tile (the coverage phase still sends malformed and out-of-range ones).
CENTRES = _world_centres()
schemathesis.openapi.format("lat,lon", st.sampled_from(CENTRES).map(lambda p: f"{p[0]!r},{p[1]!r}"))
schemathesis.openapi.format(
    "w,s,e,n",
    st.tuples(st.sampled_from(CENTRES), st.floats(1e-6, 1.0), st.floats(1e-6, 1.0)).map(
        lambda t: f"{t[0][1] - t[1]!r},{t[0][0] - t[2]!r},{t[0][1] + t[1]!r},{t[0][0] + t[2]!r}"
    ),
)


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture(scope="module")
def base_url(world: World) -> Iterator[str]:
    """A started server (uvicorn, lifespan on) over the shared world; its base URL."""
    sock = free_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(world.settings()), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


# Loaded at collection (a fixture-loaded schema needs pytest internals this pytest lacks); the
# world's settings change no part of the schema, as test_served_schema_is_the_tested_one checks.
OPENAPI = create_app(ServiceSettings()).openapi()
schema = schemathesis.openapi.from_dict(OPENAPI)


def test_served_schema_is_the_tested_one(base_url: str) -> None:
    served = httpx.get(f"{base_url}/openapi.json", timeout=30)
    assert served.status_code == 200
    assert served.json() == OPENAPI
    # Errors are documented with the service's own body, never FastAPI's validation-error schema.
    assert "HTTPValidationError" not in served.text
    errors = 0
    for path, operations in OPENAPI["paths"].items():
        body_model = "/ReadyOut" if path == "/readyz" else "/ErrorOut"  # /readyz: 503 with reasons
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                if int(status) >= 400:
                    errors += 1
                    ref = answer["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith(body_model), (method, path, status)
    assert errors >= 12
    body = OPENAPI["paths"]["/localize"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert body["encoding"]["image"]["contentType"] == "image/jpeg, image/png, image/webp"


def consistent_prior(case: schemathesis.Case) -> None:
    """A positive case with a search prior the parameters' schemas allow but that they cannot say
    is wrong together (`near` with `bbox`, `near` without `radius_m` or the reverse) keeps one
    consistent prior (or none), as a client would send."""
    query = case.query
    if not query or case.meta is None or not case.meta.generation.mode.is_positive:
        return
    if "bbox" in query or ("near" in query) != ("radius_m" in query):
        query.pop("near", None)
        query.pop("radius_m", None)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_schema(case: schemathesis.Case, base_url: str) -> None:
    consistent_prior(case)
    # A prior the schema accepts can still be refused: whether a box has west < east, or holds a
    # tile of the build, is beyond what a schema says. Such a request is checked like all others
    # (a documented 422 with an ErrorOut body) without expecting a 2xx.
    prior = bool({"near", "radius_m", "bbox"} & set(case.query or {}))
    excluded = [positive_data_acceptance] if prior else []
    response = case.call_and_validate(base_url=base_url, timeout=60, excluded_checks=excluded)
    media_type = (response.headers.get("content-type") or [""])[0].split(";")[0]
    SENT[(f"{case.method.upper()} {case.path}", response.status_code, media_type)] += 1
    assert response.status_code < 500, response.text


def test_enough_cases_and_uploads_accepted() -> None:
    """Runs after the schema test: at least MIN_CASES requests, and generated uploads got through."""
    total = sum(SENT.values())
    assert total >= MIN_CASES, f"only {total} generated requests (run the whole module): {dict(SENT)}"
    assert not [key for key in SENT if key[1] >= 500]
    localize = Counter(
        {(status, media): n for (op, status, media), n in SENT.items() if op == "POST /localize"}
    )
    # Positive cases send real images: many are localised (as JSON and as GeoJSON), invalid ones
    # are refused with 4xx.
    assert localize[(200, "application/json")] >= 25, localize
    assert localize[(200, "application/geo+json")] >= 10, localize
    assert sum(n for (status, _), n in localize.items() if 400 <= status < 500) >= 50, localize
    tiles = {status for (op, status, _) in SENT if op == "GET /tiles/{tile_id}"}
    assert {404, 422} <= tiles, tiles
