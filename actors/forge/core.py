"""Forge service core: training, tuning and the model registry (issue 6).

For now, identity and health only.
"""

from __future__ import annotations

from actors.base import ServiceCore


class ForgeCore(ServiceCore):
    """Plain forge logic, tested without Ray."""

    service = "forge"
