"""Errors of the storage layer. Each message names the database, build or file it is about."""

from __future__ import annotations


class StorageError(Exception):
    """Base class: an expected failure of the catalogue or an index file, reported as one line."""


class DatabaseError(StorageError):
    """The catalogue database URL is invalid, or the database cannot be reached or migrated."""


class BuildNotFound(StorageError):
    """No build with the given id (or no active build), or one that cannot be activated."""


class IndexMismatch(StorageError):
    """index.faiss and index_meta.json (or the catalogue) disagree, or cannot be read."""


class ExactVectorsError(IndexMismatch):
    """The exact vectors a compressed index is re-ranked with (vectors.npy, vector_ids.npy) are
    missing, changed since the build or do not match the index."""
