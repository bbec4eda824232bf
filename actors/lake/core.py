"""Lake service core: Iceberg tables, time travel, SQL (issue 3).

For now, identity and health only.
"""

from __future__ import annotations

from actors.base import ServiceCore


class LakeCore(ServiceCore):
    """Plain lake logic, tested without Ray."""

    service = "lake"
