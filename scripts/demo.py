"""`make demo`: a synthetic world, its index, and the service answering a sample request.

1. `cvm synth` writes the demo world to var/demo/world (seed 9001, 1000 m, 300 pairs) unless it exists.
2. `cvm-index build` indexes its orthophoto with the shipped weights into var/demo
   (CVM_DATA_DIR=var/demo) unless an active build for the same weights already exists.
3. The service starts at http://127.0.0.1:8000; once ready, a sample request is printed (curl line,
   answer, true location from ground.csv, error in metres). It then keeps serving until Ctrl-C.

A second run reuses the world and the build, so it starts in seconds.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO / "var" / "demo"
WORLD_DIR = DEMO_DIR / "world"
HOST, PORT = "127.0.0.1", 8000
BASE_URL = f"http://{HOST}:{PORT}"
SYNTH_ARGS = ["--seed", "9001", "--extent-m", "1000", "--pairs", "300", "--val-fraction", "1"]


def tool(name: str) -> str:
    """A console script of this environment (beside the running interpreter), else from PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        sys.exit(f"demo: `{name}` not found; run `make install` first")
    return found


def run_step(what: str, cmd: list[str]) -> None:
    print(f"demo: {what}: {' '.join(cmd)}", flush=True)
    started = time.perf_counter()
    if subprocess.run(cmd, env=os.environ.copy()).returncode != 0:
        sys.exit(f"demo: {what} failed (command above)")
    print(f"demo: {what} done in {time.perf_counter() - started:.0f} s", flush=True)


def ensure_world() -> None:
    """Generate the world unless a complete one (ground.csv is written last) is there."""
    if (WORLD_DIR / "ground.csv").is_file() and (WORLD_DIR / "ortho.tif").is_file():
        print(f"demo: reusing the world in {WORLD_DIR}")
        return
    # --overwrite clears the remains of an interrupted earlier run.
    run_step(
        "generating the world", [tool("cvm"), "synth", *SYNTH_ARGS, "--out", str(WORLD_DIR), "--overwrite"]
    )


def active_build_matches(weights_sha256: str) -> int | None:
    """Id of the active build when it was made with these weights, else None."""
    from storage.catalog import get_active_build
    from storage.db import make_engine, session_scope, upgrade
    from storage.settings import Settings

    url = Settings().database_url
    upgrade(url)
    engine = make_engine(url)
    try:
        with session_scope(engine) as session:
            build = get_active_build(session)
            return build.id if build is not None and build.weights_sha256 == weights_sha256 else None
    finally:
        engine.dispose()


def ensure_index() -> None:
    from model.checkpoint import file_sha256
    from model.weights import default_weights_path

    build_id = active_build_matches(file_sha256(default_weights_path()))
    if build_id is not None:
        print(f"demo: reusing active build {build_id} in {DEMO_DIR}")
        return
    run_step(
        "indexing the orthophoto", [tool("cvm-index"), "build", "--imagery", str(WORLD_DIR / "ortho.tif")]
    )


def first_sample() -> dict[str, str]:
    with open(WORLD_DIR / "ground.csv", newline="") as f:
        return next(csv.DictReader(f))


def wait_ready(timeout_s: float = 120.0) -> bool:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{BASE_URL}/readyz", timeout=2.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


def show_sample() -> None:
    """Once the server is ready: one request, its answer and the true location."""
    import httpx
    from pyproj import Geod

    if not wait_ready():
        print(f"demo: the service is not ready; see {BASE_URL}/readyz", file=sys.stderr)
        return
    sample = first_sample()
    image = WORLD_DIR / sample["file"]
    print(
        f"\ndemo: sample request:\n  curl -s -F image=@{image.relative_to(REPO)} '{BASE_URL}/localize?k=5'\n"
    )
    resp = httpx.post(f"{BASE_URL}/localize", params={"k": 5}, files={"image": image.open("rb")}, timeout=30)
    if resp.status_code != 200:
        print(f"demo: {resp.status_code}: {resp.json().get('detail')}", file=sys.stderr)
        return
    body = resp.json()
    lat, lon = float(sample["lat"]), float(sample["lon"])
    geod = Geod(ellps="WGS84")
    print(f"true location of {sample['id']}: lat {lat:.6f}, lon {lon:.6f}")
    print(f"{'rank':>4}  {'tile':>7}  {'lat':>10}  {'lon':>10}  {'score':>6}  {'error_m':>8}")
    for c in body["candidates"]:
        _, _, dist = geod.inv(lon, lat, c["lon"], c["lat"])  # always lon, lat order
        where = f"{c['lat']:>10.6f}  {c['lon']:>10.6f}"
        print(f"{c['rank']:>4}  {c['tile_id']:>7}  {where}  {c['score']:>6.3f}  {dist:>8.1f}")
    print(f"(build {body['build_id']}, {body['timings_ms']['total']:.1f} ms)")
    print(f"\ndemo: map page at {BASE_URL}/ , API docs at {BASE_URL}/docs ; Ctrl-C stops.\n", flush=True)


def serve() -> None:
    import uvicorn

    from service.main import create_app

    threading.Thread(target=show_sample, daemon=True).start()
    uvicorn.run(create_app(), host=HOST, port=PORT, log_level="warning")


def main() -> int:
    # The demo is self-contained: its own catalogue and index folder, the shipped weights.
    for name in ("CVM_DATABASE_URL", "CVM_INDEX_DIR", "CVM_WEIGHTS"):
        os.environ.pop(name, None)
    os.environ["CVM_DATA_DIR"] = str(DEMO_DIR)
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    try:
        ensure_world()
        ensure_index()
        serve()
    except FileNotFoundError as exc:  # e.g. the shipped weights are not there yet
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
