"""Cortex: canaries on model aliases and the history of their starts, changes and ends.

A canary sends ``percent`` of one alias's traffic to another version of the same model
(optionally sticky by a request header). There is at most one per ``(model, alias)``,
and it hangs off both the alias (it cannot outlive it) and the version it sends to.

Canary events get their own table rather than ``model_alias_history``: that table
answers "which version did the alias point at, at T" from its newest ``to_version``,
and a canary does not move the alias.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-11
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "model_canaries",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("alias", sa.String(50), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("percent", sa.Float(), nullable=False),
        sa.Column("sticky_key", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(100), nullable=True),
        sa.PrimaryKeyConstraint("name", "alias", name=op.f("pk_model_canaries")),
        sa.CheckConstraint(
            "percent > 0 AND percent < 100", name=op.f("ck_model_canaries_percent_range")
        ),
        sa.ForeignKeyConstraint(
            ["name", "alias"],
            ["model_aliases.name", "model_aliases.alias"],
            name=op.f("fk_model_canaries_name_model_aliases"),
        ),
        sa.ForeignKeyConstraint(
            ["name", "version"],
            ["model_versions.name", "model_versions.version"],
            name=op.f("fk_model_canaries_name_model_versions"),
        ),
    )
    op.create_table(
        "model_canary_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("alias", sa.String(50), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("percent", sa.Float(), nullable=False),
        sa.Column("sticky_key", sa.String(64), nullable=True),
        sa.Column("alias_version", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(100), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_canary_events")),
    )
    op.create_index(
        "ix_model_canary_events_name_alias_at", "model_canary_events", ["name", "alias", "at"]
    )


def downgrade() -> None:
    op.drop_index("ix_model_canary_events_name_alias_at", table_name="model_canary_events")
    op.drop_table("model_canary_events")
    op.drop_table("model_canaries")
