"""The catalogue schema (SQLAlchemy 2). Alembic migrations in `migrations/` create it;
nothing calls `create_all` on a production path.

Tile primary keys are the FAISS ids of the build's index (`add_with_ids`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Build(Base):
    """One run of `cvm-index build`. Exactly one build at most has is_active = True."""

    __tablename__ = "builds"
    # At most one active build, enforced by the database: a partial unique index over the
    # active rows (activation clears the old row before setting the new one, in one transaction).
    __table_args__ = (
        Index(
            "uq_builds_one_active",
            "is_active",
            unique=True,
            sqlite_where=text("is_active"),
            postgresql_where=text("is_active"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # building -> complete | failed | partial ("partial": complete, but some inputs were rejected)
    status: Mapped[str] = mapped_column(String(16), default="building", index=True)
    is_active: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    weights_path: Mapped[str] = mapped_column(Text)
    weights_sha256: Mapped[str] = mapped_column(String(64))
    model_arch: Mapped[str] = mapped_column(String(32))
    embed_dim: Mapped[int] = mapped_column(Integer)
    # directory holding index.faiss and index_meta.json
    index_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    index_type: Mapped[str | None] = mapped_column(String(16), nullable=True)
    index_factory: Mapped[str | None] = mapped_column(String(128), nullable=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    n_tiles: Mapped[int] = mapped_column(Integer, default=0)


class Tile(Base):
    """One satellite tile of a build: where it is on Earth and where it came from."""

    __tablename__ = "tiles"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    build_id: Mapped[int] = mapped_column(ForeignKey("builds.id", ondelete="CASCADE"), index=True)
    source: Mapped[str] = mapped_column(Text)
    # pixel window in the source raster (col_off, row_off, width, height); null for pre-cut tiles
    col_off: Mapped[float | None] = mapped_column(Float, nullable=True)
    row_off: Mapped[float | None] = mapped_column(Float, nullable=True)
    width: Mapped[float | None] = mapped_column(Float, nullable=True)
    height: Mapped[float | None] = mapped_column(Float, nullable=True)
    crs: Mapped[str | None] = mapped_column(Text, nullable=True)
    gsd_m: Mapped[float | None] = mapped_column(Float, nullable=True)
    size_m: Mapped[float] = mapped_column(Float)
    lat: Mapped[float] = mapped_column(Float)
    lon: Mapped[float] = mapped_column(Float)
    west: Mapped[float] = mapped_column(Float)
    south: Mapped[float] = mapped_column(Float)
    east: Mapped[float] = mapped_column(Float)
    north: Mapped[float] = mapped_column(Float)
    # GeoJSON Polygon geometry ([lon, lat] rings) of the true footprint, as text
    footprint: Mapped[str] = mapped_column(Text)
