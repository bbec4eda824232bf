"""The uvicorn baseline of ``bench/gateway.py``: the gateway app on plain uvicorn.

Builds the very app the Serve replica serves (``create_app`` over a
``CachedAuthenticator`` on the platform DB's ``KeyStore``, as in
``serve_apps.gateway.deployment``) from settings exported to a JSON file, and runs it
on one uvicorn worker with uvicorn's defaults (uvloop and httptools when installed).
Uvicorn's access log is off: the app logs what it must itself, and a line per request
on a terminal would measure the terminal.

Without arguments it does nothing and exits 0 (``make bench`` runs every bench/*.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from fastapi import FastAPI

from cluster.db.engine import create_engine, session_factory
from cluster.logging import configure_logging
from cluster.security.auth_cache import CachedAuthenticator
from cluster.security.keys import KeyStore
from cluster.settings import Settings, settings_from_export
from serve_apps.gateway.asgi import GatewayDeps, create_app


def _utcnow() -> datetime:
    return datetime.now(UTC)


def build_app(settings: Settings) -> FastAPI:
    """The replica's app and authenticator, key routes included; no readiness checks."""
    store = KeyStore(session_factory(create_engine(settings)), now=_utcnow)
    authenticator = CachedAuthenticator(
        store, ttl_s=settings.gateway.auth_cache_ttl_s, now=time.monotonic, utcnow=_utcnow
    )
    deps = GatewayDeps(
        authenticator=authenticator, key_store=store, forget_key=authenticator.invalidate
    )
    return create_app(deps)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings-json", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    if not argv:
        print("bench/_uvicorn_gateway.py: helper of bench/gateway.py; nothing to do on its own")
        return 0
    import uvicorn

    args = _parse(argv)
    settings = settings_from_export(json.loads(args.settings_json.read_text()))
    configure_logging(settings.log_level, service="gateway-uvicorn")
    uvicorn.run(
        build_app(settings), host=args.host, port=args.port, access_log=False, log_level="warning"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
