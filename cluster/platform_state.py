"""What ``datapunk up`` started, kept in the data directory for ``down`` and ``status``."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class PlatformState:
    """One running platform: its Ray addresses, gateway URL and the head's process marker."""

    gcs_address: str
    dashboard_url: str
    gateway_url: str
    started_head: bool
    marker: str | None
    started_at: float

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)  # atomic: a crash never leaves half a state file

    @classmethod
    def load(cls, path: Path) -> PlatformState | None:
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):
            # A corrupt file says nothing reliable; treat the platform as not started.
            return None

    @staticmethod
    def clear(path: Path) -> None:
        path.unlink(missing_ok=True)
