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


def _fallback_note(active_id: int, why: str, served_id: int | None) -> str:
    return f"active build {active_id} cannot be loaded ({why}); serving build {served_id}"


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
        # Set while an older build is served because the active one cannot be loaded.
        self.fallback_note: str | None = None
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
            self.last_error = self.fallback_note = None
            return False
        if build.id == self._failed_build:
            return False
        try:
            snap = load_snapshot(self.catalog, build, self.index_root, self.weights_sha256, self.dim)
        except ServiceError as exc:
            self._failed_build, self.last_error = build.id, self._public(exc)
            log.error("build %d not loaded, still serving build %s: %s", build.id, current_id, exc)
            if self._snapshot is None:
                return self._fall_back(build.id, self.last_error)
            self.fallback_note = _fallback_note(build.id, self.last_error, current_id)
            return False
        self._snapshot, self._failed_build, self.last_error, self.fallback_note = snap, None, None, None
        self._announce(snap)
        return True

    def _fall_back(self, active_id: int, why: str) -> bool:
        """With nothing served yet, serve the newest older build that loads (same weights)."""
        for build in self.catalog.finished_builds(self.weights_sha256):
            if build.id == active_id:
                continue
            try:
                snap = load_snapshot(self.catalog, build, self.index_root, self.weights_sha256, self.dim)
            except ServiceError as exc:
                log.error("fallback build %d not loaded either: %s", build.id, exc)
                continue
            self._snapshot, self.last_error = snap, None
            self.fallback_note = _fallback_note(active_id, why, build.id)
            log.warning("%s", self.fallback_note)
            self._announce(snap)
            return True
        return False

    def _public(self, exc: Exception) -> str:
        """The message without the server's index folder (it reaches /readyz and 503 details;
        the log keeps the full path)."""
        return str(exc).replace(f"{self.index_root}/", "").replace(str(self.index_root), "<index dir>")

    def _announce(self, snap: IndexSnapshot) -> None:
        log.info("serving build %d (%d tiles)", snap.build_id, snap.ntotal)
        if self.on_swap is not None:
            self.on_swap(snap)

    async def watch(self, poll_s: float) -> None:
        """Poll forever (until cancelled); loading happens in a worker thread."""
        while True:
            await asyncio.sleep(poll_s)
            try:
                await asyncio.to_thread(self.refresh)
            except Exception as exc:  # a database outage must not kill the watcher
                self.last_error = f"catalogue not reachable: {exc}"
                log.warning("build poll failed: %s", exc)
