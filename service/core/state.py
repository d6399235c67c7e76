"""The heavy state of one app (model, index snapshot, batcher, watcher), built in the lifespan.

Handlers reach it only through `service.api.deps`, which tests can override.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from model.runtime import compute_single_threaded, reuse_freed_memory, set_search_threads
from model.weights import default_weights_path
from service.catalog import Catalog
from service.core.config import ServiceSettings
from service.coverage import Coverage
from service.localizer import Localizer
from service.metrics import Metrics
from service.pipeline import LocalizationService
from service.store import SnapshotStore
from storage.db import make_engine

log = logging.getLogger("service")


@dataclass
class AppState:
    """What `create_app` allocates (settings, metrics) and what the lifespan loads (the rest)."""

    settings: ServiceSettings
    metrics: Metrics = field(default_factory=Metrics)
    catalog: Catalog | None = None
    localizer: Localizer | None = None
    store: SnapshotStore | None = None
    service: LocalizationService | None = None
    watcher: asyncio.Task[None] | None = None
    # Coverage of builds by id, computed on first request (builds do not change once finished).
    coverages: dict[int, Coverage] = field(default_factory=dict)


def redacted(settings: ServiceSettings) -> dict[str, object]:
    """The resolved settings for the log, with any database password hidden."""
    values = settings.model_dump(mode="json")
    with contextlib.suppress(ArgumentError):
        values["database_url"] = make_url(settings.database_url).render_as_string(hide_password=True)
    return values


def weights_path(settings: ServiceSettings) -> Path:
    """CVM_WEIGHTS, or the shipped checkpoint (FileNotFoundError with a hint when absent)."""
    return settings.weights if settings.weights is not None else default_weights_path()


def load_localizer(settings: ServiceSettings) -> Localizer:
    """The served weights (CheckpointError / FileNotFoundError naming the file when unusable)."""
    path = weights_path(settings)
    # Before torch runs anything in this process: only the batch thread gets a thread pool.
    compute_single_threaded()
    localizer = Localizer.from_checkpoint(path, settings.device, settings.max_image_pixels)
    log.info("weights %s (sha256 %s...)", path, localizer.weights_sha256[:12])
    return localizer


async def startup(state: AppState) -> None:
    """Load the weights and the active build once; start the batcher and the build watcher.

    A missing or broken checkpoint stops the start (CheckpointError / FileNotFoundError naming
    the file). A missing index does not: /readyz says 503 until a build is activated.
    """
    settings = state.settings
    log.info("settings: %s", redacted(settings))
    reuse_freed_memory()  # every request's forward pass would fault in fresh pages otherwise
    state.catalog = Catalog(make_engine(settings.database_url, read_only=True))
    set_search_threads(settings.search_threads)
    if state.localizer is None:  # `cvm serve` loads it before starting, to report a bad file plainly
        state.localizer = await asyncio.to_thread(load_localizer, settings)
    state.store = SnapshotStore(
        state.catalog,
        settings.index_root,
        state.localizer.weights_sha256,
        state.localizer.out_dim,
        on_swap=state.metrics.observe_snapshot,
    )
    try:
        await asyncio.to_thread(state.store.refresh)
    except Exception as exc:  # the catalogue may come up after the service
        state.store.last_error = str(exc)
        log.warning("no index loaded at start: %s", exc)
    state.service = LocalizationService(
        state.localizer,
        state.store,
        settings.batch_window_ms / 1000.0,
        settings.max_batch,
        torch_threads=settings.torch_threads,
    )
    await state.service.start()
    state.watcher = asyncio.create_task(state.store.watch(settings.build_poll_s), name="cvm-build-watcher")


async def shutdown(state: AppState) -> None:
    """Stop the watcher and the batcher; release the database pool."""
    if state.watcher is not None:
        state.watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await state.watcher
    if state.service is not None:
        await state.service.stop()
    if state.catalog is not None:
        state.catalog.engine.dispose()
