"""Errors of the indexer. Each message names the file or build it is about."""

from __future__ import annotations


class IndexerError(Exception):
    """Base class: an expected failure reported to the user as one clear line, never a traceback."""


class InputRejected(IndexerError):
    """One input (raster, tile image, CSV row) cannot be indexed; the other inputs still are."""


class UsageError(IndexerError):
    """Bad arguments or nothing usable to do (exit code 2)."""


class BuildNotFound(UsageError):
    """No build with the given id (or no active build)."""


class IndexMismatch(IndexerError):
    """index.faiss and index_meta.json (or the catalogue) disagree."""
