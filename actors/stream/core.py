"""Stream service core: event-time windows and pattern detection (issue 5).

For now, identity and health only.
"""

from __future__ import annotations

from actors.base import ServiceCore


class StreamCore(ServiceCore):
    """Plain stream logic, tested without Ray."""

    service = "stream"
