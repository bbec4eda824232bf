"""Secrets never reach a log line, an error body, a CLI error or ``datapunk status``.

Each test makes something fail *with* a secret in it (a database URL with its password,
a bearer token, an API key, a JWT) and reads what a person or a log collector would see.
"""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import pytest
from typer.testing import CliRunner

from cluster.cli import app as cli_app
from cluster.db.engine import check_database
from cluster.errors import ConfigError, DatapunkError, ServiceUnavailableError
from cluster.logging import configure_logging, redact
from cluster.platform_state import PlatformState
from cluster.security.keys import generate_api_key
from cluster.security.rbac import Role
from cluster.settings import load_settings
from serve_apps.gateway.asgi import GatewayDeps, create_app
from tests.clock import FakeClock
from tests.unit.gateway_support import authenticator, client, error_of, key_store

PASSWORD = "Sup3r-s3cret-pw"
DB_URL = f"postgresql://datapunk:{PASSWORD}@127.0.0.1:1/platform"
REDIS_URL = f"redis://:{PASSWORD}@127.0.0.1:1/0"


def _secrets() -> tuple[str, str]:
    api_key, _ = generate_api_key()
    token = jwt.encode({"sub": "u_1", "exp": 2_000_000_000}, "k" * 32, algorithm="HS256")
    return api_key, token


# --- the redactor ---------------------------------------------------------------------------


def test_token_like_strings_are_redacted_whoever_owns_them() -> None:
    api_key, token = _secrets()
    text = (
        f"Authorization: Bearer {token}; X-API-Key: {api_key}; url {DB_URL}; "
        f"dsn amqp://guest:guest@rabbit:5672/?password=p4ss&x=1"
    )
    shown = redact(text)
    for secret in (token, api_key, PASSWORD, "guest:guest", "p4ss"):
        assert secret not in shown, shown
    assert "postgresql://datapunk:***@127.0.0.1:1/platform" in shown
    assert "x=1" in shown


def test_ordinary_text_is_left_alone() -> None:
    text = (
        "Authorization header must be 'Bearer <api key>'; key prefix dp_Ab3dE9z; "
        "see http://127.0.0.1:8000/docs"
    )
    assert redact(text) == text


def test_configured_secret_values_are_redacted_anywhere(data_dir: Path) -> None:
    load_settings(data_dir=data_dir, redis_url=REDIS_URL, gateway={"port": 8001})
    assert redact(f"AUTH failed with {PASSWORD} (what a driver might echo)") == (
        "AUTH failed with *** (what a driver might echo)"
    )


# --- logs -----------------------------------------------------------------------------------


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    configure_logging("DEBUG", service="test")
    buffer = io.StringIO()
    handler = logging.getLogger("cluster").handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    yield buffer


def test_log_lines_hold_no_secret(log_lines: io.StringIO) -> None:
    api_key, token = _secrets()
    log = logging.getLogger("cluster.test")
    log.warning("cannot reach %s", DB_URL)
    log.info("request", extra={"authorization": f"Bearer {token}", "key": api_key})
    try:
        raise ConnectionError(f"connect to {REDIS_URL} failed; sent key {api_key}")
    except ConnectionError:
        log.exception("unexpected")
    text = log_lines.getvalue()
    assert text.count("\n") == 3
    for secret in (PASSWORD, api_key, token):
        assert secret not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["message"] == "cannot reach postgresql://datapunk:***@127.0.0.1:1/platform"
    assert "ConnectionError" in lines[2]["exc"]


# --- errors ---------------------------------------------------------------------------------


async def test_an_unreachable_database_error_hides_the_password(data_dir: Path) -> None:
    settings = load_settings(data_dir=data_dir, database_url=DB_URL)
    with pytest.raises(ServiceUnavailableError) as caught:
        await check_database(settings, timeout_s=2)
    assert PASSWORD not in caught.value.message
    assert PASSWORD not in json.dumps(caught.value.to_dict("r1"))


def test_a_config_error_hides_secrets(data_dir: Path) -> None:
    with pytest.raises(ConfigError) as bad_scheme:
        load_settings(data_dir=data_dir, redis_url=f"http://u:{PASSWORD}@h/0")
    assert PASSWORD not in bad_scheme.value.message
    with pytest.raises(ConfigError) as bad_section:
        load_settings(
            data_dir=data_dir,
            gateway={"tls_cert_file": "/c.pem", "tls_key_password": PASSWORD},
        )
    assert PASSWORD not in bad_section.value.message
    assert "tls_key_password': '***'" in bad_section.value.message


async def test_gateway_error_bodies_hold_no_secret(data_dir: Path, log_lines: io.StringIO) -> None:
    api_key, token = _secrets()

    async def database() -> None:
        raise RuntimeError(f"could not connect to {DB_URL}")

    clock = FakeClock()
    settings = load_settings(data_dir=data_dir)
    async with key_store(settings, clock) as store:
        admin, _ = await store.create(Role.ADMIN)
        deps = GatewayDeps(authenticator=authenticator(store, clock), readiness={"db": database})
        app = create_app(deps)

        @app.get("/boom/typed")
        async def typed() -> None:
            raise DatapunkError(f"upstream refused Bearer {token} and {api_key} at {DB_URL}")

        @app.get("/boom/untyped")
        async def untyped() -> None:
            raise RuntimeError(f"driver said: {DB_URL}")

        async with client(app) as http:
            ready = await http.get("/readyz")
            typed_reply = await http.get("/boom/typed")
            untyped_reply = await http.get("/boom/untyped")
            status = await http.get("/api/v1/platform/status", headers={"X-API-Key": admin})
    assert ready.status_code == 503
    assert "postgresql://datapunk:***@127.0.0.1:1/platform" in ready.json()["checks"]["db"]
    assert error_of(typed_reply)["message"].startswith("upstream refused Bearer ***")
    assert error_of(untyped_reply)["message"] == "internal error; quote the request id"
    for reply in (ready, typed_reply, untyped_reply, status):
        for secret in (PASSWORD, api_key, token):
            assert secret not in reply.text
    logged = log_lines.getvalue()
    assert "driver said" in logged
    assert PASSWORD not in logged


# --- the command line -----------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.chdir(tmp_path)  # no configs/datapunk.yaml here
    monkeypatch.setenv("DATAPUNK_DATA_DIR", str(tmp_path / "state"))
    return CliRunner()


def test_a_cli_error_hides_the_password(cli: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATAPUNK_DATABASE_URL", DB_URL)
    result = cli.invoke(cli_app, ["db", "current"])
    assert result.exit_code == 2
    assert "unreachable" in result.output
    assert PASSWORD not in result.output


class _LeakyGateway(BaseHTTPRequestHandler):
    """A real HTTP server standing in for a gateway whose check quotes a URL in full."""

    def do_GET(self) -> None:
        body = json.dumps(
            {"status": "unavailable", "checks": {"database": f"OperationalError: {DB_URL}"}}
        ).encode()
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        return None


def test_status_output_hides_secrets(cli: CliRunner, tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LeakyGateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        PlatformState(
            gcs_address="127.0.0.1:1",  # no Ray head: status says so
            dashboard_url="http://127.0.0.1:1",
            gateway_url=f"http://127.0.0.1:{port}",
            started_head=False,
            marker=None,
            started_at=0.0,
        ).save(tmp_path / "state" / "platform.json")
        for args in (["status", "--json"], ["status"]):
            result = cli.invoke(cli_app, args)
            assert result.exit_code == 1, result.output  # not ready
            assert "OperationalError" in result.output
            assert PASSWORD not in result.output
    finally:
        server.shutdown()
        server.server_close()
