"""Access: scoped grants and the hash-chained audit log.

``key_grants`` and ``user_grants`` hold one row per (subject, permission, scope); a
subject without rows keeps its role everywhere. ``audit_log`` holds the chained
entries (``seq`` assigned by the appender, never by the database, so it has no gaps);
``audit_head`` is the one row appenders lock, seeded here with the genesis hash.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GENESIS_HASH = "0" * 64  # cluster.security.audit.GENESIS_HASH, frozen here


def _grants_table(name: str, subject: str, parent: str) -> None:
    op.create_table(
        name,
        sa.Column(subject, sa.String(32), nullable=False),
        sa.Column("permission", sa.String(64), nullable=False),
        sa.Column("scope", sa.String(300), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(100), nullable=True),
        sa.PrimaryKeyConstraint(subject, "permission", "scope", name=op.f(f"pk_{name}")),
        sa.ForeignKeyConstraint(
            [subject],
            [f"{parent}.id"],
            name=op.f(f"fk_{name}_{subject}_{parent}"),
            ondelete="CASCADE",
        ),
    )


def upgrade() -> None:
    _grants_table("key_grants", "key_id", "api_keys")
    _grants_table("user_grants", "user_id", "users")
    op.create_table(
        "audit_log",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("actor", sa.String(100), nullable=True),
        sa.Column("actor_kind", sa.String(16), nullable=True),
        sa.Column("actor_name", sa.String(100), nullable=True),
        sa.Column("role", sa.String(32), nullable=True),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("route", sa.String(300), nullable=False),
        sa.Column("permission", sa.String(64), nullable=True),
        sa.Column("target", sa.Text(), nullable=True),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("client", sa.String(64), nullable=True),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_log")),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_index("ix_audit_log_actor_at", "audit_log", ["actor", "at"])
    head = op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_head")),
    )
    op.bulk_insert(head, [{"id": 1, "seq": 0, "hash": GENESIS_HASH}])


def downgrade() -> None:
    op.drop_table("audit_head")
    op.drop_index("ix_audit_log_actor_at", table_name="audit_log")
    op.drop_index("ix_audit_log_at", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_table("user_grants")
    op.drop_table("key_grants")
