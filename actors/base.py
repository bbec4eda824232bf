"""The plain core every service actor wraps: identity, health and uptime.

Each service (lake, stream, cortex, forge) subclasses ``ServiceCore`` with its logic;
its Ray shell (``actors/<service>/actor.py``) only unpacks arguments and calls it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, ClassVar

from cluster.settings import Settings


class ServiceCore:
    """Logic of one service replica, testable without Ray."""

    service: ClassVar[str] = "service"

    def __init__(self, settings: Settings, index: int, now: Callable[[], float] = time.time):
        self.settings = settings
        self.index = index
        self._now = now
        self.started_at = now()

    def health(self) -> dict[str, Any]:
        """What a readiness probe and `datapunk status` show for this replica."""
        return {
            "service": self.service,
            "index": self.index,
            "status": "ok",
            "pid": os.getpid(),
            "uptime_s": round(self._now() - self.started_at, 3),
        }
