"""One settings model for the whole platform.

Precedence, highest first: keyword overrides (CLI flags, tests) > ``DATAPUNK_*``
environment variables (nested keys with ``__``: ``DATAPUNK_GATEWAY__PORT=8001``) >
``configs/datapunk.yaml`` (or the file named by ``DATAPUNK_CONFIG``) > defaults.

A URL left unset means the embedded default for that adapter: SQLite for the
platform DB, an in-process store for the cache, an in-cluster queue for messaging,
Ray's own registry for discovery.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from cluster.errors import ConfigError
from cluster.logging import remember_secrets

DEFAULT_CONFIG_PATH = Path("configs/datapunk.yaml")
Port = int  # constrained per field with ge/le below

# consul://SERVICE is resolved through Consul's catalog at load time (cluster.consul).
_URL_SCHEMES: dict[str, tuple[str, ...]] = {
    "database_url": ("sqlite+aiosqlite", "postgresql+asyncpg", "postgresql", "sqlite", "consul"),
    "redis_url": ("redis", "rediss", "unix", "consul"),
    "amqp_url": ("amqp", "amqps", "consul"),
    "consul_url": ("http", "https"),
    "catalog_url": ("sqlite", "postgresql", "postgresql+psycopg2", "postgresql+asyncpg"),
}


class _Section(BaseModel):
    """A nested settings group: a misspelt key is an error, as at the top level."""

    model_config = ConfigDict(extra="forbid")


class RaySettings(_Section):
    """How Datapunk finds or starts its Ray cluster."""

    address: str | None = Field(
        None, description="Join this cluster (host:port or auto); unset starts a local head."
    )
    port: int = Field(
        6390, ge=1024, le=65535, description="GCS port of a local head; 6379 belongs to Redis."
    )
    node_ip_address: str = Field(
        "127.0.0.1", description="Address the local head binds; loopback on a laptop."
    )
    dashboard_host: str = Field("127.0.0.1", description="Dashboard bind address (loopback).")
    dashboard_port: int = Field(8265, ge=1024, le=65535, description="Ray dashboard port.")
    client_server_port: int = Field(
        10001, ge=1024, le=65535, description="Ray Client server port of a local head."
    )
    dashboard_agent_port: int = Field(
        52365, ge=1024, le=65535, description="HTTP port of the head's dashboard agent."
    )
    metrics_export_port: int = Field(
        8266,
        ge=1024,
        le=65535,
        description="Where the head exports Ray's and Datapunk's actor metrics for Prometheus.",
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs the local head offers; unset=all.")
    namespace: str = Field("datapunk", min_length=1, description="Ray namespace of our actors.")

    @field_validator("port")
    @classmethod
    def _not_redis_port(cls, v: int) -> int:
        if v == 6379:
            raise ValueError("6379 is Redis's port on this machine; pick another such as 6390")
        return v


class GatewaySettings(_Section):
    """The Serve-hosted HTTP gateway."""

    host: str = Field("127.0.0.1", description="Address the HTTP ingress binds.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port of the gateway.")
    replicas: int = Field(1, ge=1, le=64, description="Gateway replicas.")
    max_ongoing_requests: int = Field(256, ge=1, description="Per-replica concurrency cap.")
    num_cpus: float = Field(
        0.5, ge=0, le=64, description="CPUs reserved per replica; it is I/O-bound, so < 1."
    )
    throughput_optimized: bool = Field(
        True, description="RAY_SERVE_THROUGHPUT_OPTIMIZED=1: gRPC router, no extra threads."
    )
    ha_proxy: bool = Field(
        True, description="RAY_SERVE_ENABLE_HA_PROXY=1: HAProxy in front of replica ports."
    )
    auth_cache_ttl_s: float = Field(
        5.0, ge=0, le=300, description="Seconds a verified API key is trusted before re-reading."
    )
    haproxy_metrics: bool = Field(
        False,
        description="Serve's per-request HAProxy log parsing; the gateway's own /metrics "
        "already counts requests, and this costs ~0.1 ms CPU per request.",
    )
    # Serve's HAProxy mode binds these fixed ports; two platforms on one machine (a
    # developer's and the test suite's) need their own.
    haproxy_stats_port: int = Field(8404, ge=1024, le=65535, description="HAProxy stats.")
    haproxy_metrics_port: int = Field(9101, ge=1024, le=65535, description="HAProxy metrics.")
    fallback_proxy_port: int = Field(
        8500, ge=1024, le=65534, description="Serve's fallback proxy (HTTP; gRPC is +1000)."
    )
    replica_port_min: int = Field(
        30000,
        ge=1024,
        le=54000,
        description="First of 1000 direct-ingress replica ports "
        "(HTTP; gRPC ports start 10000 higher).",
    )
    tls_cert_file: Path | None = Field(
        None, description="PEM certificate (chain): with tls_key_file the gateway serves HTTPS."
    )
    tls_key_file: Path | None = Field(
        None, description="PEM private key of tls_cert_file (not readable by others)."
    )
    tls_key_password: SecretStr | None = Field(
        None, description="Password of an encrypted tls_key_file."
    )

    @model_validator(mode="after")
    def _tls_complete(self) -> GatewaySettings:
        cert, key = self.tls_cert_file, self.tls_key_file
        if (cert is None) != (key is None):
            given, missing = (
                ("tls_cert_file", "tls_key_file")
                if key is None
                else ("tls_key_file", "tls_cert_file")
            )
            raise ValueError(f"gateway.{given} is set but gateway.{missing} is not; set both")
        if cert is not None and self.ha_proxy:
            raise ValueError(
                "TLS is served by Serve's own proxy; Serve's HAProxy mode has no TLS: set "
                "gateway.ha_proxy=false (DATAPUNK_GATEWAY__HA_PROXY=false), or terminate TLS "
                "in a load balancer in front and leave the certificate unset"
            )
        return self

    @property
    def tls(self) -> bool:
        """Whether the gateway serves HTTPS."""
        return self.tls_cert_file is not None


class LakeSettings(_Section):
    """Iceberg tables: commits, SQL limits and file layout."""

    commit_retries: int = Field(
        20, ge=0, le=1000, description="Retries of a commit that lost an optimistic race."
    )
    sql_row_limit: int = Field(100_000, ge=1, description="Most rows a SQL query returns.")
    sql_max_query_chars: int = Field(
        100_000, ge=16, description="Longest SQL text accepted (a query-cost limit)."
    )
    sql_timeout_s: float = Field(30.0, gt=0, le=3600, description="SQL queries stop after this.")
    max_result_bytes: int = Field(
        512 * 1024 * 1024, ge=1024, description="Largest scan or SQL result handed back."
    )
    compression: Literal["zstd", "snappy", "gzip", "lz4", "none"] = Field(
        "zstd", description="Parquet codec of data files."
    )
    target_file_size_mb: int = Field(
        128, ge=1, le=4096, description="Compaction writes files of about this size."
    )
    orphan_grace_s: float = Field(
        3600.0, ge=0, description="Files younger than this are never orphans (in-flight writes)."
    )


class CortexSettings(_Section):
    """Online inference on Ray Serve: batching, models per replica, autoscaling, device,
    the prediction log."""

    max_batch_size: int = Field(
        64, ge=1, le=4096, description="Most requests one forward pass serves (@serve.batch)."
    )
    batch_wait_timeout_s: float = Field(
        0.005, ge=0, le=10, description="Longest a request waits for its batch to fill."
    )
    max_models_per_replica: int = Field(
        4, ge=1, le=256, description="Model versions one replica holds (LRU beyond that)."
    )
    min_replicas: int = Field(1, ge=0, le=256, description="Autoscaling floor.")
    max_replicas: int = Field(2, ge=1, le=256, description="Autoscaling ceiling.")
    target_ongoing_requests: float = Field(
        32.0, gt=0, description="Autoscaling aims at this many requests in flight per replica."
    )
    max_ongoing_requests: int = Field(256, ge=1, description="Per-replica concurrency cap.")
    num_cpus: float = Field(0.5, ge=0, description="CPUs each replica reserves.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: a GPU when the cluster has one, else CPU."
    )
    num_gpus: float = Field(
        1.0, ge=0, le=8, description="GPUs a replica requests when it runs on the GPU."
    )
    route_refresh_s: float = Field(
        1.0, gt=0, le=300, description="How often aliases and canaries are re-read."
    )
    log_predictions: bool = Field(True, description="Append every prediction to the Lake.")
    log_namespace: str = Field(
        "cortex", min_length=1, description="Lake namespace of the prediction-log tables."
    )
    log_buffer_rows: int = Field(
        100_000, ge=1, description="Prediction-log buffer; beyond it rows are dropped, counted."
    )
    log_flush_rows: int = Field(5_000, ge=1, description="Flush the log at this many rows.")
    log_flush_s: float = Field(2.0, gt=0, le=3600, description="... or after this long.")

    @model_validator(mode="after")
    def _replicas_ordered(self) -> CortexSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"cortex.min_replicas ({self.min_replicas}) exceeds cortex.max_replicas "
                f"({self.max_replicas}); raise max_replicas or lower min_replicas"
            )
        return self


class AuthSettings(_Section):
    """Human accounts and API-key rotation: token lifetimes, lockout, password hashing."""

    access_token_ttl_s: float = Field(
        900.0, ge=60, le=86_400, description="Lifetime of an access token (default 15 min)."
    )
    refresh_token_ttl_s: float = Field(
        7 * 86_400.0,
        ge=300,
        le=90 * 86_400,
        description="Lifetime of a refresh token; each refresh issues a new one (default 7 d).",
    )
    lockout_threshold: int = Field(
        5, ge=1, le=1000, description="Failed sign-ins in a row that lock an account."
    )
    lockout_duration_s: float = Field(
        900.0, gt=0, le=7 * 86_400, description="How long a locked account stays locked."
    )
    rotation_overlap_s: float = Field(
        86_400.0,
        ge=0,
        le=90 * 86_400,
        description="How long a rotated API key keeps working beside its successor.",
    )
    signing_key: SecretStr | None = Field(
        None,
        description="HS256 key (32+ characters) for access and refresh tokens; "
        "unset = signing_key_file.",
    )
    signing_key_file: Path | None = Field(
        None,
        description="0600 file holding the token signing key, created on first use; "
        "unset = <data_dir>/auth/jwt_signing_key.",
    )
    issuer: str = Field(
        "Datapunk", min_length=1, max_length=100, description="Issuer shown in MFA apps."
    )
    argon2_time_cost: int = Field(3, ge=1, le=100, description="argon2id passes.")
    argon2_memory_kib: int = Field(
        65_536, ge=1024, le=4 * 1024 * 1024, description="argon2id memory per hash (KiB)."
    )
    argon2_parallelism: int = Field(4, ge=1, le=64, description="argon2id lanes.")


class RateLimitSettings(_Section):
    """Token buckets per API key and route class, per client address for calls without a
    valid key, and request-size limits. A bucket holds ``*_burst`` requests and refills
    at ``*_per_s``; Redis holds them when ``redis_url`` is set (shared by every replica),
    else each gateway replica has its own."""

    enabled: bool = Field(True, description="Enforce the buckets below (size limits always).")
    read_per_s: float = Field(100.0, gt=0, description="Per key: GET/HEAD calls per second.")
    read_burst: int = Field(200, ge=1, description="Per key: GET/HEAD calls at once.")
    write_per_s: float = Field(20.0, gt=0, description="Per key: mutating calls per second.")
    write_burst: int = Field(50, ge=1, description="Per key: mutating calls at once.")
    predict_per_s: float = Field(200.0, gt=0, description="Per key: predictions per second.")
    predict_burst: int = Field(400, ge=1, description="Per key: predictions at once.")
    sql_per_s: float = Field(5.0, gt=0, description="Per key: SQL queries per second.")
    sql_burst: int = Field(20, ge=1, description="Per key: SQL queries at once.")
    auth_per_s: float = Field(2.0, gt=0, description="Per key: /auth calls per second.")
    auth_burst: int = Field(10, ge=1, description="Per key: /auth calls at once.")
    anonymous_per_s: float = Field(
        10.0, gt=0, description="Per client address: calls without credentials per second."
    )
    anonymous_burst: int = Field(50, ge=1, description="... at once.")
    login_per_s: float = Field(
        1.0, gt=0, description="Per client address: sign-in attempts (/auth without a key)."
    )
    login_burst: int = Field(10, ge=1, description="... at once.")
    auth_failures_per_s: float = Field(
        1.0,
        gt=0,
        description="Per client address: refused credentials (401) per second; "
        "when used up, calls with credentials from there get 429 (key guessing).",
    )
    auth_failures_burst: int = Field(50, ge=1, description="... at once.")
    fail_open: bool = Field(
        True, description="Allow calls when the bucket store (Redis) is down, with a warning."
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Peer addresses whose X-Forwarded-For names the client (a load balancer).",
    )
    max_body_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest request body (413 beyond it)."
    )
    max_upload_bytes: int = Field(
        2 * 1024**3,
        ge=1024,
        description="Largest streamed Lake upload (CSV/Parquet/Arrow), counted as it streams.",
    )


class EncryptionSettings(_Section):
    """Encryption at rest of sensitive Lake columns: where the master keys come from."""

    key_provider: Literal["local"] = Field(
        "local", description="local: 0600 key files in key_dir (a KMS adapter plugs in here)."
    )
    key_dir: Path | None = Field(
        None, description="Folder of the master key files; unset = <data_dir>/keys."
    )


class AuditSettings(_Section):
    """The hash-chained audit log: how the gateway queues entries on their way to the DB."""

    enabled: bool = Field(True, description="Audit mutating and denied calls at the gateway.")
    queue_size: int = Field(
        10_000, ge=1, le=1_000_000, description="Entries a replica holds before blocking."
    )
    block_s: float = Field(
        0.25, ge=0, le=10, description="How long a full queue blocks; then counted as dropped."
    )
    batch_size: int = Field(500, ge=1, le=10_000, description="Entries written per transaction.")


class PoolSettings(_Section):
    """Actor counts per service pool."""

    lake: int = Field(1, ge=0, le=64)
    stream: int = Field(1, ge=0, le=64)
    cortex: int = Field(1, ge=0, le=64)
    forge: int = Field(1, ge=0, le=64)


class Settings(BaseSettings):
    """Everything configurable in Datapunk."""

    model_config = SettingsConfigDict(
        env_prefix="DATAPUNK_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    data_dir: Path = Field(Path(".datapunk"), description="Where state lives (DB, lake, token).")
    pipelines_dir: Path = Field(
        Path("configs/pipelines"), description="Pipeline YAML files the gateway can run by name."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO")
    database_url: SecretStr | None = Field(
        None, description="Platform DB; unset = SQLite file in data_dir."
    )
    redis_url: SecretStr | None = Field(None, description="Redis; unset = in-process cache.")
    amqp_url: SecretStr | None = Field(None, description="RabbitMQ; unset = in-cluster queue.")
    consul_url: SecretStr | None = Field(None, description="Consul; unset = Ray's own registry.")
    catalog_url: SecretStr | None = Field(
        None,
        description="Iceberg SQL catalog; unset = the platform DB's PostgreSQL, else SQLite.",
    )
    ray: RaySettings = Field(default_factory=RaySettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    pools: PoolSettings = Field(default_factory=PoolSettings)
    lake: LakeSettings = Field(default_factory=LakeSettings)
    rate_limits: RateLimitSettings = Field(default_factory=RateLimitSettings)
    encryption: EncryptionSettings = Field(default_factory=EncryptionSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    cortex: CortexSettings = Field(default_factory=CortexSettings)

    @field_validator("database_url", "redis_url", "amqp_url", "consul_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: Any) -> Any:
        return None if v in ("", None) else v

    @field_validator("database_url", "redis_url", "amqp_url", "consul_url")
    @classmethod
    def _scheme_allowed(cls, v: SecretStr | None, info: Any) -> SecretStr | None:
        if v is None:
            return v
        allowed = _URL_SCHEMES[info.field_name]
        scheme = v.get_secret_value().split("://", 1)[0]
        if "://" not in v.get_secret_value() or scheme not in allowed:
            raise ValueError(f"URL scheme must be one of {', '.join(allowed)}")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_path = _yaml_path_var.get("path")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if yaml_path is not None:
            sources.append(_YamlSource(settings_cls, yaml_file=yaml_path))
        return tuple(sources)

    # Derived paths: one place decides where each piece of state lives.
    @property
    def data_path(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def ray_token_path(self) -> Path:
        return self.data_path / "ray" / "auth_token"

    @property
    def signing_key_path(self) -> Path:
        return self.auth.signing_key_file or self.data_path / "auth" / "jwt_signing_key"

    @property
    def key_dir(self) -> Path:
        """Where the local key provider keeps master key files (0700 folder, 0600 files)."""
        folder = self.encryption.key_dir
        return folder.expanduser().resolve() if folder else self.data_path / "keys"

    @property
    def state_path(self) -> Path:
        return self.data_path / "platform.json"

    def platform_db_url(self) -> str:
        """The async SQLAlchemy URL of the platform DB."""
        if self.database_url is not None:
            url = self.database_url.get_secret_value()
            if url.startswith("postgresql://"):
                return "postgresql+asyncpg://" + url.removeprefix("postgresql://")
            if url.startswith("sqlite://"):
                return "sqlite+aiosqlite://" + url.removeprefix("sqlite://")
            return url
        return f"sqlite+aiosqlite:///{self.data_path / 'platform.db'}"

    def secret(
        self, name: Literal["redis_url", "amqp_url", "consul_url", "catalog_url"]
    ) -> str | None:
        value: SecretStr | None = getattr(self, name)
        return None if value is None else value.get_secret_value()


def redact_url(url: str) -> str:
    """Hide the password of ``scheme://user:password@host`` for messages and tables."""
    url = re.sub(r"(://[^:/@]*):.*@", r"\1:***@", url)  # greedy: '@' may be in the password
    return re.sub(r"(?i)([?&](?:password|pass|pwd|secret|token)=)[^&]*", r"\1***", url)


class _YamlSource(YamlConfigSettingsSource):
    """The YAML source, refusing a document that is not a mapping with a plain message."""

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        data = super()._read_file(file_path)
        if not isinstance(data, dict):
            raise ValueError(
                f"the file must be a YAML mapping of setting names to values, "
                f"not a {type(data).__name__}"
            )
        return data


# Which YAML file the next load reads; a plain dict keeps the source hook simple
# and avoids reading the environment at import time.
_yaml_path_var: dict[str, Path | None] = {"path": None}


_SECRET_NAME = re.compile(r"(?i)password|secret|token|signing_key|_key$")


def _hide_secrets(key: str, value: Any) -> Any:
    """``value`` fit for an error message: URLs redacted, other secrets replaced."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
        if key not in _URL_SCHEMES:
            return "***"
    if isinstance(value, str) and key in _URL_SCHEMES:
        return redact_url(value)
    if isinstance(value, str) and _SECRET_NAME.search(key.rsplit(".", 1)[-1]):
        return "***"
    if isinstance(value, dict):  # a whole section named in a section-level error
        return {k: _hide_secrets(f"{key}.{k}" if key else str(k), v) for k, v in value.items()}
    return value


def _describe(error: Any) -> tuple[str, Any, str]:
    key = ".".join(str(p) for p in error["loc"])
    value = _hide_secrets(key, error.get("input"))
    return key, value, error["msg"].removeprefix("Value error, ")


def secret_values(model: BaseModel) -> list[str]:
    """Every secret ``model`` holds, as log redaction must know it: the password of a
    URL (the rest of it names a host, which messages need), any other secret whole."""
    found: list[str] = []
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            found.extend(secret_values(value))
        elif isinstance(value, SecretStr):
            plain = value.get_secret_value()
            if "://" in plain:
                password = urlsplit(plain).password
                found.extend([password, unquote(password)] if password else [])
            else:
                found.append(plain)
    return found


def _remembered(settings: Settings) -> Settings:
    remember_secrets(secret_values(settings))
    return settings


def load_settings(config_path: Path | None = None, **overrides: Any) -> Settings:
    """Load settings once, at an entry point; raise ``ConfigError`` naming key and value.

    ``config_path`` defaults to ``$DATAPUNK_CONFIG`` or ``configs/datapunk.yaml`` when it exists.
    """
    if config_path is None:
        env_path = os.environ.get("DATAPUNK_CONFIG")
        config_path = Path(env_path) if env_path else DEFAULT_CONFIG_PATH
        if not env_path and not config_path.exists():  # empty, as for URLs, means unset
            config_path = None
    if config_path is not None and not config_path.is_file():
        raise ConfigError(
            key="DATAPUNK_CONFIG", value=str(config_path), allowed="path of an existing YAML file"
        )
    source = str(config_path) if config_path else "environment"
    _yaml_path_var["path"] = config_path
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        key, value, msg = _describe(exc.errors()[0])
        env_key = "DATAPUNK_" + key.upper().replace(".", "__")
        raise ConfigError(
            key=f"{key} (env {env_key})", value=value, allowed=msg, source=source
        ) from None
    except (OSError, ValueError, yaml.YAMLError) as exc:  # unreadable or malformed YAML
        reason = " ".join(str(exc).split())  # YAML errors span lines; the CLI shows one
        raise ConfigError(key="config file", value=source, allowed=reason) from None
    finally:
        _yaml_path_var["path"] = None
    # consul:// URLs become concrete here, once; imported late: cluster.consul needs us.
    from cluster.consul import resolve_service_urls

    return _remembered(resolve_service_urls(settings))


def export_settings(settings: Settings) -> dict[str, Any]:
    """Plain values (secrets revealed, data_dir absolute) to hand to Ray actors and replicas.

    Ray processes run with another working directory, so relative paths are resolved here,
    at the composition root, before they travel.
    """
    values = settings.model_dump(mode="python", exclude_none=True)
    for name in _URL_SCHEMES:
        secret: SecretStr | None = getattr(settings, name)
        if secret is not None:
            values[name] = secret.get_secret_value()
    values["data_dir"] = str(settings.data_path)
    values["pipelines_dir"] = str(settings.pipelines_dir.expanduser().resolve())
    return values


def settings_from_export(values: dict[str, Any]) -> Settings:
    """Rebuild settings inside a Ray process from ``export_settings``; no file, no env read."""
    try:
        return _remembered(Settings.model_validate(values))
    except ValidationError as exc:
        key, value, msg = _describe(exc.errors()[0])
        raise ConfigError(key=key, value=value, allowed=msg, source="exported settings") from None
