"""Create the catalogue: builds and tiles (as indexer/models.py describes them).

Revision ID: 0001
Revises:
Create Date: 2025-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "builds",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("weights_path", sa.Text(), nullable=False),
        sa.Column("weights_sha256", sa.String(length=64), nullable=False),
        sa.Column("model_arch", sa.String(length=32), nullable=False),
        sa.Column("embed_dim", sa.Integer(), nullable=False),
        sa.Column("index_path", sa.Text(), nullable=True),
        sa.Column("index_type", sa.String(length=16), nullable=True),
        sa.Column("index_factory", sa.String(length=128), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("timings", sa.JSON(), nullable=False),
        sa.Column("stats", sa.JSON(), nullable=False),
        sa.Column("n_tiles", sa.Integer(), nullable=False),
    )
    op.create_index("ix_builds_status", "builds", ["status"])
    op.create_index("ix_builds_is_active", "builds", ["is_active"])
    op.create_index(
        "uq_builds_one_active",
        "builds",
        ["is_active"],
        unique=True,
        sqlite_where=sa.text("is_active"),
        postgresql_where=sa.text("is_active"),
    )
    op.create_table(
        "tiles",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column(
            "build_id",
            sa.Integer(),
            sa.ForeignKey("builds.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("col_off", sa.Float(), nullable=True),
        sa.Column("row_off", sa.Float(), nullable=True),
        sa.Column("width", sa.Float(), nullable=True),
        sa.Column("height", sa.Float(), nullable=True),
        sa.Column("crs", sa.Text(), nullable=True),
        sa.Column("gsd_m", sa.Float(), nullable=True),
        sa.Column("size_m", sa.Float(), nullable=False),
        sa.Column("lat", sa.Float(), nullable=False),
        sa.Column("lon", sa.Float(), nullable=False),
        sa.Column("west", sa.Float(), nullable=False),
        sa.Column("south", sa.Float(), nullable=False),
        sa.Column("east", sa.Float(), nullable=False),
        sa.Column("north", sa.Float(), nullable=False),
        sa.Column("footprint", sa.Text(), nullable=False),
    )
    op.create_index("ix_tiles_build_id", "tiles", ["build_id"])


def downgrade() -> None:
    op.drop_index("ix_tiles_build_id", table_name="tiles")
    op.drop_table("tiles")
    op.drop_index("uq_builds_one_active", table_name="builds")
    op.drop_index("ix_builds_is_active", table_name="builds")
    op.drop_index("ix_builds_status", table_name="builds")
    op.drop_table("builds")
