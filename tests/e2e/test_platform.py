"""`datapunk up`, real HTTP calls and Ray's own CLI against it, then `datapunk down`.

Tests run in file order against one platform; the last one takes it down and proves
nothing is left behind.
"""

from __future__ import annotations

import json
import stat
import subprocess
import textwrap
import time
from pathlib import Path

import httpx
import psutil

from cluster.platform_state import PlatformState
from cluster.ray_runtime import marked_processes
from tests.e2e.conftest import BIN, PORTS, Platform, run


def _key(platform: Platform, role: str) -> str:
    created = platform.datapunk("keys", "create", "--role", role, "--json")
    assert created.returncode == 0, created.stderr
    return str(json.loads(created.stdout)["key"])


def test_up_prints_where_things_are_and_keeps_the_token_private(platform: Platform) -> None:
    assert platform.gateway in platform.up_output
    assert f"{platform.gateway}/docs" in platform.up_output
    assert f"127.0.0.1:{PORTS['dashboard']}" in platform.up_output
    token = platform.data_dir / "ray" / "auth_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert f"RAY_AUTH_TOKEN_PATH={token}" in platform.up_output


def test_up_again_is_a_no_op_that_says_so(platform: Platform) -> None:
    again = platform.datapunk("up")
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stdout
    assert httpx.get(f"{platform.gateway}/healthz").status_code == 200


def test_calls_are_authenticated_and_authorised(platform: Platform) -> None:
    admin, analyst = _key(platform, "admin"), _key(platform, "analyst")
    with httpx.Client(base_url=platform.gateway, timeout=10) as client:
        assert client.get("/api/v1/whoami").status_code == 401
        me = client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {admin}"})
        assert me.status_code == 200 and me.json()["role"] == "admin"
        denied = client.get("/api/v1/keys", headers={"X-API-Key": analyst})
        assert denied.status_code == 403
        assert denied.json()["error"]["request_id"] == denied.headers["x-request-id"]


def test_a_key_revoked_over_rest_stops_working(platform: Platform) -> None:
    admin = {"Authorization": f"Bearer {_key(platform, 'admin')}"}
    with httpx.Client(base_url=platform.gateway, timeout=10) as client:
        minted = client.post("/api/v1/keys", json={"role": "service"}, headers=admin)
        assert minted.status_code == 201
        service = {"X-API-Key": minted.json()["key"]}
        assert client.get("/api/v1/whoami", headers=service).status_code == 200
        revoked = client.delete(f"/api/v1/keys/{minted.json()['id']}", headers=admin)
        assert revoked.status_code == 200 and revoked.json()["revoked_at"]
        assert client.get("/api/v1/whoami", headers=service).status_code == 401


def test_lake_tables_through_the_gateway_and_the_actor_pool(platform: Platform) -> None:
    engineer = {"Authorization": f"Bearer {_key(platform, 'engineer')}"}
    analyst = {"X-API-Key": _key(platform, "analyst")}
    table = "e2e.orders"
    with httpx.Client(base_url=f"{platform.gateway}/api/v1/lake", timeout=60) as lake:
        assert lake.post("/namespaces", json={"name": "e2e"}, headers=engineer).status_code == 201
        created = lake.post(
            "/tables",
            json={
                "name": table,
                "columns": [
                    {"name": "id", "type": "long", "required": True},
                    {"name": "region", "type": "string"},
                    {"name": "amount", "type": "double"},
                ],
                "partition_by": ["region"],
            },
            headers=engineer,
        )
        assert created.status_code == 201, created.text
        rows = [{"id": 1, "region": "eu", "amount": 10.0}, {"id": 2, "region": "us", "amount": 5.5}]
        first = lake.post(f"/tables/{table}/append", json=rows, headers=engineer)
        assert first.status_code == 200, first.text
        csv = "id,region,amount\n3,eu,2.5\n"
        upload = lake.post(
            f"/tables/{table}/append",
            content=csv,
            headers={**engineer, "Content-Type": "text/csv"},
        )
        assert upload.status_code == 200, upload.text
        assert lake.post(f"/tables/{table}/append", json=rows, headers=analyst).status_code == 403
        sql = lake.post(
            "/sql",
            json={
                "query": f"SELECT region, sum(amount) AS total FROM {table} "
                "GROUP BY region ORDER BY region"
            },
            headers=analyst,
        )
        assert sql.status_code == 200, sql.text
        assert sql.json() == [{"region": "eu", "total": 12.5}, {"region": "us", "total": 5.5}]
        before = lake.post(
            f"/tables/{table}/query",
            json={"snapshot_id": first.json()["snapshot_id"], "columns": ["id"]},
            headers=analyst,
        )
        assert sorted(r["id"] for r in before.json()) == [1, 2]


def test_a_pipeline_runs_as_a_ray_job_submitted_through_the_gateway(platform: Platform) -> None:
    inbox = Path(platform.env["DATAPUNK_PIPELINES_DIR"]).parent / "inbox"
    for part in range(2):  # two files: two splits, processed as Ray tasks in the job
        rows = "\n".join(f"{part * 10 + i},{i * 1.5}" for i in range(5))
        (inbox / f"orders-{part}.csv").write_text("order_id,amount\n" + rows + "\n,9.9\n")
    engineer = {"Authorization": f"Bearer {_key(platform, 'engineer')}"}
    with httpx.Client(base_url=f"{platform.gateway}/api/v1", timeout=30) as api:
        assert api.get("/pipelines", headers=engineer).json() == ["orders"]
        assert api.post("/pipelines/nope/runs", headers=engineer).status_code == 404
        submitted = api.post("/pipelines/orders/runs", headers=engineer)
        assert submitted.status_code == 202, submitted.text
        job = submitted.json()["submission_id"]
        status = _wait_for_job(api, engineer, job)
        assert status["status"] == "SUCCEEDED", status
        records = api.get("/pipelines/orders/records", headers=engineer).json()
        counts = records[0]["counts"]
        assert records[0]["status"] == "succeeded"
        assert counts == {"read": 12, "written": 10, "quarantined": 2, "filtered": 0}
        total = api.post(
            "/lake/sql",
            json={"query": "SELECT count(*) AS n FROM e2e_ingest.orders"},
            headers=engineer,
        )
        assert total.json() == [{"n": 10}]


def _wait_for_job(api: httpx.Client, headers: dict[str, str], job: str) -> dict:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        status = api.get(f"/pipelines/orders/runs/{job}", headers=headers).json()
        if status["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        time.sleep(1)
    raise AssertionError(f"job {job} did not finish: {status}")


def test_status_reports_every_component_healthy(platform: Platform) -> None:
    report = platform.datapunk("status", "--json")
    assert report.returncode == 0, report.stdout + report.stderr
    body = json.loads(report.stdout)
    assert body["ready"] is True
    assert set(body["checks"]) >= {"database", "cache", "lake pool", "forge pool"}
    assert body["serve"]["applications"]["gateway"]["status"] == "RUNNING"


def test_rays_own_cli_needs_the_token_and_works_with_the_export_line(
    platform: Platform,
) -> None:
    env = platform.ray_env()
    assert run([str(BIN / "ray"), "status"], env, 60).returncode == 0
    no_token = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
    assert run([str(BIN / "ray"), "status"], no_token, 60).returncode != 0


def test_ray_job_submit_runs_the_projects_python(platform: Platform, tmp_path: Path) -> None:
    (tmp_path / "probe.py").write_text(
        textwrap.dedent(
            """
            import sys
            import cluster
            print("PROBE", sys.executable, cluster.__version__)
            """
        )
    )
    job = run(
        [
            str(BIN / "ray"),
            "job",
            "submit",
            "--working-dir",
            str(tmp_path),
            "--",
            "python",
            "probe.py",
        ],
        platform.ray_env(),
        180,
    )
    assert job.returncode == 0, job.stdout + job.stderr
    probe = next(line for line in job.stdout.splitlines() if line.startswith("PROBE"))
    assert str(BIN) in probe


STREAM = """
name: e2e_clicks
source: {kind: queue}
schema: {user: string, page: string, ts: double}
time_column: ts
key_by: [user]
partitions: 2
actor_cpus: 0
operators:
  - kind: window
    name: per_10s
    window: {kind: tumbling, size_s: 10}
    aggregations: [{fn: count, as: clicks}, {column: page, fn: distinct, as: pages}]
sinks:
  - {kind: lake, from: per_10s, table: stream.e2e_clicks_per_10s}
  - {kind: latest, from: per_10s}
  - {kind: subscribe, from: per_10s}
checkpoint: {interval_s: 0.2}
"""


def _stream_status(platform: Platform) -> dict:
    shown = platform.datapunk("stream", "status", "e2e_clicks", "--json")
    assert shown.returncode == 0, shown.stderr
    return dict(json.loads(shown.stdout))


def test_a_stream_takes_events_over_http_and_pushes_windows_to_subscribers(
    platform: Platform, tmp_path: Path
) -> None:
    import asyncio

    import websockets

    spec = tmp_path / "clicks.yaml"
    spec.write_text(STREAM)
    deployed = platform.datapunk("stream", "deploy", str(spec))
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    service, analyst = _key(platform, "service"), _key(platform, "analyst")
    ws_url = platform.gateway.replace("http://", "ws://")

    async def first_window() -> dict:
        url = f"{ws_url}/api/v1/streams/e2e_clicks/subscribe?api_key={analyst}&outputs=per_10s"
        async with websockets.connect(url) as socket:
            while True:
                frame = json.loads(await asyncio.wait_for(socket.recv(), 60))
                if frame.get("output") == "per_10s":
                    return dict(frame)

    async def scenario() -> dict:
        waiting = asyncio.create_task(first_window())
        await asyncio.sleep(1.0)
        events = [{"user": f"u{i % 3}", "page": f"p{i % 4}", "ts": i * 0.5} for i in range(100)]
        async with httpx.AsyncClient(base_url=platform.gateway, timeout=30) as client:
            refused = await client.post(
                "/api/v1/streams/e2e_clicks/events", json=events, headers={"X-API-Key": analyst}
            )
            assert refused.status_code == 403
            bad = await client.post(
                "/api/v1/streams/e2e_clicks/events",
                json=[{"user": "u1", "page": "p", "ts": "yesterday"}],
                headers={"X-API-Key": service},
            )
            assert bad.status_code == 422, bad.text
            sent = await client.post(
                "/api/v1/streams/e2e_clicks/events",
                json=events,
                headers={"X-API-Key": service, "Idempotency-Key": "batch-1"},
            )
            assert sent.status_code == 202, sent.text
            assert sent.json()["accepted"] == 100
        return await waiting

    frame = asyncio.run(scenario())
    assert frame["rows"] and {"user", "window_start", "clicks", "pages"} <= set(frame["rows"][0])
    deadline = time.monotonic() + 60
    while (status := _stream_status(platform))["live"].get("events_in", 0) < 100:
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
    assert status["state"] == "running"
    assert status["queue"]["ready"] == 0
    # Workers push their metrics to Ray's exporter every few seconds: poll, not one read.
    deadline = time.monotonic() + 30
    while True:
        metrics = httpx.get(f"http://127.0.0.1:{PORTS['metrics']}/metrics", timeout=10).text
        if "datapunk_stream_events_total{" in metrics and 'topology="e2e_clicks"' in metrics:
            break
        assert time.monotonic() < deadline, "no datapunk_stream_events_total for e2e_clicks"
        time.sleep(1.0)
    tail = platform.datapunk("stream", "tail", "e2e_clicks", "--no-follow", "--json")
    assert tail.returncode == 0 and "per_10s" in tail.stdout, tail.stderr
    stopped = platform.datapunk("stream", "stop", "e2e_clicks")
    assert stopped.returncode == 0, stopped.stderr
    listed = json.loads(platform.datapunk("stream", "ls", "--json").stdout)
    assert [(r["name"], r["state"]) for r in listed] == [("e2e_clicks", "stopped")]


def test_down_leaves_no_ray_or_serve_process_behind(platform: Platform) -> None:
    state = PlatformState.load(platform.data_dir / "platform.json")
    assert state is not None and state.marker
    before = marked_processes(state.marker)
    assert any("raylet" in p.name() for p in before)
    down = platform.datapunk("down")
    assert down.returncode == 0, down.stderr
    assert marked_processes(state.marker) == []
    assert not (platform.data_dir / "platform.json").exists()
    listening = {
        c.laddr.port for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN
    }
    assert not listening & set(PORTS.values())
    again = platform.datapunk("down")
    assert again.returncode == 0 and "not running" in again.stdout
    with_no_platform = subprocess.run(
        [str(BIN / "datapunk"), "status"], env=platform.env, capture_output=True, text=True
    )
    assert with_no_platform.returncode == 2
