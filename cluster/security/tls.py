"""HTTPS for the gateway: checking the configured certificate and key, and the options
Ray Serve takes for them.

Serve 2.60 terminates TLS in its own proxy (uvicorn, ``http_options`` ``ssl_certfile``
/ ``ssl_keyfile``); its HAProxy mode has no TLS, which ``GatewaySettings`` refuses at
load time. Everything here runs at ``datapunk up`` on the head, before Serve starts, so a
missing file, a key that does not match its certificate, an expired certificate or a
key others can read is one clear error rather than a proxy that never comes up.
"""

from __future__ import annotations

import ssl
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from cluster.errors import ConfigError
from cluster.settings import Settings


def _problem(key: str, value: Path, allowed: str) -> ConfigError:
    return ConfigError(key=f"gateway.{key}", value=str(value), allowed=allowed)


def _readable(key: str, path: Path) -> Path:
    path = path.expanduser().resolve()
    if not path.is_file():
        raise _problem(key, path, "an existing PEM file")
    try:
        path.read_bytes()
    except OSError as exc:
        raise _problem(key, path, f"a file Datapunk can read ({exc.strerror})") from None
    return path


def check_tls_files(settings: Settings, now: datetime | None = None) -> tuple[Path, Path]:
    """The certificate and key paths, checked: readable, key private, pair matching,
    certificate valid now. ``ConfigError`` names the setting and the fix otherwise."""
    gateway = settings.gateway
    if gateway.tls_cert_file is None or gateway.tls_key_file is None:
        raise ConfigError(
            key="gateway.tls_cert_file", value=None, allowed="set with gateway.tls_key_file"
        )
    cert = _readable("tls_cert_file", gateway.tls_cert_file)
    key = _readable("tls_key_file", gateway.tls_key_file)
    mode = stat.S_IMODE(key.stat().st_mode)
    if mode & 0o007:
        raise _problem(
            "tls_key_file", key, f"a private key others cannot read (mode {mode:04o}): chmod 600"
        )
    password = gateway.tls_key_password
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(
            cert, key, password=password.get_secret_value() if password else None
        )
    except (ssl.SSLError, ValueError) as exc:
        reason = str(getattr(exc, "reason", None) or exc)
        raise _problem(
            "tls_key_file",
            key,
            f"the PEM private key of tls_cert_file, which it is not ({reason}); "
            "an encrypted key needs gateway.tls_key_password",
        ) from None
    leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    moment = now or datetime.now(UTC)
    if not leaf.not_valid_before_utc <= moment <= leaf.not_valid_after_utc:
        raise _problem(
            "tls_cert_file",
            cert,
            f"a certificate valid now (it is valid {leaf.not_valid_before_utc:%Y-%m-%d} to "
            f"{leaf.not_valid_after_utc:%Y-%m-%d}); renew it",
        )
    return cert, key


def serve_tls_options(settings: Settings) -> dict[str, Any]:
    """What ``serve.start(http_options=...)`` needs for HTTPS; empty when TLS is off."""
    if not settings.gateway.tls:
        return {}
    cert, key = check_tls_files(settings)
    options: dict[str, Any] = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    password = settings.gateway.tls_key_password
    if password is not None:
        options["ssl_keyfile_password"] = password.get_secret_value()
    return options


def gateway_scheme(settings: Settings) -> str:
    return "https" if settings.gateway.tls else "http"


def client_verify(settings: Settings) -> ssl.SSLContext | bool:
    """How our own probes (``up``, ``status``) verify the gateway: the system's CAs plus
    the configured certificate itself, so a self-signed one is trusted by its owner."""
    if not settings.gateway.tls or settings.gateway.tls_cert_file is None:
        return True
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=str(settings.gateway.tls_cert_file.expanduser()))
    return context
