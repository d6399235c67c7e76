"""The README's commands run as written.

Every ```sh block of README.md is parsed (the commands are not copied here, so an edited README is
tested as it stands) and run line by line with `bash -c`, in README order, in a scratch copy of the
repository: the tracked and not-ignored files, with `.venv` a symlink to this checkout's
environment. The outputs the README names (var/demo, var/mine, var/w1, runs/mine, tiles.geojson,
.env) therefore land in the copy, and HOME and CVM_DATA_DIR point at scratch folders, so nothing is
written into the checkout or the user's data directory. Lines of one block share its `export`s.

What is not run as written, and why (each rule is applied by `as_run`/`excluded`, below):
- placeholder imagery (`/srv/<folder>/*.tif`) -> a scratch folder holding the real sample rasters
  cogeo.tif (another CRS than WGS84) and RGB.byte.tif (300 m pixels, too coarse for the tiles)
  from the shared data, so the glob is still expanded by bash; a `cvm-index build` line may then
  exit 3 (the README says so), and only with the coarse raster refused by name;
- `cvm synth ... --pairs N` with N > SMOKE_PAIRS -> `--pairs SMOKE_PAIRS`: rendering 1,000 pairs
  takes minutes on 2 cores, and SMOKE_PAIRS still give train and val pairs;
- `cvm train ...` -> `--epochs 1` (replacing any `--epochs`): the same command, one epoch instead of
  the preset's ten;
- `make test` is not run (it runs this module: recursion); `make -n test` must succeed and show
  ruff, mypy and both pytest stages;
- `docker ...` lines need a Docker engine; docker/smoke.sh runs that deployment on a real engine.
  Here the compose file must define what those lines name (a `--profile P run --rm S` service) and
  smoke.sh must exist and run `up -d` and the indexer profile;
- lines that serve (`make demo`, `cvm serve`) run in the background until /readyz answers 200; the
  README's prose commands that call that server (the `curl ... localize` line) run exactly as
  written meanwhile, then the server is stopped. `cvm serve` listens on CVM_PORT, set to a free
  port; `make demo` needs 127.0.0.1:8000 itself (the README's curl names it) and must find it free;
- the copy's pyproject.toml gets the mtime of .venv/.installed-stamp, so that `make demo` sees the
  installed environment as up to date and never reinstalls into the shared .venv.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.paths import REPO_ROOT

pytestmark = pytest.mark.slow

README = REPO_ROOT / "README.md"
VENV = REPO_ROOT / ".venv"
SMOKE_PAIRS = 48
LINE_TIMEOUT_S = 600
READY_TIMEOUT_S = 600


@dataclass(frozen=True)
class Command:
    block: int  # index of the ```sh block in README.md
    lineno: int  # line number in README.md
    text: str  # the command as written, without its comment
    comment: str  # the text after ` # `, if any


def split_comment(line: str) -> tuple[str, str]:
    parts = re.split(r"\s+#\s", line, maxsplit=1)
    return (parts[0].strip(), parts[1].strip() if len(parts) > 1 else "")


def sh_blocks(markdown: str) -> list[list[Command]]:
    """The command lines of each ```sh block (blank and comment-only lines dropped)."""
    blocks: list[list[Command]] = []
    current: list[Command] | None = None
    for lineno, raw in enumerate(markdown.splitlines(), start=1):
        line = raw.strip()
        if current is None:
            if re.fullmatch(r"```sh", line):
                current = []
            continue
        if line == "```":
            blocks.append(current)
            current = None
            continue
        if not line or line.startswith("#"):
            continue
        text, comment = split_comment(line)
        current.append(Command(len(blocks), lineno, text, comment))
    assert current is None, "README.md: a ```sh block is not closed"
    return blocks


def prose_commands(markdown: str) -> list[str]:
    """Commands given inline in the README's prose (`curl ...`), outside the ```sh blocks."""
    outside = re.sub(r"```.*?```", "", markdown, flags=re.DOTALL)
    return re.findall(r"`(curl [^`]+)`", outside)


MARKDOWN = README.read_text(encoding="utf-8")
BLOCKS = sh_blocks(MARKDOWN)


# --- what is run instead, and what is not run ----------------------------------------------------


def program(text: str) -> list[str]:
    """The words of a command line without its leading VAR=value assignments."""
    words = shlex.split(text)
    while words and re.match(r"[A-Za-z_]\w*=", words[0]):
        words.pop(0)
    return words


def as_run(text: str, imagery: Path | None) -> tuple[str, list[str]]:
    """The command to run for README line `text`, and a note for each substitution made."""
    notes: list[str] = []
    if re.search(r"/srv/[\w.-]+/", text):
        assert imagery is not None
        text = re.sub(r"/srv/[\w.-]+/", f"{imagery}/", text)
        notes.append(f"placeholder imagery folder -> {imagery}")
    words = program(text)
    if len(words) > 1 and words[0].endswith("/cvm") and words[1] == "synth":
        m = re.search(r"--pairs[ =](\d+)", text)
        if m and int(m.group(1)) > SMOKE_PAIRS:
            text = text[: m.start()] + f"--pairs {SMOKE_PAIRS}" + text[m.end() :]
            notes.append(f"--pairs {m.group(1)} -> --pairs {SMOKE_PAIRS}")
    if len(words) > 1 and words[0].endswith("/cvm") and words[1] == "train":
        if re.search(r"--epochs[ =]\d+", text):
            text = re.sub(r"--epochs[ =]\d+", "--epochs 1", text)
        else:
            text += " --epochs 1"
        notes.append("--epochs 1")
    return text, notes


def excluded(cmd: Command) -> str | None:
    """Why a README line is not run, or None when it is."""
    if cmd.text.startswith("docker "):
        return "needs a Docker engine (docker/smoke.sh runs it)"
    if cmd.text == "make test":
        return "runs this module (recursion); `make -n test` is checked instead"
    return None


def serves(cmd: Command) -> bool:
    """Lines that start a server and keep serving."""
    return cmd.text == "make demo" or bool(re.search(r"(^|/)cvm serve\b", cmd.text))


# --- the scratch copy ------------------------------------------------------------------------------


@dataclass
class Scratch:
    root: Path
    repo: Path
    home: Path
    data: Path
    port: int
    env: dict[str, str]
    state: dict[str, Any] = field(default_factory=dict)  # what earlier lines of the block established


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scratch]:
    assert (VENV / "bin" / "cvm").exists(), f"{VENV} is not installed (make install)"
    root = tmp_path_factory.mktemp("readme")
    repo = root / "repo"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    copied = 0
    for rel in filter(None, listed.split("\0")):
        src = REPO_ROOT / rel
        if src.is_symlink() or not src.is_file():  # deleted in the work tree, or a link
            continue
        dst = repo / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        copied += 1
    assert copied > 50 and (repo / "Makefile").is_file()
    (repo / ".venv").symlink_to(VENV)
    stamp = VENV / ".installed-stamp"
    pyproject = repo / "pyproject.toml"
    if stamp.exists() and pyproject.stat().st_mtime_ns > stamp.stat().st_mtime_ns:
        os.utime(pyproject, ns=(stamp.stat().st_atime_ns, stamp.stat().st_mtime_ns))

    home, data = root / "home", root / "data"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CVM_", "MAKE", "MFLAGS"))}
    port = free_port()
    env.update(HOME=str(home), CVM_DATA_DIR=str(data), CVM_PORT=str(port))
    # `make demo` must not reinstall into the shared environment.
    up_to_date = subprocess.run(["make", "-q", "install"], cwd=repo, env=env)
    assert up_to_date.returncode == 0, "make would reinstall .venv (run `make install` first)"
    yield Scratch(root, repo, home, data, port, env)
    shutil.rmtree(root)  # about 70 MB of worlds, indexes and checkpoints


def files_under(*roots: Path) -> set[Path]:
    return {p for r in roots if r.exists() for p in r.rglob("*") if not p.is_relative_to(r / ".venv")}


# --- checks of the outcomes ------------------------------------------------------------------------


def active_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.lstrip().startswith("*")]
    assert lines, f"no active build (a line starting with `*`) in:\n{output}"
    assert re.search(r"\b(complete|partial)\b", lines[0]), lines[0]  # partial: published too
    return lines[0]


def numbers(line: str) -> list[int]:
    return [int(t) for t in re.findall(r"(?<![\w.:-])\d+(?![\w.:-])", line)]


def option(words: list[str], name: str) -> str | None:
    for i, w in enumerate(words):
        if w == name and i + 1 < len(words):
            return words[i + 1]
        if w.startswith(name + "="):
            return w.split("=", 1)[1]
    return None


def check_output(cmd: Command, run_text: str, output: str, sc: Scratch) -> None:
    """Concrete outcomes of a finished line, by what the line runs."""
    words = program(run_text)
    prog = Path(words[0]).name if words else ""
    sub = words[1] if len(words) > 1 else ""
    if prog == "cvm" and sub == "synth":
        out = sc.repo / (option(words, "--out") or "")
        pairs = int(option(words, "--pairs") or 0)
        ground = (out / "ground.csv").read_text().splitlines()
        assert (out / "ortho.tif").is_file()
        assert len(ground) - 1 == pairs, f"ground.csv has {len(ground) - 1} rows, --pairs {pairs}"
    elif prog == "cvm-index" and sub == "build" and "--dry-run" in words:
        assert re.search(r"\b\d+ tiles\b", output), output
    elif prog == "cvm-index" and sub == "build":
        # "partial": published without the refused too-coarse raster (run_line checked the refusal)
        assert re.search(r"build \d+: (complete|partial)", output), output
        assert "partial" not in output or COARSE_REFUSED.search(output), output
    elif prog == "cvm-index" and sub == "list":
        sc.state["active"] = active_line(output)
    elif prog == "cvm-index" and sub == "tiles":
        m = re.search(r">\s*(\S+)", run_text)
        assert m, run_text
        doc = json.loads((sc.repo / m.group(1)).read_text())
        assert doc["type"] == "FeatureCollection"
        features = doc["features"]
        assert features and all(f["geometry"]["type"] == "Polygon" for f in features)
        active = sc.state.get("active")
        if active is not None:
            assert len(features) in numbers(active), f"{len(features)} features; active build: {active}"
        sc.state["tiles"] = len(features)
    elif prog == "cvm" and sub == "localize":
        k = int(option(words, "--k") or 5)
        rows = re.findall(r"^\s*(\d+)\s+(\d+)\s+(-?\d+\.\d+)\s+(-?\d+\.\d+)\s+(-?\d+\.\d+)\s*$", output, re.M)
        assert [int(r[0]) for r in rows] == list(range(1, k + 1)), f"not {k} ranked tiles:\n{output}"
        scores = [float(r[4]) for r in rows]
        assert scores == sorted(scores, reverse=True), output
    elif prog == "cvm" and sub == "summary":
        m = re.search(r"([\d.]+)\s*M parameters", cmd.comment)
        counted = re.search(r"([\d,]+) parameters", output)
        assert counted, output
        if m:
            assert round(int(counted.group(1).replace(",", "")) / 1e6, 1) == float(m.group(1)), output
    elif prog == "cvm" and sub == "train":
        out = sc.repo / (option(words, "--out") or "")
        assert (out / "best.pt").is_file() and (out / "last.pt").is_file(), sorted(out.iterdir())
        sc.state["trained"] = out / "best.pt"
    elif prog == "cvm" and sub == "eval":
        assert re.search(r"R@1\b", output), output
        assert re.search(r"^model\s+\d+\s+\d+\.\d+", output, re.M), output
    elif prog == "cp" and len(words) == 3:
        src, dst = sc.repo / words[1], sc.repo / words[2]
        assert dst.read_bytes() == src.read_bytes()
        for var in re.findall(r"sets ([A-Z][A-Z0-9_]+)", cmd.comment):
            assert re.search(rf"^{var}=\S", dst.read_text(), re.M), f"{dst} does not set {var}"


def check_docker_line(cmd: Command, repo: Path) -> None:
    """A `docker ...` line is not run here; what it names must exist, and smoke.sh must run it."""
    smoke = repo / "docker" / "smoke.sh"
    assert smoke.is_file() and os.access(smoke, os.X_OK), "docker/smoke.sh is missing or not executable"
    script = smoke.read_text()
    compose = yaml.safe_load((repo / "docker-compose.yml").read_text())
    words = shlex.split(cmd.text)
    assert words[:2] == ["docker", "compose"], cmd.text
    if "up" in words:
        assert re.search(r"\bup -d\b", script), "docker/smoke.sh does not run `up -d`"
    if "run" in words:
        service = words[words.index("run") + 1 :]
        service = [w for w in service if not w.startswith("-")]
        assert service and service[0] in compose["services"], f"{cmd.text}: no such service"
        profile = option(words, "--profile")
        if profile is not None:
            assert profile in compose["services"][service[0]].get("profiles", []), cmd.text
            assert f"--profile {profile} run --rm {service[0]}" in script, "smoke.sh does not run it"


def check_make_test(repo: Path, env: dict[str, str]) -> None:
    dry = subprocess.run(["make", "-n", "test"], cwd=repo, env=env, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    for part in ("ruff check", "ruff format --check", "mypy", "pytest -q", "-m slow"):
        assert part in dry.stdout, f"`make test` does not run `{part}`:\n{dry.stdout}"


# --- running ---------------------------------------------------------------------------------------


def bash_script(prelude: list[str], text: str) -> str:
    return "\n".join(["set -eo pipefail", *prelude, text])


# What `cvm-index build` prints when it refuses the sample's too-coarse raster (it then exits 3).
COARSE_REFUSED = re.compile(r"rejected: \S*RGB\.byte\.tif: pixels of 300 m are too coarse for 70 m tiles")


def run_line(sc: Scratch, prelude: list[str], text: str, notes: list[str]) -> str:
    done = subprocess.run(
        ["bash", "-c", bash_script(prelude, text)],
        cwd=sc.repo,
        env=sc.env,
        capture_output=True,
        text=True,
        timeout=LINE_TIMEOUT_S,
    )
    output = done.stdout + done.stderr
    partial = done.returncode == 3 and "cvm-index build" in text and COARSE_REFUSED.search(output)
    assert done.returncode == 0 or partial, f"`{text}` ({notes}) exited {done.returncode}:\n{output[-4000:]}"
    return output


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the server exited {proc.returncode}:\n{log.read_text()[-4000:]}"
        try:
            resp = httpx.get(f"{url}/readyz", timeout=5.0)
            if resp.status_code == 200:
                return dict(resp.json())
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise AssertionError(f"{url}/readyz not 200 after {READY_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server's process group (it was started in a session of its own)."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def run_server(sc: Scratch, cmd: Command, prelude: list[str], text: str) -> None:
    fixed = re.search(r"http://(127\.0\.0\.1|localhost):(\d+)", cmd.comment)
    host, port = ("127.0.0.1", int(fixed.group(2))) if fixed else ("127.0.0.1", sc.port)
    assert port_is_free(host, port), f"{host}:{port} is in use; `{cmd.text}` needs it"
    url = f"http://{host}:{port}"
    log = sc.root / f"server-{cmd.lineno}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", "-c", bash_script(prelude, text)],
            cwd=sc.repo,
            env=sc.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        ready = wait_ready(url, proc, log)
        assert ready["ready"] is True and ready["ntotal"] > 0, ready
        if "tiles" in sc.state:  # the catalogue an earlier line of this block exported
            assert ready["ntotal"] == sc.state["tiles"], (ready, sc.state)
        called = [c for c in prose_commands(MARKDOWN) if url in c or f"localhost:{port}" in c]
        if cmd.text == "make demo":
            assert called, "the README shows no request to the demo server"
        for prose in called:
            done = subprocess.run(
                ["bash", "-c", prose], cwd=sc.repo, env=sc.env, capture_output=True, text=True, timeout=120
            )
            assert done.returncode == 0, f"`{prose}` exited {done.returncode}: {done.stderr[-2000:]}"
            assert proc.poll() is None, "the server stopped while answering"
            if "/localize" in prose:
                body = json.loads(done.stdout)
                asked = re.search(r"[?&]k=(\d+)", prose)
                k = int(asked.group(1)) if asked else 5
                assert [c["rank"] for c in body["candidates"]] == list(range(1, k + 1)), body
                assert body["build_id"] == ready["build_id"], (body, ready)
    finally:
        stop(proc)


BLOCK_IDS = [f"block{i + 1}-line{b[0].lineno}" if b else f"block{i + 1}" for i, b in enumerate(BLOCKS)]


def test_readme_has_the_blocks_it_documents() -> None:
    """The parser finds the README's commands (so an empty parametrisation cannot pass silently)."""
    assert len(BLOCKS) >= 4, BLOCKS
    texts = [c.text for block in BLOCKS for c in block]
    assert "make demo" in texts and any(re.search(r"cvm-index build\b", t) for t in texts), texts
    assert prose_commands(MARKDOWN), "the README's curl example is gone"


@pytest.mark.parametrize("block", range(len(BLOCKS)), ids=BLOCK_IDS)
def test_readme_block_runs_as_written(block: int, scratch: Scratch, request: pytest.FixtureRequest) -> None:
    commands = BLOCKS[block]
    scratch.state.clear()
    imagery: Path | None = None
    if any("/srv/" in c.text for c in commands):
        shared: Path = request.getfixturevalue("shared_data")
        imagery = scratch.root / "orthophotos"
        imagery.mkdir(exist_ok=True)
        for name in ("cogeo.tif", "RGB.byte.tif"):
            shutil.copy2(shared / "geotiff" / name, imagery / name)
    prelude: list[str] = []
    for cmd in commands:
        why = excluded(cmd)
        if why is not None:
            if cmd.text.startswith("docker "):
                check_docker_line(cmd, scratch.repo)
            elif cmd.text == "make test":
                check_make_test(scratch.repo, scratch.env)
            continue
        text, notes = as_run(cmd.text, imagery)
        if serves(cmd):
            run_server(scratch, cmd, prelude, text)
            continue
        before = files_under(scratch.repo, scratch.home, scratch.data)
        output = run_line(scratch, prelude, text, notes)
        if "writes nothing" in cmd.comment:
            assert files_under(scratch.repo, scratch.home, scratch.data) == before, f"`{text}` wrote files"
        check_output(cmd, text, output, scratch)
        if re.match(r"(export|cd)\s", text):
            prelude.append(text)
