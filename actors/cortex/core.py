"""Cortex service core: registry-driven inference (issue 7).

For now, identity and health only.
"""

from __future__ import annotations

from actors.base import ServiceCore


class CortexCore(ServiceCore):
    """Plain cortex logic, tested without Ray."""

    service = "cortex"
