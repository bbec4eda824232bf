"""TLS for the gateway: the settings, the certificate checks, and HTTPS served by Ray
Serve's own HTTP server function with the options ``datapunk up`` passes it.

Serve 2.60 terminates TLS in its Python proxy (uvicorn) only; its HAProxy mode has none,
and the shared Ray test cluster runs HAProxy, so HTTPS is proven here on Serve's
``start_asgi_http_server`` (what its proxy calls) rather than on a deployment.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cluster.errors import ConfigError
from cluster.platform import gateway_url
from cluster.security.tls import check_tls_files, client_verify, serve_tls_options
from cluster.settings import Settings, load_settings
from serve_apps.gateway.asgi import GatewayDeps, create_app
from tests.clock import FakeClock
from tests.unit.gateway_support import authenticator, key_store


def write_pair(
    folder: Path, name: str = "gw", *, days: int = 30, start: datetime | None = None
) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost and its key (0600)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "datapunk test")])
    begin = start or datetime.now(UTC) - timedelta(days=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(begin)
        .not_valid_after(begin + timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(IPv4Address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def tls_settings(data_dir: Path, cert: Path, key: Path, **gateway: object) -> Settings:
    return load_settings(
        data_dir=data_dir,
        gateway={"tls_cert_file": cert, "tls_key_file": key, "ha_proxy": False, **gateway},
    )


# --- settings and checks ------------------------------------------------------------------


def test_cert_and_key_come_together(data_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"tls_cert_file is set but gateway\.tls_key_file is not"):
        load_settings(data_dir=data_dir, gateway={"tls_cert_file": "/x.crt", "ha_proxy": False})
    with pytest.raises(ConfigError, match=r"tls_key_file is set but gateway\.tls_cert_file is not"):
        load_settings(data_dir=data_dir, gateway={"tls_key_file": "/x.key", "ha_proxy": False})
    assert Settings(data_dir=data_dir).gateway.tls is False


def test_haproxy_mode_has_no_tls_and_says_so(data_dir: Path, tmp_path: Path) -> None:
    cert, key = write_pair(tmp_path)
    with pytest.raises(ConfigError, match=r"gateway\.ha_proxy=false"):
        load_settings(data_dir=data_dir, gateway={"tls_cert_file": cert, "tls_key_file": key})


def test_a_good_pair_gives_serve_its_options(data_dir: Path, tmp_path: Path) -> None:
    cert, key = write_pair(tmp_path)
    settings = tls_settings(data_dir, cert, key, host="127.0.0.1", port=8443)
    assert serve_tls_options(settings) == {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    assert gateway_url(settings) == "https://127.0.0.1:8443"
    assert serve_tls_options(Settings(data_dir=data_dir)) == {}


def test_a_missing_file_is_named(data_dir: Path, tmp_path: Path) -> None:
    cert, _ = write_pair(tmp_path)
    settings = tls_settings(data_dir, cert, tmp_path / "nope.key")
    with pytest.raises(ConfigError, match=r"gateway.tls_key_file=.*nope.key.*existing PEM"):
        check_tls_files(settings)


def test_a_key_of_another_certificate_is_refused(data_dir: Path, tmp_path: Path) -> None:
    cert, _ = write_pair(tmp_path, "one")
    _, other_key = write_pair(tmp_path, "two")
    with pytest.raises(ConfigError, match="private key of tls_cert_file"):
        check_tls_files(tls_settings(data_dir, cert, other_key))


def test_a_key_others_can_read_is_refused(data_dir: Path, tmp_path: Path) -> None:
    cert, key = write_pair(tmp_path)
    key.chmod(0o644)
    with pytest.raises(ConfigError, match="mode 0644"):
        check_tls_files(tls_settings(data_dir, cert, key))


def test_an_expired_certificate_is_refused(data_dir: Path, tmp_path: Path) -> None:
    cert, key = write_pair(tmp_path, days=1, start=datetime.now(UTC) - timedelta(days=10))
    with pytest.raises(ConfigError, match="renew it"):
        check_tls_files(tls_settings(data_dir, cert, key))


def test_a_bad_key_password_is_not_echoed(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(
            data_dir=data_dir,
            gateway={"tls_cert_file": "/c", "tls_key_password": "hunter2-secret"},
        )
    assert "hunter2-secret" not in caught.value.message


# --- HTTPS through Serve's HTTP server ----------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    yield write_pair(tmp_path)


async def test_serve_serves_the_gateway_over_https(data_dir: Path, pair: tuple[Path, Path]) -> None:
    from ray.serve._private.http_util import start_asgi_http_server
    from ray.serve.config import HTTPOptions

    cert, key = pair
    port = _free_port()
    settings = tls_settings(data_dir, cert, key, port=port)
    clock = FakeClock()
    async with key_store(settings, clock) as store:
        token, _ = await store.create("analyst")
        app = create_app(GatewayDeps(authenticator=authenticator(store, clock)))
        options = HTTPOptions(host="127.0.0.1", port=port, **serve_tls_options(settings))
        task, server = await start_asgi_http_server(
            app, options, event_loop=asyncio.get_running_loop()
        )
        try:
            for _ in range(100):
                if server.started:
                    break
                await asyncio.sleep(0.05)
            base = gateway_url(settings)
            assert base.startswith("https://")
            async with httpx.AsyncClient(verify=client_verify(settings)) as https:
                health = await https.get(f"{base}/healthz")
                assert health.status_code == 200
                who = await https.get(f"{base}/api/v1/whoami", headers={"X-API-Key": token})
                assert who.json()["role"] == "analyst"
            async with httpx.AsyncClient() as untrusting:  # system CAs only
                with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                    await untrusting.get(f"{base}/healthz")
            async with httpx.AsyncClient() as plain:  # no TLS: the server will not talk
                with pytest.raises(httpx.RemoteProtocolError):
                    await plain.get(f"http://127.0.0.1:{port}/healthz")
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, timeout=10)


def test_our_probes_trust_the_configured_certificate(
    data_dir: Path, pair: tuple[Path, Path]
) -> None:
    cert, key = pair
    verify = client_verify(tls_settings(data_dir, cert, key))
    assert isinstance(verify, ssl.SSLContext)
    assert verify.verify_mode == ssl.CERT_REQUIRED
    assert client_verify(Settings(data_dir=data_dir)) is True
