"""The map page in headless Chromium: upload a photo, see the candidates, open one."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from service.main import create_app
from tests.support.service_world import World, panorama_bytes

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

pytestmark = pytest.mark.browser


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


def test_page_upload_shows_candidates_on_map(server_url: str, world: World, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    photo = tmp_path / "pano.png"
    photo.write_bytes(panorama_bytes())
    build = next(iter(world.builds))
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 800})
            page.goto(server_url + "/")
            page.set_input_files("#file", str(photo))
            page.wait_for_selector("#candidates li", timeout=20_000)
            assert page.locator("#candidates li").count() == 5
            assert page.locator("#map g.candidate").count() == 5
            # The best candidate is opened: its metadata and its image.
            page.wait_for_selector("#tile:not([hidden])")
            expected = world.builds[build]["tile_ids"][5]
            page.wait_for_function("() => document.querySelector('#tile-image').naturalWidth === 256")
            assert f"Tile {expected}" in page.locator("#tile-title").inner_text()
            # Clicking another candidate on the map opens that tile.
            other = page.locator("#map g.candidate").first  # drawn first = lowest rank
            other_id = other.get_attribute("data-tile-id")
            other.click()
            page.wait_for_function(
                f"() => document.querySelector('#tile-title').textContent.includes('{other_id}')"
            )
            images = page.locator("#map image")
            assert images.count() == 5
            page.screenshot(path=str(tmp_path / "page.png"))
        finally:
            browser.close()
    assert (tmp_path / "page.png").stat().st_size > 0
