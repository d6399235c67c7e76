"""End-to-end check of a running deployment, run by docker/smoke.sh inside the service container
(`python - MODE < docker/smoke_check.py`), where the demo world lies under /imagery (read-only)
and the service answers at http://service:8000 on the compose network.

    ready      wait until GET /readyz answers 200; print `build_id=<id>`
    localize   POST a panorama of the world's ground/ folder to /localize and check the answer:
               JSON, at least one candidate, every candidate's lat/lon inside the world's extent
               (the bounds of ortho.tif in EPSG:4326); print `build_id=<id> top=<lat>,<lon>`

Exit status 0 when the check holds, 1 with a message naming what is wrong otherwise.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

SERVICE = os.environ.get("SMOKE_SERVICE_URL", "http://service:8000")
WORLD = Path(os.environ.get("CVM_IMAGERY_DIR", "/imagery"))


def fail(message: str) -> None:
    print(f"smoke_check: {message}", file=sys.stderr)
    raise SystemExit(1)


def get_json(url: str, timeout_s: float = 10.0) -> tuple[int, Any]:
    """(status, decoded JSON body) of a GET; status 0 when the server does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
    except (urllib.error.URLError, OSError):
        return 0, None


def wait_ready(timeout_s: float) -> dict[str, Any]:
    """The /readyz body once it answers 200; fails after `timeout_s` seconds with the last reasons."""
    deadline = time.monotonic() + timeout_s
    status, body = 0, None
    while time.monotonic() < deadline:
        status, body = get_json(f"{SERVICE}/readyz")
        if status == 200:
            return body
        time.sleep(2)
    fail(f"{SERVICE}/readyz did not answer 200 within {timeout_s:.0f} s (last: {status} {body})")
    raise AssertionError  # unreachable


def world_bounds() -> tuple[float, float, float, float]:
    """(west, south, east, north) in degrees of the world's ortho.tif."""
    import rasterio
    from rasterio.warp import transform_bounds

    ortho = WORLD / "ortho.tif"
    if not ortho.is_file():
        fail(f"{ortho} is missing: the imagery volume holds no demo world")
    with rasterio.open(ortho) as ds:
        return transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)


def demo_panorama() -> tuple[Path, float, float]:
    """The first ground panorama listed in ground.csv, with its true lat/lon."""
    table = WORLD / "ground.csv"
    if not table.is_file():
        fail(f"{table} is missing")
    with table.open(newline="") as f:
        for row in csv.DictReader(f):
            path = WORLD / "ground" / f"{row['id']}.jpg"
            if path.is_file():
                return path, float(row["lat"]), float(row["lon"])
    fail(f"no panorama of {table} exists under {WORLD / 'ground'}")
    raise AssertionError  # unreachable


def post_image(path: Path, timeout_s: float = 60.0) -> tuple[int, bytes]:
    """POST `path` as the multipart field `image` to /localize; (status, body)."""
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{path.name}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    req = urllib.request.Request(
        f"{SERVICE}/localize?k=5",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def check_localize() -> None:
    west, south, east, north = world_bounds()
    photo, true_lat, true_lon = demo_panorama()
    status, raw = post_image(photo)
    if status != 200:
        fail(f"POST /localize with {photo.name} answered {status}: {raw[:300]!r}")
    try:
        answer = json.loads(raw)
    except ValueError:
        fail(f"POST /localize answered non-JSON: {raw[:300]!r}")
    candidates = answer.get("candidates") or []
    if not candidates:
        fail(f"POST /localize answered no candidates: {answer}")
    for c in candidates:
        if not (south <= c["lat"] <= north and west <= c["lon"] <= east):
            fail(f"candidate {c} lies outside the world [{west}, {south}, {east}, {north}]")
    top = candidates[0]
    print(
        f"smoke_check: {photo.name} (true {true_lat:.6f},{true_lon:.6f}) -> {len(candidates)} candidates "
        f"inside the world, top tile {top['tile_id']} at {top['lat']:.6f},{top['lon']:.6f} "
        f"score {top['score']:.3f}, {answer['timings_ms'].get('total', float('nan')):.0f} ms",
        file=sys.stderr,
    )
    print(f"build_id={answer['build_id']} top={top['lat']:.6f},{top['lon']:.6f}")


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "localize"
    ready = wait_ready(float(os.environ.get("SMOKE_READY_TIMEOUT_S", "300")))
    if mode == "ready":
        print(f"build_id={ready['build_id']}")
    elif mode == "localize":
        check_localize()
    else:
        fail(f"unknown mode {mode!r} (ready | localize)")


if __name__ == "__main__":
    main()
