"""Ray's dashboard and Job API stay on loopback unless token auth guards them, and
``datapunk up`` refuses a Job API that answers a caller without a token."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cluster.errors import PlatformStateError
from cluster.ray_exposure import check_job_api_protected, check_ray_exposure, is_loopback
from cluster.ray_runtime import ensure_token, ray_env
from cluster.settings import Settings, load_settings


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("localhost", True),
        ("::1", True),
        ("0.0.0.0", False),
        ("10.0.0.5", False),
        ("head.internal", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_loopback_binds_need_nothing_more(data_dir: Path) -> None:
    check_ray_exposure(Settings(data_dir=data_dir), {})


def test_an_exposed_dashboard_without_token_auth_is_refused(data_dir: Path) -> None:
    settings = load_settings(data_dir=data_dir, ray={"dashboard_host": "0.0.0.0"})
    with pytest.raises(PlatformStateError, match=r"ray.dashboard_host=0.0.0.0 exposes") as caught:
        check_ray_exposure(settings, {"RAY_AUTH_MODE": "disabled"})
    assert "RAY_AUTH_MODE is 'disabled'" in caught.value.message
    with pytest.raises(PlatformStateError, match="does not exist"):
        check_ray_exposure(
            settings, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(data_dir / "none")}
        )


def test_an_exposed_dashboard_with_a_private_token_is_allowed(data_dir: Path) -> None:
    settings = load_settings(data_dir=data_dir, ray={"dashboard_host": "0.0.0.0"})
    ensure_token(settings.ray_token_path)
    check_ray_exposure(settings, ray_env(settings))  # what `datapunk up` runs Ray with
    settings.ray_token_path.chmod(0o644)
    with pytest.raises(PlatformStateError, match="mode 0644"):
        check_ray_exposure(settings, ray_env(settings))


def _server(status: int) -> type[BaseHTTPRequestHandler]:
    class Dashboard(BaseHTTPRequestHandler):
        seen: list[str] = []

        def do_GET(self) -> None:
            Dashboard.seen.append(self.path)
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"[]")

        def log_message(self, *_args: object) -> None:
            return None

    return Dashboard


@pytest.fixture
def dashboard() -> Iterator[object]:
    servers: list[ThreadingHTTPServer] = []

    def start(status: int) -> tuple[str, type[BaseHTTPRequestHandler]]:
        handler = _server(status)
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", handler

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_an_open_job_api_is_refused(dashboard: object) -> None:
    url, handler = dashboard(200)  # type: ignore[operator]
    with pytest.raises(PlatformStateError, match="answered 200 to a call without a token"):
        check_job_api_protected(url, wait_s=1)
    assert handler.seen == ["/api/jobs/"]


def test_a_job_api_that_wants_a_token_passes(dashboard: object) -> None:
    url, _ = dashboard(401)  # type: ignore[operator]
    assert check_job_api_protected(url, wait_s=1) == 401


def test_no_dashboard_is_no_answer_not_an_error() -> None:
    assert check_job_api_protected("http://127.0.0.1:1", wait_s=0.2) is None
