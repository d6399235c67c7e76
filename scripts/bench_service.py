"""Benchmark of the localisation service (prints figures; not a test).

Builds a throw-away catalogue + flat FAISS index of random unit vectors (default 10 000 tiles),
starts `uvicorn service.main:app` on 127.0.0.1 in a subprocess and measures:

* latency of POST /localize per stage (the server's own timings) and round trip, with one client,
  against the ground branch's forward pass alone (batch 1) measured in this process beforehand;
  target: total p50 <= 1.15 x forward p50;
* throughput (requests/s) with 1, 4 and 16 concurrent clients against the model's best batched
  forward throughput (images/s over batch sizes 1..32).

`--preset paper` serves a randomly initialised paper-size CVM-Net-I instead of the shipped weights
(its index is built for that checkpoint), to show the pipeline's fixed cost against a forward pass
of 1-2 s; use few requests and `--no-throughput` with it.

    .venv/bin/python scripts/bench_service.py [--weights W | --preset paper] [--query-file IMG]
        [--tiles 10000] [--requests 100] [--duration-s 10] [--no-throughput] [--torch-threads N]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

STAGES = ("decode", "preprocess", "queue", "forward", "search", "database", "total")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--weights", type=Path, default=None, help="checkpoint (default: shipped, else random cpu)"
    )
    which.add_argument(
        "--preset",
        choices=("cpu", "paper"),
        default=None,
        help="serve a randomly initialised CVM-Net-I of this preset instead of the shipped weights",
    )
    p.add_argument(
        "--query-file",
        type=Path,
        default=None,
        help="send this image instead of the random-pixel JPEG panorama (e.g. a real CVUSA panorama "
        "or a phone photo; sent as is, its kind detected by the service)",
    )
    p.add_argument("--tiles", type=int, default=10_000, help="tiles in the benchmark index")
    p.add_argument("--requests", type=int, default=100, help="sequential requests for the latency part")
    p.add_argument("--duration-s", type=float, default=10.0, help="seconds per throughput level")
    p.add_argument(
        "--no-throughput",
        dest="throughput",
        action="store_false",
        help="latency only (a paper-size model needs minutes per batched-throughput level)",
    )
    p.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="CVM_TORCH_THREADS of server and forward alone (0: default)",
    )
    p.add_argument("--port", type=int, default=8123)
    return p.parse_args()


def random_weights(tmp: Path, preset: str) -> Path:
    """A freshly initialised CVM-Net-I checkpoint of `preset`, saved under tmp."""
    from model.checkpoint import save_checkpoint
    from model.config import preset_config
    from model.cvm_net import build_model

    torch.manual_seed(0)
    path = tmp / f"random-{preset}.pt"
    save_checkpoint(path, build_model(preset_config("cvm-net-i", preset)))
    return path


def bench_weights(requested: Path | None, preset: str | None, tmp: Path) -> Path:
    """The given weights, a random checkpoint of `preset`, the shipped ones, or random cpu ones."""
    from model.weights import default_weights_path

    if requested is not None:
        return requested
    if preset is not None:
        return random_weights(tmp, preset)
    try:
        return default_weights_path()
    except FileNotFoundError:
        path = random_weights(tmp, "cpu")
        print(f"(shipped weights absent: using random cpu-preset weights {path})")
        return path


def query_size(preset: str | None) -> tuple[int, int]:
    """(width, height) of the query panorama: the synthetic world's 616x112, or for the paper
    preset its native 1232x224 input (which the original feeds without resampling)."""
    return (1232, 224) if preset == "paper" else (616, 112)


def query_image(width: int, height: int) -> bytes:
    """A width x height JPEG panorama of random pixels."""
    pixels = np.random.default_rng(0).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_catalogue(tmp: Path, weights: Path, n_tiles: int, dim: int) -> str:
    """SQLite catalogue with one active build of n_tiles tiles and its flat index; returns the URL."""
    import faiss

    from model.checkpoint import file_sha256
    from storage.catalog import activate, insert_tiles
    from storage.db import make_engine, session_scope, upgrade
    from storage.models import Build

    url, sha = f"sqlite:///{tmp / 'bench.db'}", file_sha256(weights)
    upgrade(url)
    engine = make_engine(url)
    side = int(np.ceil(np.sqrt(n_tiles)))
    rows = []
    for i in range(n_tiles):
        lat, lon = 47.0 + (i // side) * 5e-4, 8.0 + (i % side) * 7e-4
        rows.append(
            dict(
                source="bench",
                size_m=70.0,
                lat=lat,
                lon=lon,
                west=lon - 3e-4,
                south=lat - 2e-4,
                east=lon + 3e-4,
                north=lat + 2e-4,
                footprint="{}",
            )
        )
    with session_scope(engine) as session:
        build = Build(
            status="complete",
            weights_path=str(weights),
            weights_sha256=sha,
            model_arch="cvm-net-i",
            embed_dim=dim,
            n_tiles=n_tiles,
            index_path=str(tmp / "index"),
        )
        session.add(build)
        session.flush()
        ids = insert_tiles(session, [dict(r, build_id=build.id) for r in rows])
        vecs = np.random.default_rng(0).standard_normal((n_tiles, dim)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        index.add_with_ids(vecs, np.asarray(ids, dtype=np.int64))
        (tmp / "index").mkdir()
        faiss.write_index(index, str(tmp / "index" / "index.faiss"))
        meta = {
            "factory": "IDMap2,Flat",
            "d": dim,
            "metric": "inner_product",
            "ntotal": n_tiles,
            "weights_sha256": sha,
            "build_id": build.id,
        }
        (tmp / "index" / "index_meta.json").write_text(json.dumps(meta))
        activate(session, build.id)
    engine.dispose()
    return url


class Forward:
    """The ground branch alone, in this process, on the prepared query image.

    As in the server: the weights are loaded with one thread, and the forward passes run in a
    dedicated thread that alone holds torch's thread pool, with the server's thread count
    (--torch-threads = CVM_TORCH_THREADS; `model.runtime`). FAISS's thread count is not
    set here: OpenMP counts are per thread and, with one OpenMP runtime for both, it would set
    torch's too.
    """

    def __init__(self, weights: Path, image: bytes, torch_threads: int) -> None:
        from model.runtime import claim_pool, compute_single_threaded, reuse_freed_memory
        from service.localizer import Localizer

        reuse_freed_memory()  # as the server does at start
        compute_single_threaded()
        self.loc = Localizer.from_checkpoint(weights)
        self.x, _, _, _ = self.loc.prepare(image, None)
        self.dim = self.loc.out_dim
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward-alone")
        self._thread.submit(claim_pool, torch_threads).result()
        compute_single_threaded()  # this thread builds the index and runs the client

    def run(self, fn, *args):
        """fn(*args) in the forward thread (it holds torch's thread pool, as the server's batch
        thread does); returns its result."""
        return self._thread.submit(fn, *args).result()

    def once_ms(self) -> float:
        """One batch-1 forward, ms."""
        return self._thread.submit(_timed, self.loc.embed, self.x).result() * 1000.0

    def rates(self) -> dict[int, float]:
        """Images/s by batch size (median of a few runs each)."""
        out = {}
        for b in (1, 2, 4, 8, 16, 32):
            batch = self.x[:1].expand(b, -1, -1, -1).contiguous()
            runs = [
                self._thread.submit(_timed, self.loc.embed, batch).result() for _ in range(max(3, 48 // b))
            ]
            out[b] = b / statistics.median(runs[1:])
        return out


def _timed(fn, arg) -> float:
    t0 = time.perf_counter()
    fn(arg)
    return time.perf_counter() - t0


def start_server(url: str, weights: Path, tmp: Path, args: argparse.Namespace) -> subprocess.Popen:
    env = dict(
        os.environ,
        CVM_DATABASE_URL=url,
        CVM_WEIGHTS=str(weights),
        CVM_INDEX_DIR=str(tmp),
        CVM_TORCH_THREADS=str(args.torch_threads),
    )
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "service.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(args.port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    return subprocess.Popen(cmd, env=env)


async def wait_ready(client, base: str) -> None:
    for _ in range(600):
        try:
            if (await client.get(f"{base}/readyz")).status_code == 200:
                return
        except Exception:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit("server did not become ready")


async def latency(client, base: str, image: bytes, n: int, forward: Forward) -> tuple[dict, list, list, list]:
    """Sequential requests alternating, in blocks of 10, with blocks of forward-alone runs in this
    process, so both see the same background load. The pauses let each side's OpenMP threads stop
    spinning before the other runs (on 2 cores they would otherwise slow each other down).

    Returns the server's stage timings, the round trips, the forward-alone times (ms) and, per
    block, total p50 / forward-alone p50.
    """
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    rtt, alone, ratios = [], [], []
    for _ in range(n // 10 + 1):
        await asyncio.sleep(0.3)
        fwd = [forward.once_ms() for _ in range(10)]
        await asyncio.sleep(0.3)
        totals = []
        for _ in range(10):
            t0 = time.perf_counter()
            resp = await client.post(f"{base}/localize", files={"image": ("q.jpg", image, "image/jpeg")})
            elapsed = (time.perf_counter() - t0) * 1000.0
            resp.raise_for_status()
            rtt.append(elapsed)
            for s, v in resp.json()["timings_ms"].items():
                stages[s].append(v)
            totals.append(stages["total"][-1])
        alone.extend(fwd)
        ratios.append(statistics.median(totals) / statistics.median(fwd))
    skip = 10  # the first block warms both sides up
    return {s: v[skip:] for s, v in stages.items()}, rtt[skip:], alone[skip:], ratios[1:]


async def throughput(client, base: str, image: bytes, clients: int, duration_s: float) -> tuple[float, float]:
    """Requests/s and mean batch size with `clients` concurrent request loops."""
    done: list[int] = []
    end = time.perf_counter() + duration_s

    async def loop() -> None:
        while time.perf_counter() < end:
            resp = await client.post(f"{base}/localize", files={"image": ("q.jpg", image, "image/jpeg")})
            resp.raise_for_status()
            done.append(resp.json()["batch_size"])

    t0 = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(clients)))
    return len(done) / (time.perf_counter() - t0), float(np.mean(done))


def print_latency(
    stages: dict[str, list[float]], rtt: list[float], alone: list[float], ratios: list[float]
) -> None:
    print(f"\nlatency, 1 client, {len(rtt)} requests (server timings, ms):")
    print(f"  {'stage':<13}{'p50':>8}{'p90':>8}")
    for s in STAGES:
        print(f"  {s:<13}{np.percentile(stages[s], 50):>8.2f}{np.percentile(stages[s], 90):>8.2f}")
    print(f"  {'round trip':<13}{np.percentile(rtt, 50):>8.2f}{np.percentile(rtt, 90):>8.2f}")
    print(f"  {'forward alone':<13}{np.percentile(alone, 50):>8.2f}{np.percentile(alone, 90):>8.2f}")
    print(f"  total p50 / forward-alone p50, median over blocks: {np.median(ratios):.3f} (target <= 1.15)")
    inside = np.percentile(stages["total"], 50) / np.percentile(stages["forward"], 50)
    print(f"  total p50 / the server's own forward-stage p50: {inside:.3f}")


async def measure(args: argparse.Namespace, base: str, image: bytes, forward: Forward) -> None:
    import httpx

    async with httpx.AsyncClient(timeout=60.0, limits=httpx.Limits(max_connections=32)) as client:
        await wait_ready(client, base)
        print_latency(*await latency(client, base, image, args.requests, forward))
        if not args.throughput:
            return
        rates = forward.rates()  # server idle meanwhile
        best = max(rates.values())
        shown = ", ".join(f"{b}: {r:.1f}" for b, r in rates.items())
        print(f"\nmodel alone, img/s by batch size: {shown}")
        print(f"throughput ({args.duration_s:.0f} s per level) against the best, {best:.1f} img/s:")
        for clients in (1, 4, 16):
            rate, mean_batch = await throughput(client, base, image, clients, args.duration_s)
            ratio = rate / best
            print(
                f" {clients:>2} clients: {rate:7.1f} req/s, mean batch {mean_batch:5.2f}, {ratio:.2f}x model"
            )


def main() -> int:
    from model.runtime import pool_size

    args = parse_args()
    threads = pool_size(args.torch_threads)
    print(f"torch {torch.__version__}, {threads} threads, {os.cpu_count()} CPUs, load {os.getloadavg()}")
    if args.query_file is not None:
        image = args.query_file.read_bytes()
        with Image.open(io.BytesIO(image)) as im:
            width, height = im.size
    else:
        width, height = query_size(args.preset)
        image = query_image(width, height)
    with tempfile.TemporaryDirectory(prefix="cvm-bench-") as tmp_name:
        tmp = Path(tmp_name)
        weights = bench_weights(args.weights, args.preset, tmp)
        forward = Forward(weights, image, args.torch_threads)
        url = make_catalogue(tmp, weights, args.tiles, forward.dim)
        print(f"index: {args.tiles} tiles, d={forward.dim}, flat inner product; weights {weights}")
        print(f"query: {args.query_file or 'random pixels'}, {width}x{height}, {len(image)} bytes")
        server = start_server(url, weights, tmp, args)
        try:
            asyncio.run(measure(args, f"http://127.0.0.1:{args.port}", image, forward))
        finally:
            server.terminate()
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
