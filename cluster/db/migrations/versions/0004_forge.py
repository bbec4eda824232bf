"""Forge: training runs and the model registry (models, versions, aliases, alias history).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _runs() -> None:
    op.create_table(
        "forge_runs",
        sa.Column("run_id", sa.String(100), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("config_hash", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("experiment_path", sa.Text(), nullable=False),
        sa.Column("lake_table", sa.String(300), nullable=False),
        sa.Column("snapshot_id", sa.BigInteger(), nullable=True),
        sa.Column("results", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("best", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("model_name", sa.String(200), nullable=True),
        sa.Column("model_version", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(100), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_forge_runs")),
    )
    op.create_index("ix_forge_runs_name_created", "forge_runs", ["name", "created_at"])


def _registry() -> None:
    op.create_table(
        "models",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(100), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_models")),
    )
    op.create_table(
        "model_versions",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("artifact_path", sa.Text(), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("model_spec", sa.JSON(), nullable=False),
        sa.Column("signature", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("lineage", sa.JSON(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(100), nullable=True),
        sa.PrimaryKeyConstraint("name", "version", name=op.f("pk_model_versions")),
        sa.ForeignKeyConstraint(
            ["name"], ["models.name"], name=op.f("fk_model_versions_name_models")
        ),
    )
    op.create_table(
        "model_aliases",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("alias", sa.String(50), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(100), nullable=False),
        sa.PrimaryKeyConstraint("name", "alias", name=op.f("pk_model_aliases")),
        sa.ForeignKeyConstraint(
            ["name", "version"],
            ["model_versions.name", "model_versions.version"],
            name=op.f("fk_model_aliases_name_model_versions"),
        ),
    )
    op.create_table(
        "model_alias_history",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("alias", sa.String(50), nullable=False),
        sa.Column("from_version", sa.Integer(), nullable=True),
        sa.Column("to_version", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_alias_history")),
    )
    op.create_index(
        "ix_model_alias_history_name_alias_at", "model_alias_history", ["name", "alias", "at"]
    )


def upgrade() -> None:
    _runs()
    _registry()


def downgrade() -> None:
    op.drop_index("ix_model_alias_history_name_alias_at", table_name="model_alias_history")
    op.drop_table("model_alias_history")
    op.drop_table("model_aliases")
    op.drop_table("model_versions")
    op.drop_table("models")
    op.drop_index("ix_forge_runs_name_created", table_name="forge_runs")
    op.drop_table("forge_runs")
