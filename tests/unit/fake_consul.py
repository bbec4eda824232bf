"""A small, real Consul agent stand-in: an HTTP server on 127.0.0.1 (random port).

No Consul binary can be installed where these tests run, so this implements exactly
the endpoints Datapunk uses, as Consul's HTTP API documentation describes them:

- ``GET  /v1/agent/self``                       (``check_consul``'s reachability probe)
- ``PUT  /v1/agent/service/register``           body: ``Name``, ``ID``, ``Address``,
  ``Port``, ``Tags``, ``Meta``, ``Check``/``Checks`` (``CheckID``, ``Name``, ``HTTP``,
  ``Interval``, ``Timeout``, ``TTL``, ``Status``); keys case-insensitive, as the
  agent decodes them (py-consul sends them lower-case)
- ``PUT  /v1/agent/service/deregister/:service_id``  404 ``Unknown service ID`` if absent
- ``PUT  /v1/agent/check/pass/:check_id?note=``, ``.../warn/...``, ``.../fail/...``
- ``PUT  /v1/agent/check/update/:check_id``     body ``{"Status", "Output"}``
- ``GET  /v1/health/service/:service[?passing]`` entries ``{Node, Service, Checks}``
  with the ``X-Consul-Index`` header; ``passing`` keeps entries whose every check
  (the node's ``serfHealth`` included) is ``passing``

Check semantics kept from Consul: a new check is ``critical`` unless ``Status`` is
given; a TTL check returns to ``critical`` when its TTL passes without an update; an
HTTP check is run by the agent (here: when health is read, at most once per
``Interval``): 2xx passing, 429 warning, anything else critical. A check's default
ID is ``service:<service id>``, with ``:<n>`` (1-based) when a service has several.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

NODE = {
    "ID": "0b3c1f2e-0000-4000-8000-000000000001",
    "Node": "fake-node",
    "Address": "127.0.0.1",
    "Datacenter": "dc1",
    "TaggedAddresses": {},
    "Meta": {},
}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """A Go duration as Consul takes them ("10s", "500ms", "1m") in seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"invalid duration {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _keys(body: dict[str, Any]) -> dict[str, Any]:
    """Consul decodes field names case-insensitively (and accepts snake_case)."""
    return {k.lower().replace("_", ""): v for k, v in body.items()}


@dataclass
class FakeCheck:
    check_id: str
    name: str
    service_id: str
    service_name: str
    status: str = "critical"
    output: str = ""
    ttl_s: float | None = None
    http: str | None = None
    interval_s: float = 10.0
    timeout_s: float = 10.0
    updated: float = field(default_factory=time.monotonic)
    last_run: float | None = None

    def current(self) -> str:
        now = time.monotonic()
        if self.ttl_s is not None and now - self.updated > self.ttl_s:
            self.status, self.output = "critical", "TTL expired"
        if self.http and (self.last_run is None or now - self.last_run >= self.interval_s):
            self.last_run = now
            self.status, self.output = _run_http(self.http, self.timeout_s)
        return self.status

    def as_json(self) -> dict[str, Any]:
        return {
            "Node": NODE["Node"],
            "CheckID": self.check_id,
            "Name": self.name,
            "Status": self.current(),
            "Notes": "",
            "Output": self.output,
            "ServiceID": self.service_id,
            "ServiceName": self.service_name,
            "ServiceTags": [],
            "Type": "ttl" if self.ttl_s is not None else "http",
        }


def _run_http(url: str, timeout_s: float) -> tuple[str, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:
            return "passing", f"HTTP GET {url}: {reply.status} Output: {reply.read(200)!r}"
    except urllib.error.HTTPError as exc:
        status = "warning" if exc.code == 429 else "critical"
        return status, f"HTTP GET {url}: {exc.code}"
    except OSError as exc:
        return "critical", f"Get {url}: {exc}"


@dataclass
class FakeConsul:
    """The agent's state; ``with FakeConsul() as agent:`` serves it at ``agent.url``."""

    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    checks: dict[str, FakeCheck] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    index: int = 1
    lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "use FakeConsul as a context manager"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FakeConsul:
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                agent._dispatch(self, "GET")

            def do_PUT(self) -> None:
                agent._dispatch(self, "PUT")

            def log_message(self, *_: Any) -> None:  # quiet test output
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    # --- request handling ---------------------------------------------------------

    def _dispatch(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(handler.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        path = parts.path
        with self.lock:
            self.requests.append((method, path))
            code, body = self._route(method, path, query, raw)
            index = self.index
        payload = (
            b""
            if body is None
            else (body if isinstance(body, bytes) else json.dumps(body).encode())
        )
        handler.send_response(code)
        handler.send_header("Content-Type", "application/json" if code == 200 else "text/plain")
        handler.send_header("X-Consul-Index", str(index))
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def _route(
        self, method: str, path: str, query: dict[str, list[str]], raw: bytes
    ) -> tuple[int, Any]:
        if method == "GET" and path == "/v1/agent/self":
            config = {"Datacenter": "dc1", "NodeName": NODE["Node"], "Version": "1.20.0"}
            return 200, {"Config": config, "Member": {"Name": NODE["Node"]}}
        if method == "PUT" and path == "/v1/agent/service/register":
            return self._register(json.loads(raw or b"{}"))
        if method == "PUT" and path.startswith("/v1/agent/service/deregister/"):
            return self._deregister(unquote(path.rsplit("/", 1)[1]))
        match = re.fullmatch(r"/v1/agent/check/(pass|warn|fail|update)/(.+)", path)
        if method == "PUT" and match:
            verb, check_id = match.group(1), unquote(match.group(2))
            if verb == "update":
                body = _keys(json.loads(raw or b"{}"))
                status, note = body.get("status", ""), body.get("output", "")
            else:
                status = {"pass": "passing", "warn": "warning", "fail": "critical"}[verb]
                note = query.get("note", [""])[0]
            return self._update(check_id, status, note)
        if method == "GET" and path.startswith("/v1/health/service/"):
            passing = "passing" in query and query["passing"][0].lower() not in ("false", "0")
            return 200, self._health(unquote(path.rsplit("/", 1)[1]), passing)
        return 404, b"404 page not found"

    def _register(self, body: dict[str, Any]) -> tuple[int, Any]:
        spec = _keys(body)
        name = spec.get("name")
        if not name:
            return 400, b"Missing service name"
        service_id = spec.get("id") or name
        raw_checks = list(spec.get("checks") or []) + ([spec["check"]] if spec.get("check") else [])
        self._drop(service_id)
        self.services[service_id] = {
            "ID": service_id,
            "Service": name,
            "Tags": spec.get("tags") or [],
            "Address": spec.get("address") or "",
            "Port": spec.get("port") or 0,
            "Meta": spec.get("meta") or {},
        }
        for number, raw_check in enumerate(raw_checks, start=1):
            check = _keys(raw_check)
            check_id = check.get("checkid") or check.get("id") or f"service:{service_id}"
            if not (check.get("checkid") or check.get("id")) and len(raw_checks) > 1:
                check_id += f":{number}"
            if not check.get("ttl") and not check.get("http"):
                return 400, b"Invalid check: TTL or HTTP must be set (others are not faked)"
            if check.get("http") and not check.get("interval"):
                return 400, b"Invalid check: Interval must be > 0 for an HTTP check"
            self.checks[check_id] = FakeCheck(
                check_id=check_id,
                name=check.get("name") or f"Service '{name}' check",
                service_id=service_id,
                service_name=name,
                status=check.get("status") or "critical",
                ttl_s=parse_duration(check["ttl"]) if check.get("ttl") else None,
                http=check.get("http"),
                interval_s=parse_duration(check.get("interval") or "10s"),
                timeout_s=parse_duration(check.get("timeout") or "10s"),
            )
        self.index += 1
        return 200, None

    def _drop(self, service_id: str) -> None:
        self.services.pop(service_id, None)
        for check_id in [c for c, v in self.checks.items() if v.service_id == service_id]:
            del self.checks[check_id]

    def _deregister(self, service_id: str) -> tuple[int, Any]:
        if service_id not in self.services:
            return 404, f'Unknown service ID "{service_id}"'.encode()
        self._drop(service_id)
        self.index += 1
        return 200, None

    def _update(self, check_id: str, status: str, note: str) -> tuple[int, Any]:
        check = self.checks.get(check_id)
        if check is None:
            return 404, f'Unknown check ID "{check_id}"'.encode()
        if check.ttl_s is None:
            return 500, f'CheckID "{check_id}" does not have associated TTL'.encode()
        if status not in ("passing", "warning", "critical"):
            return 400, b"Invalid check status"
        check.status, check.output, check.updated = status, note, time.monotonic()
        self.index += 1
        return 200, None

    def _health(self, name: str, passing: bool) -> list[dict[str, Any]]:
        serf = {
            "Node": NODE["Node"],
            "CheckID": "serfHealth",
            "Name": "Serf Health Status",
            "Status": "passing",
            "ServiceID": "",
            "ServiceName": "",
            "Type": "",
        }
        entries = []
        for service_id, service in self.services.items():
            if service["Service"] != name:
                continue
            checks = [serf] + [
                c.as_json() for c in self.checks.values() if c.service_id == service_id
            ]
            if passing and any(c["Status"] != "passing" for c in checks):
                continue
            entries.append({"Node": dict(NODE), "Service": dict(service), "Checks": checks})
        return entries
