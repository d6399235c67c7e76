"""Holds the current index snapshot and swaps in a newly activated build without a restart.

A background task polls the active build id; when it changes, the new index and tiles are loaded
in a worker thread and the snapshot reference is replaced in one assignment. Requests that took
the old snapshot finish with it; the old index is freed when the last of them drops it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from service.catalog import Catalog
from service.errors import NotReady, ServiceError
from service.snapshot import IndexSnapshot, load_snapshot

log = logging.getLogger(__name__)


class SnapshotStore:
    """The current `IndexSnapshot` (or None) and the logic that refreshes it."""

    def __init__(
        self,
        catalog: Catalog,
        index_root: Path,
        weights_sha256: str,
        dim: int,
        on_swap: Callable[[IndexSnapshot], None] | None = None,
    ) -> None:
        self.catalog = catalog
        self.index_root = index_root
        self.weights_sha256 = weights_sha256
        self.dim = dim
        self.on_swap = on_swap
        self._snapshot: IndexSnapshot | None = None
        self.last_error: str | None = None
        self._failed_build: int | None = None

    @property
    def current(self) -> IndexSnapshot | None:
        """The snapshot new requests use (None before the first successful load)."""
        return self._snapshot

    def require(self) -> IndexSnapshot:
        """The current snapshot, or NotReady with the reason."""
        snap = self._snapshot
        if snap is None:
            reason = self.last_error or "no active index build; build one with `cvm-index build`"
            raise NotReady(f"index not loaded: {reason}")
        return snap

    def refresh(self) -> bool:
        """Load the active build if it differs from the current one. Blocking; True on a swap.

        A build that failed to load is not retried until another build is activated (its files
        do not change after activation), so a bad build costs one attempt, not one per poll.
        """
        build = self.catalog.active_build()
        if build is None:
            if self._snapshot is None:
                self.last_error = "no active index build; build one with `cvm-index build`"
            return False
        current_id = self._snapshot.build_id if self._snapshot else None
        if build.id == current_id:
            self.last_error = None
            return False
        if build.id == self._failed_build:
            return False
        try:
            snap = load_snapshot(self.catalog, build, self.index_root, self.weights_sha256, self.dim)
        except ServiceError as exc:
            self._failed_build, self.last_error = build.id, str(exc)
            log.error("build %d not loaded, still serving build %s: %s", build.id, current_id, exc)
            return False
        self._snapshot, self._failed_build, self.last_error = snap, None, None
        log.info("serving build %d (%d tiles)", snap.build_id, snap.ntotal)
        if self.on_swap is not None:
            self.on_swap(snap)
        return True

    async def watch(self, poll_s: float) -> None:
        """Poll forever (until cancelled); loading happens in a worker thread."""
        while True:
            await asyncio.sleep(poll_s)
            try:
                await asyncio.to_thread(self.refresh)
            except Exception as exc:  # a database outage must not kill the watcher
                self.last_error = f"catalogue not reachable: {exc}"
                log.warning("build poll failed: %s", exc)
