"""ORM models of the platform tables (SQLAlchemy 2 declarative, typed ``Mapped``).

Every timestamp is a timezone-aware UTC ``datetime`` in Python whichever backend
stores it: PostgreSQL keeps ``timestamptz``; SQLite keeps naive UTC text, which
``UTCDateTime`` tags with UTC again on the way out.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Stable constraint names, so migrations can drop or alter them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """An aware datetime stored as UTC; naive values are refused rather than guessed."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} given; pass an aware UTC time")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:  # SQLite drops the offset; what it stored was UTC
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of every platform table; its metadata is Alembic's target."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ApiKey(Base):
    """One API key. Only the SHA-256 digest of the token is stored, never the token."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(32))
    digest: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_by: Mapped[str | None] = mapped_column(String(100))
    # Rotation (migration 0006): the successor of a rotated key and the key a new one
    # replaced; a rotated key's ``expires_at`` is the end of its overlap.
    replaced_by: Mapped[str | None] = mapped_column(String(32))
    replaces: Mapped[str | None] = mapped_column(String(32))
    rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class IngestRun(Base):
    """One run of an ingest pipeline: what it planned, what it wrote, how it ended.

    ``plan`` holds the run's source plans (JSON) from its start, so a run that committed
    but lost its bookkeeping can still be marked consumed (``IngestState.reconcile``);
    ``consumed_at`` is set once its inputs are recorded in ``ingest_inputs``.
    """

    __tablename__ = "ingest_runs"
    __table_args__ = (Index("ix_ingest_runs_pipeline_started", "pipeline", "started_at"),)

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    pipeline: Mapped[str] = mapped_column(String(200))
    config_hash: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    consumed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    duration_s: Mapped[float | None] = mapped_column(Float)
    rows_read: Mapped[int | None] = mapped_column(BigInteger)
    rows_written: Mapped[int | None] = mapped_column(BigInteger)
    rows_quarantined: Mapped[int | None] = mapped_column(BigInteger)
    rows_filtered: Mapped[int | None] = mapped_column(BigInteger)
    snapshot_id: Mapped[int | None] = mapped_column(BigInteger)
    lineage: Mapped[Any | None] = mapped_column(JSON(none_as_null=True))
    plan: Mapped[Any | None] = mapped_column(JSON(none_as_null=True))
    error: Mapped[str | None] = mapped_column(Text)


class IngestInput(Base):
    """An input a pipeline consumed (a file version, a message id, a pinned snapshot),
    or, with ``kind='position'``, a source's cursor (SQL high-water mark, Lake snapshot).

    ``key`` is the SHA-256 of (pipeline, source, kind, input_id, fingerprint), so a
    long path stays out of the primary key and recording an input twice is a no-op.
    """

    __tablename__ = "ingest_inputs"
    __table_args__ = (
        Index("ix_ingest_inputs_pipeline_kind", "pipeline", "source", "kind", "recorded_at"),
    )

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    pipeline: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    input_id: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(200))
    position: Mapped[str | None] = mapped_column(Text)
    size: Mapped[int | None] = mapped_column(BigInteger)
    run_id: Mapped[str] = mapped_column(String(64))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime())


class StreamTopology(Base):
    """A deployed stream topology: its spec (JSON) and where it stands.

    ``status`` is one of ``deployed``, ``running``, ``stopped``, ``failed``, ``finished``;
    ``error`` says why a ``failed`` one stopped.
    """

    __tablename__ = "stream_topologies"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    spec: Mapped[Any] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str | None] = mapped_column(String(100))
    error: Mapped[str | None] = mapped_column(Text)


class StreamCheckpoint(Base):
    """One checkpoint of a topology: the opaque state saved at the end of an epoch.

    Saving it is the topology's commit point; the newest epoch wins on restart.
    """

    __tablename__ = "stream_checkpoints"

    topology: Mapped[str] = mapped_column(String(200), primary_key=True)
    epoch: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    size: Mapped[int] = mapped_column(BigInteger)
    payload: Mapped[bytes] = mapped_column(LargeBinary)


class ForgeRun(Base):
    """One Forge training run: its spec, pinned data, where its trials live, how it ended.

    ``state`` is one of ``pending``, ``running``, ``succeeded``, ``failed``,
    ``interrupted``. ``snapshot_id`` pins the Lake snapshot it trains on, so a
    resubmitted run resumes on the same data; ``results`` holds per-trial metrics and
    ``best`` the winning trial; ``model_name``/``model_version`` what it registered.
    """

    __tablename__ = "forge_runs"
    __table_args__ = (Index("ix_forge_runs_name_created", "name", "created_at"),)

    run_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    spec: Mapped[Any] = mapped_column(JSON)
    config_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    experiment_path: Mapped[str] = mapped_column(Text)
    lake_table: Mapped[str] = mapped_column(String(300))
    snapshot_id: Mapped[int | None] = mapped_column(BigInteger)
    results: Mapped[Any | None] = mapped_column(JSON(none_as_null=True))
    best: Mapped[Any | None] = mapped_column(JSON(none_as_null=True))
    model_name: Mapped[str | None] = mapped_column(String(200))
    model_version: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class RegisteredModel(Base):
    """A name in the model registry; its versions are ``ModelVersion`` rows."""

    __tablename__ = "models"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str | None] = mapped_column(String(100))


class ModelVersion(Base):
    """One registered version: its artifact (path + sha256) and what it came from.

    ``artifact_path`` is relative to ``<data_dir>/forge/artifacts``; ``lineage`` holds
    the Lake table and snapshot id, the training run, the config hash and code version.
    """

    __tablename__ = "model_versions"
    __table_args__ = (ForeignKeyConstraint(["name"], ["models.name"]),)

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    artifact_path: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(16))
    model_spec: Mapped[Any] = mapped_column(JSON)
    signature: Mapped[Any] = mapped_column(JSON)
    metrics: Mapped[Any] = mapped_column(JSON)
    params: Mapped[Any] = mapped_column(JSON)
    tags: Mapped[Any] = mapped_column(JSON)
    lineage: Mapped[Any] = mapped_column(JSON)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str | None] = mapped_column(String(100))


class ModelAlias(Base):
    """Where an alias (``production``, ``staging``, any name) of a model points now."""

    __tablename__ = "model_aliases"
    __table_args__ = (
        ForeignKeyConstraint(
            ["name", "version"], ["model_versions.name", "model_versions.version"]
        ),
    )

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    alias: Mapped[str] = mapped_column(String(50), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_by: Mapped[str] = mapped_column(String(100))


class ModelAliasEvent(Base):
    """One move of an alias, appended and never changed: who moved it, when, from, to.

    ``to_version`` is None when the alias was removed. The newest event at or before a
    time says where the alias pointed then (one indexed query).
    """

    __tablename__ = "model_alias_history"
    __table_args__ = (Index("ix_model_alias_history_name_alias_at", "name", "alias", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    alias: Mapped[str] = mapped_column(String(50))
    from_version: Mapped[int | None] = mapped_column(Integer)
    to_version: Mapped[int | None] = mapped_column(Integer)
    actor: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UTCDateTime())


class ModelCanary(Base):
    """A canary on an alias: ``percent`` of its traffic goes to ``version`` instead.

    One per ``(name, alias)``; it needs the alias to exist and points at a version of
    the same model. ``sticky_key`` names a request header whose value pins a caller to
    one side, so the same user keeps seeing the same version.
    """

    __tablename__ = "model_canaries"
    __table_args__ = (
        ForeignKeyConstraint(["name", "alias"], ["model_aliases.name", "model_aliases.alias"]),
        ForeignKeyConstraint(
            ["name", "version"], ["model_versions.name", "model_versions.version"]
        ),
        CheckConstraint("percent > 0 AND percent < 100", name="percent_range"),
    )

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    alias: Mapped[str] = mapped_column(String(50), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    percent: Mapped[float] = mapped_column(Float)
    sticky_key: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str | None] = mapped_column(String(100))


class ModelCanaryEvent(Base):
    """One start, change or end of a canary, appended and never changed.

    ``action`` is ``start``, ``replace``, ``rollback``, ``promote`` or ``stop`` (the
    alias was moved onto the canary's version another way); ``version``, ``percent``
    and ``sticky_key`` are the canary's, ``alias_version`` where the alias pointed.
    """

    __tablename__ = "model_canary_events"
    __table_args__ = (Index("ix_model_canary_events_name_alias_at", "name", "alias", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    alias: Mapped[str] = mapped_column(String(50))
    action: Mapped[str] = mapped_column(String(16))
    version: Mapped[int] = mapped_column(Integer)
    percent: Mapped[float] = mapped_column(Float)
    sticky_key: Mapped[str | None] = mapped_column(String(64))
    alias_version: Mapped[int | None] = mapped_column(Integer)
    actor: Mapped[str | None] = mapped_column(String(100))
    reason: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UTCDateTime())


class User(Base):
    """A human account: argon2id password hash, lockout counters, TOTP state.

    ``mfa_secret`` is set at enrolment and MFA is on once ``mfa_enabled_at`` is set
    (the first code confirmed); ``last_totp_step`` is the newest TOTP step accepted,
    so a code cannot be used twice.
    """

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    username: Mapped[str] = mapped_column(String(100), unique=True, index=True)
    role: Mapped[str] = mapped_column(String(32))
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str | None] = mapped_column(String(100))
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    mfa_secret: Mapped[str | None] = mapped_column(String(64))
    mfa_enabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_totp_step: Mapped[int | None] = mapped_column(BigInteger)


class UserRecoveryCode(Base):
    """One MFA recovery code of a user, by SHA-256 digest; ``used_at`` once spent."""

    __tablename__ = "user_recovery_codes"
    __table_args__ = (ForeignKeyConstraint(["user_id"], ["users.id"]),)

    user_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class AuthSession(Base):
    """A signed-in session: the ``sid`` its tokens carry and its one valid refresh token.

    ``refresh_jti`` is the id of the only refresh token that may be used next; a
    refresh token of this session with another id is a reuse and ends the session.
    """

    __tablename__ = "auth_sessions"
    __table_args__ = (
        ForeignKeyConstraint(["user_id"], ["users.id"]),
        Index("ix_auth_sessions_user_id", "user_id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(32))
    refresh_jti: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    refreshed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_reason: Mapped[str | None] = mapped_column(String(100))


class KeyGrant(Base):
    """One scoped grant of an API key: a permission on ``table:``/``namespace:``/
    ``model:``/``stream:`` NAME or ``*`` (``cluster.security.grants``).

    A key with no grants has its role's permissions everywhere; with grants, only where
    they say. Loaded with the key at authentication (and cached with it).
    """

    __tablename__ = "key_grants"
    __table_args__ = (ForeignKeyConstraint(["key_id"], ["api_keys.id"], ondelete="CASCADE"),)

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    permission: Mapped[str] = mapped_column(String(64), primary_key=True)
    scope: Mapped[str] = mapped_column(String(300), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str | None] = mapped_column(String(100))


class UserGrant(Base):
    """One scoped grant of a human account; the same rules as ``KeyGrant``."""

    __tablename__ = "user_grants"
    __table_args__ = (ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),)

    user_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    permission: Mapped[str] = mapped_column(String(64), primary_key=True)
    scope: Mapped[str] = mapped_column(String(300), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str | None] = mapped_column(String(100))


class AuditEntry(Base):
    """One audited call, hash-chained to the one before it (``cluster.security.audit``).

    ``seq`` runs 1, 2, 3 ... without gaps; ``hash`` is
    ``sha256(prev_hash || canonical_json(every other column))``, so changing, deleting
    or reordering a row breaks the chain at that row. Rows are appended, never updated.
    """

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_at", "at"),
        Index("ix_audit_log_actor_at", "actor", "at"),
    )

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    request_id: Mapped[str | None] = mapped_column(String(128))
    actor: Mapped[str | None] = mapped_column(String(100))
    actor_kind: Mapped[str | None] = mapped_column(String(16))
    actor_name: Mapped[str | None] = mapped_column(String(100))
    role: Mapped[str | None] = mapped_column(String(32))
    method: Mapped[str] = mapped_column(String(16))
    route: Mapped[str] = mapped_column(String(300))
    permission: Mapped[str | None] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(Text)
    status: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16))
    client: Mapped[str | None] = mapped_column(String(64))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The audit chain's head: one row (``id`` 1) with the last ``seq`` and ``hash``.

    Appenders lock it first (an ``UPDATE``: a row lock on PostgreSQL, the write lock on
    SQLite), so appends from every gateway replica form one linear chain; it also lets
    ``verify`` notice rows cut off the end.
    """

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class DataKey(Base):
    """The data key of one encrypted Lake column, stored only wrapped by a master key.

    ``master_key_id`` names the master key that wrapped it; ``datapunk keys
    rotate-master`` re-wraps every row under a new one (``rewrapped_at``) while the
    key itself, and so every encrypted file, stays as it is.
    """

    __tablename__ = "data_keys"
    __table_args__ = (Index("uq_data_keys_table_column", "table_name", "column_name", unique=True),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    table_name: Mapped[str] = mapped_column(String(300))
    column_name: Mapped[str] = mapped_column(String(300))
    master_key_id: Mapped[str] = mapped_column(String(100), index=True)
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    rewrapped_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
