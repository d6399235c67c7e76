"""Bad input gets a 4xx with a `detail` saying what is wrong, and the server stays healthy."""

from __future__ import annotations

import asyncio
import io
import struct
import zlib
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageFile

import service.imaging
from service.errors import ImageTooLarge
from service.imaging import read_header
from service.main import create_app
from service.upload_limit import UploadLimitMiddleware
from tests.support.service_world import World, panorama_bytes, photo_bytes


def png_header_only(width: int, height: int) -> bytes:
    """A few-hundred-byte PNG whose header announces width x height (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\x00" * (1 + 3 * 64) * 64)  # a few rows; never decoded
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def gif_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 20, 30)).save(buf, format="GIF")
    return buf.getvalue()


def upload(data: bytes, name: str = "q.jpg") -> dict[str, Any]:
    return {"files": {"image": (name, data, "image/jpeg")}}


# (description, method, url, request kwargs, expected status, text the detail must contain)
BAD_REQUESTS: list[tuple[str, str, str, dict[str, Any], int, str]] = [
    ("empty file", "POST", "/localize", upload(b""), 400, "empty"),
    (
        "not an image",
        "POST",
        "/localize",
        upload(b"hello, not an image" * 10),
        415,
        "not a JPEG, PNG or WebP",
    ),
    ("GIF", "POST", "/localize", upload(gif_bytes(), "q.gif"), 415, "GIF images are not accepted"),
    ("truncated JPEG", "POST", "/localize", upload(photo_bytes()[:1500]), 422, "cannot be decoded"),
    ("30000 px bomb", "POST", "/localize", upload(png_header_only(30000, 30000), "b.png"), 413, "too large"),
    ("8000 px bomb", "POST", "/localize", upload(png_header_only(8000, 8000), "b.png"), 413, "8000x8000"),
    ("over upload limit", "POST", "/localize", upload(b"\xff\xd8" + b"0" * 300_000), 413, "upload too large"),
    ("k = 0", "POST", "/localize?k=0", upload(photo_bytes()), 422, "query parameter 'k'"),
    ("k = 101", "POST", "/localize?k=101", upload(photo_bytes()), 422, "less than or equal to 100"),
    ("k not a number", "POST", "/localize?k=five", upload(photo_bytes()), 422, "query parameter 'k'"),
    ("unknown kind", "POST", "/localize?kind=aerial", upload(photo_bytes()), 422, "query parameter 'kind'"),
    ("missing field", "POST", "/localize", {"files": {"photo": ("q.jpg", photo_bytes())}}, 422, "'image'"),
    ("no body", "POST", "/localize", {}, 422, "'image'"),
    (
        "raw body",
        "POST",
        "/localize",
        {"content": photo_bytes(), "headers": {"content-type": "image/jpeg"}},
        422,
        "'image'",
    ),
    ("unknown tile", "GET", "/tiles/987654", {}, 404, "no tile with id 987654"),
    ("unknown tile image", "GET", "/tiles/987654/image", {}, 404, "no tile with id 987654"),
    ("non-numeric tile", "GET", "/tiles/abc", {}, 422, "path parameter 'tile_id'"),
    ("negative tile", "GET", "/tiles/-3", {}, 422, "path parameter 'tile_id'"),
    ("unknown route", "GET", "/nope", {}, 404, "Not Found"),
]


@pytest.fixture()
def small_limit_client(world: World):
    # 0.25 MiB: the 300 KB case above goes over it, every valid image stays under it.
    with TestClient(create_app(world.settings(max_upload_mb=0.25))) as client:
        yield client


def test_reject_bad_input_with_4xx_and_stay_healthy(small_limit_client: TestClient) -> None:
    client = small_limit_client
    for what, method, url, kwargs, status, text in BAD_REQUESTS:
        resp = client.request(method, url, **kwargs)
        assert resp.status_code == status, f"{what}: {resp.status_code} {resp.text}"
        detail = resp.json()["detail"]
        assert isinstance(detail, str) and text in detail, f"{what}: {detail!r}"
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    ok = client.post("/localize", files={"image": ("p.png", panorama_bytes(), "image/png")})
    assert ok.status_code == 200
    assert 'status="500"' not in client.get("/metrics").text


def test_reject_chunked_upload_over_limit_without_content_length(small_limit_client: TestClient) -> None:
    def body():
        for _ in range(40):
            yield b"x" * 16384  # 640 KiB in total, no Content-Length header

    resp = small_limit_client.post(
        "/localize", content=body(), headers={"content-type": "multipart/form-data; boundary=abc"}
    )
    assert resp.status_code == 413
    assert "upload too large" in resp.json()["detail"]


def _run_limit(headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> tuple[int, int, bool]:
    """Drive UploadLimitMiddleware(limit 100 B) around an app that reads the whole body.

    Returns (status sent, chunks read, whether the app saw the end of the body).
    """
    read = 0
    seen_end = False

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal seen_end
        while True:
            msg = await receive()
            if not msg.get("more_body"):
                seen_end = True
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive() -> dict[str, Any]:
        nonlocal read
        read += 1
        return {"type": "http.request", "body": chunks[read - 1], "more_body": read < len(chunks)}

    sent: list[dict[str, Any]] = []

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    scope = {"type": "http", "method": "POST", "path": "/localize", "headers": headers}
    asyncio.run(UploadLimitMiddleware(app, max_bytes=100)(scope, receive, send))
    return sent[0]["status"], read, seen_end


def test_refuse_declared_oversize_before_reading_body() -> None:
    status, read, seen_end = _run_limit([(b"content-length", b"5000")], [b"x" * 50] * 100)
    assert (status, read, seen_end) == (413, 0, False)


def test_refuse_streamed_oversize_at_limit() -> None:
    status, read, seen_end = _run_limit([], [b"x" * 50] * 100)
    # 50 + 50 = 100 is allowed, the third chunk crosses the limit: 97 chunks are never read.
    assert (status, read, seen_end) == (413, 3, False)


def test_accept_body_within_limit() -> None:
    status, read, seen_end = _run_limit([], [b"x" * 50, b"x" * 50])
    assert (status, read, seen_end) == (200, 2, True)


def test_refuse_bomb_from_header_without_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_decode(data: bytes) -> None:
        raise AssertionError("decoded a bomb")

    monkeypatch.setattr(service.imaging, "decode_open_image", must_not_decode)
    monkeypatch.setattr(ImageFile.ImageFile, "load", must_not_decode)
    bomb = png_header_only(30000, 30000)
    assert len(bomb) < 4096
    with pytest.raises(ImageTooLarge):
        service.imaging.decode_upload(bomb, max_pixels=40_000_000)
    with pytest.raises(ImageTooLarge, match="6000x5000 = 30000000 pixels, the limit is 1000000"):
        read_header(png_header_only(6000, 5000), max_pixels=1_000_000)


def test_read_header_reports_format_and_size() -> None:
    assert read_header(photo_bytes(), 10**6) == ("JPEG", 160, 120)
    assert read_header(panorama_bytes(), 10**6) == ("PNG", 616, 112)
    buf = io.BytesIO()
    Image.new("RGB", (40, 20)).save(buf, format="WEBP")
    assert read_header(buf.getvalue(), 10**6) == ("WebP", 40, 20)
