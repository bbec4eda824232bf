"""Encryption at rest: wrapped data keys for sensitive columns.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "data_keys",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("table_name", sa.String(300), nullable=False),
        sa.Column("column_name", sa.String(300), nullable=False),
        sa.Column("master_key_id", sa.String(100), nullable=False),
        sa.Column("wrapped", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rewrapped_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_data_keys")),
    )
    op.create_index(
        "uq_data_keys_table_column", "data_keys", ["table_name", "column_name"], unique=True
    )
    op.create_index(op.f("ix_data_keys_master_key_id"), "data_keys", ["master_key_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_data_keys_master_key_id"), table_name="data_keys")
    op.drop_index("uq_data_keys_table_column", table_name="data_keys")
    op.drop_table("data_keys")
