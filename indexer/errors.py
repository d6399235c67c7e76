"""Errors of the indexer. Each message names the file or build it is about.

Storage failures (`storage.errors`) are reported the same way by the command line.
"""

from __future__ import annotations


class IndexerError(Exception):
    """Base class: an expected failure reported to the user as one clear line, never a traceback."""


class InputRejected(IndexerError):
    """One input (raster, tile image, CSV row) cannot be indexed; the other inputs still are."""


class UsageError(IndexerError):
    """Bad arguments or nothing usable to do (exit code 2)."""
