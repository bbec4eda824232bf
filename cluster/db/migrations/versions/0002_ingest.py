"""Ingest bookkeeping: run records and the inputs each pipeline consumed.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ingest_runs",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("pipeline", sa.String(200), nullable=False),
        sa.Column("config_hash", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("consumed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("rows_read", sa.BigInteger(), nullable=True),
        sa.Column("rows_written", sa.BigInteger(), nullable=True),
        sa.Column("rows_quarantined", sa.BigInteger(), nullable=True),
        sa.Column("rows_filtered", sa.BigInteger(), nullable=True),
        sa.Column("snapshot_id", sa.BigInteger(), nullable=True),
        sa.Column("lineage", sa.JSON(), nullable=True),
        sa.Column("plan", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_ingest_runs")),
    )
    op.create_index(
        "ix_ingest_runs_pipeline_started", "ingest_runs", ["pipeline", "started_at"], unique=False
    )
    op.create_table(
        "ingest_inputs",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("pipeline", sa.String(200), nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("input_id", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.String(200), nullable=False),
        sa.Column("position", sa.Text(), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_ingest_inputs")),
    )
    op.create_index(
        "ix_ingest_inputs_pipeline_kind",
        "ingest_inputs",
        ["pipeline", "source", "kind", "recorded_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_ingest_inputs_pipeline_kind", table_name="ingest_inputs")
    op.drop_table("ingest_inputs")
    op.drop_index("ix_ingest_runs_pipeline_started", table_name="ingest_runs")
    op.drop_table("ingest_runs")
