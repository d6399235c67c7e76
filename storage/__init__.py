"""Storage shared by the indexer (which writes it) and the service (which reads it).

Settings, the catalogue database (engine, sessions, Alembic upgrades), its SQLAlchemy models and
queries, the FAISS index files of a build with their metadata, and the errors of all of these.
Nothing here imports `indexer/` or `service/`.
"""
