"""Model artifacts on disk: ``<data_dir>/forge/artifacts/<name>/<version>/model.pt``.

A file is written to a temporary name beside its final one, flushed to disk, then
renamed into place, so a reader sees the whole artifact or none. Its SHA-256 is
recorded in the registry, and every read checks it: a file changed after
registration is refused with ``ArtifactIntegrityError`` instead of being loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import ClassVar

from cluster.errors import DatapunkError, NotFoundError
from cluster.settings import Settings

__all__ = ["ARTIFACT_FILE", "ArtifactIntegrityError", "ArtifactStore", "artifacts_root", "sha256"]

ARTIFACT_FILE = "model.pt"


def artifacts_root(settings: Settings) -> Path:
    """Where the settings' artifacts live: ``<data_dir>/forge/artifacts``."""
    return settings.data_path / "forge" / "artifacts"


def sha256(data: bytes) -> str:
    """The hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


class ArtifactIntegrityError(DatapunkError):
    """An artifact file whose bytes are not the ones the registry recorded."""

    code: ClassVar[str] = "artifact_corrupt"
    http_status: ClassVar[int] = 500

    def __init__(self, *, path: str, expected: str, actual: str) -> None:
        super().__init__(
            f"model artifact {path} has sha256 {actual}, but the registry recorded "
            f"{expected}: the file was changed or damaged after registration; restore it "
            "from a backup or register the model again from its training run",
            path=path,
            expected=expected,
            actual=actual,
        )


class ArtifactStore:
    """Artifact files under ``root``; paths handed out are relative to it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @staticmethod
    def relative_path(name: str, version: int) -> str:
        """The path of version ``version`` of ``name``, relative to the root."""
        return f"{name}/{version}/{ARTIFACT_FILE}"

    def path(self, relative: str) -> Path:
        """The absolute path of ``relative``; refuses one that leaves the root."""
        parts = PurePosixPath(relative).parts
        if not parts or PurePosixPath(relative).is_absolute() or ".." in parts:
            raise ValueError(f"artifact path {relative!r} must stay under {self.root}")
        return self.root.joinpath(*parts)

    def _write(self, relative: str, data: bytes) -> str:
        target = self.path(relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        return sha256(data)

    async def write(self, name: str, version: int, data: bytes) -> str:
        """Write version ``version`` of ``name`` atomically; return its SHA-256."""
        return await asyncio.to_thread(self._write, self.relative_path(name, version), data)

    def _read(self, relative: str, expected: str) -> bytes:
        target = self.path(relative)
        try:
            data = target.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(
                kind="model artifact file",
                name=str(target),
                fix="it was deleted after registration; restore it from a backup or "
                "register the model again",
            ) from None
        actual = sha256(data)
        if actual != expected:
            raise ArtifactIntegrityError(path=str(target), expected=expected, actual=actual)
        return data

    async def read(self, relative: str, expected_sha256: str) -> bytes:
        """The bytes at ``relative``, checked against ``expected_sha256``.

        ``ArtifactIntegrityError`` naming the file when they differ; ``NotFoundError``
        when the file is gone.
        """
        return await asyncio.to_thread(self._read, relative, expected_sha256)
