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
