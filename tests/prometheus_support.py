"""Debian's Prometheus tools for the metrics tests: found, or installed once per machine.

`make test` installs them first (the Makefile's ``prometheus-tools`` target); running
pytest directly on a fresh Debian machine as root installs them here instead. Where
neither can happen the tests fail with the command to run: a skipped test proves nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs" / "prometheus"
PACKAGES = ("prometheus", "prometheus-alertmanager")
INSTALL = "apt-get install -y --no-install-recommends " + " ".join(PACKAGES)


@dataclass(frozen=True)
class PrometheusTools:
    """Absolute paths of the binaries the tests run."""

    prometheus: str
    promtool: str
    amtool: str


def _find() -> PrometheusTools | None:
    found = [shutil.which(name) for name in ("prometheus", "promtool", "amtool")]
    if None in found:
        return None
    prometheus, promtool, amtool = (str(path) for path in found)
    return PrometheusTools(prometheus=prometheus, promtool=promtool, amtool=amtool)


def _apt_install() -> str:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = INSTALL.split()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        # A fresh machine may have no package lists yet.
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=300)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    return done.stdout[-2000:] + done.stderr[-2000:] if done.returncode else ""


def prometheus_tools() -> PrometheusTools:
    """The tools, installing Debian's packages when they are missing and we can."""
    tools = _find()
    if tools is not None:
        return tools
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail(f"promtool, amtool or prometheus is missing; run `sudo {INSTALL}`")
    failure = _apt_install()
    tools = _find()
    if tools is None:
        pytest.fail(f"`{INSTALL}` did not provide the tools:\n{failure}")
    return tools
