"""The map page in headless Chromium, checked from its pixels: the basemap (the build's overview),
the coverage outline, the score heat map, the candidates (none hiding another), the location
estimate, and the error state of a non-image upload."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
from PIL import Image

from service.main import create_app
from tests.support.service_world import GRID, World, panorama_bytes, tile_colour

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
# The page's drawing constants (service/static/app.js), as the pixels must show them.
HEAT_RAMP = [(44, 123, 182), (171, 217, 233), (255, 255, 191), (253, 174, 97), (215, 25, 28)]
HEAT_OPACITY = 0.65
COVERAGE = (0, 229, 255)
ESTIMATE = (214, 0, 122)
MARKER_FILLS = [(29, 38, 48), (31, 111, 235)]  # a candidate's marker, the selected one's
TOLERANCE = 12

pytestmark = pytest.mark.browser

Pixel = tuple[int, int, int]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def server_url(world: World) -> Iterator[str]:
    """The app over the shared world, served by uvicorn on 127.0.0.1 in a thread."""
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(world.settings()), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture()
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def open_page(browser: Any, url: str) -> Any:
    """The page, loaded, with the build's overview image decoded and drawn."""
    page = browser.new_page(viewport={"width": 1400, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    page.goto(url + "/")
    page.wait_for_selector("body[data-build]")
    page.wait_for_function(
        "() => { const i = document.querySelector('#map img.overview');"
        " return i && i.complete && i.naturalWidth > 0; }"
    )
    page.wait_for_selector("#map path.leaflet-interactive, #map svg path")  # the coverage outline
    page.wait_for_timeout(200)
    return page


def map_pixels(page: Any) -> np.ndarray:
    """(h, w, 3) RGB screenshot of the map element (container pixel coordinates)."""
    return np.asarray(Image.open(io.BytesIO(page.locator("#map").screenshot())).convert("RGB")).astype(int)


def container_point(page: Any, lat: float, lon: float) -> tuple[float, float]:
    x, y = page.evaluate(
        "([lat, lon]) => { const p = cvmMap.latLngToContainerPoint([lat, lon]); return [p.x, p.y]; }",
        [lat, lon],
    )
    return float(x), float(y)


def pixel(image: np.ndarray, x: float, y: float) -> Pixel:
    r, g, b = image[int(round(y)), int(round(x))]
    return (int(r), int(g), int(b))


def close(a: Pixel, b: Pixel, tol: int = TOLERANCE) -> bool:
    return max(abs(int(p) - int(q)) for p, q in zip(a, b, strict=True)) <= tol


def near(image: np.ndarray, x: float, y: float, colour: Pixel, radius: int = 3, tol: int = 40) -> bool:
    """Some pixel within `radius` of (x, y) has about `colour`."""
    h, w, _ = image.shape
    xs = slice(max(int(x) - radius, 0), min(int(x) + radius + 1, w))
    ys = slice(max(int(y) - radius, 0), min(int(y) + radius + 1, h))
    window = image[ys, xs]
    return bool((np.abs(window - np.asarray(colour)).max(axis=2) <= tol).any())


def ramp(t: float) -> Pixel:
    x = min(max(t, 0.0), 1.0) * (len(HEAT_RAMP) - 1)
    i = min(int(x), len(HEAT_RAMP) - 2)
    f = x - i
    # JavaScript's Math.round: halves up
    return tuple(
        int(np.floor(a + (b - a) * f + 0.5)) for a, b in zip(HEAT_RAMP[i], HEAT_RAMP[i + 1], strict=True)
    )  # type: ignore[return-value]


def blend(top: Pixel, base: Pixel, alpha: float) -> Pixel:
    return tuple(round(alpha * t + (1 - alpha) * b) for t, b in zip(top, base, strict=True))  # type: ignore[return-value]


def upload(page: Any, path: Path) -> dict[str, Any]:
    """Choose `path` in the page; the /localize answer once the page has drawn it."""
    before = page.evaluate("() => Number(document.body.dataset.answered || 0)")
    with page.expect_response(lambda r: "/localize" in r.url) as answer:
        page.set_input_files("#file", str(path))
    page.wait_for_function(f"() => Number(document.body.dataset.answered || 0) > {before}")
    page.wait_for_timeout(300)
    body: dict[str, Any] = answer.value.json()
    return body


def circle_hits(page: Any, image: np.ndarray, lat: float, lon: float, radius_m: float, colour: Pixel) -> int:
    """How many of 36 points on the circle of `radius_m` around (lat, lon) show about `colour`."""
    kx = 111320 * np.cos(np.radians(lat))
    hits = 0
    for a in np.radians(np.arange(0, 360, 10)):
        point = (lat + radius_m * np.sin(a) / 110540, lon + radius_m * np.cos(a) / kx)
        hits += near(image, *container_point(page, *point), colour, radius=3, tol=45)
    return hits


def tile_at(world: World, lon: float, lat: float) -> Any:
    return min(world.tiles, key=lambda t: (t.lon - lon) ** 2 + (t.lat - lat) ** 2)


def marker_centres(page: Any) -> dict[int, tuple[float, float]]:
    """Each candidate marker's centre in map container pixels, by rank."""
    origin = page.locator("#map").bounding_box()
    centres = {}
    for el in page.locator(".cand-marker").all():
        box = el.bounding_box()
        rank = int(el.get_attribute("data-rank"))
        centres[rank] = (
            box["x"] - origin["x"] + box["width"] / 2,
            box["y"] - origin["y"] + box["height"] / 2,
        )
    return centres


def assert_markers_apart_and_drawn(
    page: Any, image: np.ndarray, ranks: int
) -> dict[int, tuple[float, float]]:
    centres = marker_centres(page)
    assert sorted(centres) == list(range(1, ranks + 1))
    points = list(centres.values())
    for i, (x0, y0) in enumerate(points):
        for x1, y1 in points[i + 1 :]:
            assert np.hypot(x1 - x0, y1 - y0) >= 24, "two candidate markers overlap"
    for rank, (x, y) in centres.items():
        # Left of the rank's digits, inside the disc: the marker's fill.
        drawn = pixel(image, x - 7, y)
        assert any(close(drawn, fill) for fill in MARKER_FILLS), (rank, drawn)
    return centres


def test_page_draws_basemap_coverage_heat_and_candidates(
    server_url: str, world: World, browser: Any, tmp_path: Path
) -> None:
    photo = tmp_path / "pano.png"
    photo.write_bytes(panorama_bytes())
    build = next(iter(world.builds))
    page = open_page(browser, server_url)

    # The basemap: every tile's centre shows that tile's colour of the indexed raster, where the
    # map projects the tile's lat/lon (the overview is aligned, not merely present).
    before = map_pixels(page)
    for t in world.tiles:
        x, y = container_point(page, t.lat, t.lon)
        assert close(pixel(before, x, y), tile_colour(t.row, t.col)), (t.row, t.col, pixel(before, x, y))
    # The coverage outline runs along the edges of the indexed area.
    coverage = page.evaluate(f"() => fetch('/builds/{build}/coverage').then((r) => r.json())")
    ring = coverage["geometry"]["coordinates"][0][0]
    for (lon0, lat0), (lon1, lat1) in zip(ring, ring[1:], strict=False):
        for f in (0.25, 0.5, 0.75):
            x, y = container_point(page, lat0 + (lat1 - lat0) * f, lon0 + (lon1 - lon0) * f)
            assert near(before, x, y, COVERAGE), ("no outline at", x, y)
    assert not near(
        before, *container_point(page, world.tiles[0].lat, world.tiles[0].lon), COVERAGE, radius=5
    )

    body = upload(page, photo)
    assert page.locator("#candidates li").count() == 5
    heat = body["heat"]
    assert len(heat) == GRID * GRID  # the page asks for more tiles than this world has
    # The estimate's circle and label (checked below) are switched off, as in the layer control.
    page.evaluate("() => cvmMap.removeLayer(cvmLayers.estimate)")
    page.wait_for_timeout(100)
    after = map_pixels(page)
    # The heat map: each tile's disc has the colour of its score on the ramp over the basemap.
    scores = [s for _, _, s in heat]
    lo, hi = min(scores), max(scores)
    centres = {(round(c["lon"], 7), round(c["lat"], 7)) for c in body["candidates"]}
    checked = 0
    for lon, lat, score in heat:
        if (lon, lat) in centres:
            continue  # a candidate's marker is drawn there
        t = tile_at(world, lon, lat)
        expected = blend(ramp((score - lo) / (hi - lo)), tile_colour(t.row, t.col), HEAT_OPACITY)
        drawn = pixel(after, *container_point(page, lat, lon))
        assert close(drawn, expected), (t.row, t.col, drawn, expected)
        checked += 1
    assert checked == GRID * GRID - 5
    legend = page.locator("#heat-legend").inner_text()
    assert f"{lo:.3f}" in legend and f"{hi:.3f}" in legend

    # The candidates: numbered markers at their tiles' centres, none over another.
    marks = assert_markers_apart_and_drawn(page, after, 5)
    for c in body["candidates"]:
        x, y = container_point(page, c["lat"], c["lon"])
        assert np.hypot(marks[c["rank"]][0] - x, marks[c["rank"]][1] - y) < 1.5
    # Zoomed out, the five tiles fall within a few pixels: the markers are spread around them.
    page.evaluate("() => cvmMap.setZoom(cvmMap.getZoom() - 5, { animate: false })")
    page.wait_for_timeout(300)
    assert_markers_apart_and_drawn(page, map_pixels(page), 5)
    assert page.locator(".cand-marker.moved").count() >= 3
    page.locator(".whole-area").click()

    # The best candidate is opened: its metadata and image; no server folder anywhere on the page.
    expected_id = world.builds[build]["tile_ids"][5]
    page.wait_for_function(
        f"() => document.querySelector('#tile-title').textContent.includes('Tile {expected_id}')"
    )
    page.wait_for_function("() => document.querySelector('#tile-image').naturalWidth === 256")
    assert "ortho.tif" in page.locator("#tile-meta").inner_text()
    assert str(world.root) not in page.content()
    # Clicking another candidate's marker opens that tile.
    page.locator(".cand-marker[data-rank='3']").click()
    other = body["candidates"][2]["tile_id"]
    page.wait_for_function(
        f"() => document.querySelector('#tile-title').textContent.includes('Tile {other} ')"
    )
    # No estimate in this answer: nothing drawn, nothing said.
    if body.get("estimate") is None:
        assert page.locator("#estimate").is_hidden()
    assert page.errors == []
    page.screenshot(path=str(tmp_path / "page.png"))


def _answer_with(answer: dict[str, Any], estimate: dict[str, Any] | None) -> Callable[[Any], None]:
    """A route handler answering /localize with a real earlier `answer`, its `estimate` replaced."""

    def handle(route: Any) -> None:
        route.fulfill(
            status=200, body=json.dumps({**answer, "estimate": estimate}), content_type="application/json"
        )

    return handle


def test_page_draws_the_estimate_or_says_no_confident_match(
    server_url: str, world: World, browser: Any, tmp_path: Path
) -> None:
    photo = tmp_path / "pano.png"
    photo.write_bytes(panorama_bytes())
    page = open_page(browser, server_url)
    answer = upload(page, photo)
    centre = world.tiles[5]
    estimate = {
        "lat": centre.lat,
        "lon": centre.lon,
        "radius_m": 10.0,
        "confidence": 0.83,
        "confident": True,
        "note": "3 tiles agree",
    }
    page.route("**/localize?*", _answer_with(answer, estimate))
    upload(page, photo)
    text = page.locator("#estimate").inner_text()
    assert "83 %" in text and "\u00b1 10 m" in text and "3 tiles agree" in text
    image = map_pixels(page)
    # The uncertainty circle: its dashed stroke crosses most of 36 points around the estimate.
    hits = circle_hits(page, image, centre.lat, centre.lon, 10.0, ESTIMATE)
    assert hits >= 18, hits

    page.unroute("**/localize?*")
    page.route(
        "**/localize?*",
        _answer_with(answer, {**estimate, "confident": False, "note": "scores too flat", "reason": "unlike"}),
    )
    upload(page, photo)
    text = page.locator("#estimate").inner_text()
    assert "No confident match" in text and "scores too flat: unlike" in text
    image = map_pixels(page)
    assert not (np.abs(image - np.asarray(ESTIMATE)).max(axis=2) <= 30).any()  # no circle drawn
    assert page.errors == []


def test_page_shows_a_non_image_upload_plainly(server_url: str, browser: Any, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n" * 20)
    page = open_page(browser, server_url)
    with page.expect_response(lambda r: "/localize" in r.url) as answer:
        page.set_input_files("#file", str(text))
    assert answer.value.status == 415
    detail = answer.value.json()["detail"]
    page.wait_for_selector("#status.error")
    assert page.locator("#status").inner_text() == f"notes.txt cannot be localised: {detail}"
    page.wait_for_timeout(300)
    # No broken-image icon: the preview stays hidden, and no visible image failed to load.
    assert page.locator("#preview").is_hidden()
    broken = page.evaluate(
        "() => [...document.images].filter((i) => i.getAttribute('src') && i.checkVisibility()"
        " && i.complete && i.naturalWidth === 0).length"
    )
    assert broken == 0
    assert page.locator(".cand-marker").count() == 0 and page.locator("#candidates li").count() == 0
    assert page.request.get(server_url + "/favicon.ico").status == 200


def test_page_asks_once_for_the_api_key_and_then_draws_everything(world: World, browser: Any) -> None:
    port = _free_port()
    settings = world.settings(api_key="page-key-123")
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        asked: list[str] = []
        page = browser.new_page(viewport={"width": 1400, "height": 800})
        page.on("dialog", lambda d: (asked.append(d.message), d.accept("page-key-123")))
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector("body[data-build]")
        # The overview is an <img>: it can only load because the cookie the page set carries the key.
        page.wait_for_function(
            "() => { const i = document.querySelector('#map img.overview');"
            " return i && i.complete && i.naturalWidth > 0; }"
        )
        assert len(asked) == 1 and "API key" in asked[0]
        assert page.request.get(f"http://127.0.0.1:{port}/builds/active").status == 200  # same cookie jar
    finally:
        server.should_exit = True
        thread.join(timeout=10)


PRIOR = (0, 200, 0)


def test_page_sends_the_search_prior_and_draws_it(
    server_url: str, world: World, browser: Any, tmp_path: Path
) -> None:
    photo = tmp_path / "pano.png"
    photo.write_bytes(panorama_bytes())
    page = open_page(browser, server_url)
    centre = world.tiles[5]
    page.fill("#heat", "0")
    page.fill("#near", f"{centre.lat},{centre.lon}")
    page.fill("#radius", "10")
    with page.expect_request(lambda r: "/localize" in r.url) as sent:
        answer = upload(page, photo)
    assert "near=" in sent.value.url and "radius_m=10" in sent.value.url
    kx = 111320 * np.cos(np.radians(centre.lat))
    for c in answer["candidates"]:  # only tiles inside the prior were searched
        assert np.hypot((c["lat"] - centre.lat) * 110540, (c["lon"] - centre.lon) * kx) <= 10.5
    image = map_pixels(page)
    hits = circle_hits(page, image, centre.lat, centre.lon, 10.0, PRIOR)
    assert hits >= 24, hits
    # Without a prior, no prior circle.
    page.fill("#near", "")
    upload(page, photo)
    image = map_pixels(page)
    assert not (np.abs(image - np.asarray(PRIOR)).max(axis=2) <= 30).any()
    assert page.errors == []
