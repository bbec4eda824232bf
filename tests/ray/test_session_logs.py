"""Datapunk's JSON log lines from a Ray worker land in the session log folder, where
``datapunk logs`` (``LogTail``) finds them by service, with their request id."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import ray

from cluster.cli_logs import LogTail


@ray.remote(num_cpus=0)
def log_from_a_worker(request_id: str) -> None:
    from cluster.logging import bind_request_id, configure_logging

    configure_logging("INFO", service="probe")  # what every actor and replica does
    bind_request_id(request_id)
    logging.getLogger("cluster.probe").info("hello from a worker", extra={"rows": 3})


def test_worker_json_lines_are_read_back_from_the_session_logs(ray_cluster: None) -> None:
    # The driver's view of this session's folder: <temp dir>/session_*/logs.
    node = ray._private.worker._global_node
    assert node is not None
    folder = Path(node.get_logs_dir_path())
    tail = LogTail(folder, service="probe")
    tail.poll()  # skip whatever earlier tests logged
    ray.get(log_from_a_worker.remote("req-session-logs"))
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    while not found and time.monotonic() < deadline:
        found = tail.poll()
        time.sleep(0.2)
    [record] = found
    assert record["message"] == "hello from a worker"
    assert record["request_id"] == "req-session-logs"
    assert record["rows"] == 3
