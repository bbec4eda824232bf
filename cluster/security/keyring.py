"""Master keys: the ``KeyProvider`` port and its local implementation, ``LocalKeyFile``.

Envelope encryption keeps two kinds of key apart. Data keys encrypt table cells; they
are stored in the platform DB only *wrapped* (encrypted) by a master key. Master keys
never leave their provider: the port is ``wrap``/``unwrap``, so a KMS-style provider
(whose keys cannot be read at all) fits it unchanged.

``LocalKeyFile`` keeps each master key as 32 random bytes in its own file,
``<key_dir>/master-<id>.key``, mode 0600 in a 0700 folder, created on first use. The
newest id is the current key (new data keys are wrapped by it); older ones stay until
no data key needs them (``datapunk keys rotate-master --remove-old``). A key file that
others may read is refused, not repaired: a key that may have leaked must be rotated.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cluster.errors import DatapunkError, NotFoundError, PlatformStateError

if TYPE_CHECKING:
    from cluster.settings import Settings

MASTER_KEY_BYTES = 32
NONCE_BYTES = 12
_FILE = re.compile(r"^master-(mk\d{6})\.key$")


class KeyFileError(DatapunkError):
    """A master key file is unsafe or unusable; the platform refuses to use it."""

    code = "key_file"
    http_status = 500

    def __init__(self, *, path: Path, problem: str, fix: str) -> None:
        super().__init__(f"master key file {path}: {problem}; {fix}", path=str(path))


class UnwrapError(DatapunkError):
    """A wrapped data key does not open under the master key it names."""

    code = "key_unwrap_failed"
    http_status = 500

    def __init__(self, *, key_id: str, context: str) -> None:
        super().__init__(
            f"data key for {context} does not open under master key {key_id!r}: the "
            "wrapped key or the master key file was altered or swapped; restore the "
            "original master key file from backup",
            key_id=key_id,
        )


@runtime_checkable
class KeyProvider(Protocol):
    """Master keys by id; wraps and unwraps data keys without revealing a master key.

    ``context`` is bound into each wrapping (AES-GCM associated data), so a wrapped key
    copied to another table's row does not open there.
    """

    def current_key_id(self) -> str:
        """The master key new wrappings use (created on first use)."""
        ...

    def wrap(self, data_key: bytes, context: bytes) -> tuple[str, bytes]:
        """``data_key`` wrapped by the current master key: (master key id, wrapped)."""
        ...

    def unwrap(self, key_id: str, wrapped: bytes, context: bytes) -> bytes:
        """The data key ``wrapped`` holds, opened with master key ``key_id``."""
        ...

    def rotate(self) -> str:
        """Create a new master key, current from now on; return its id."""
        ...

    def key_ids(self) -> list[str]:
        """Every master key id the provider holds, oldest first."""
        ...

    def retire(self, key_id: str) -> None:
        """Destroy master key ``key_id`` (never the current one)."""
        ...


def _aad(key_id: str, context: bytes) -> bytes:
    return b"datapunk:data-key:" + key_id.encode() + b":" + context


class LocalKeyFile:
    """Master keys as 0600 files in one 0700 folder (the embedded default)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._cache: dict[str, bytes] = {}

    def path_of(self, key_id: str) -> Path:
        return self.folder / f"master-{key_id}.key"

    def key_ids(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        found = (_FILE.match(p.name) for p in self.folder.iterdir())
        return sorted(m.group(1) for m in found if m)

    def current_key_id(self) -> str:
        ids = self.key_ids()
        return ids[-1] if ids else self._create(1)

    def rotate(self) -> str:
        ids = self.key_ids()
        return self._create(int(ids[-1][2:]) + 1 if ids else 1)

    def verify(self) -> list[str]:
        """Check every key file's mode and size now; return the ids (startup check)."""
        ids = self.key_ids()
        for key_id in ids:
            self._read(key_id)
        return ids

    def wrap(self, data_key: bytes, context: bytes) -> tuple[str, bytes]:
        key_id = self.current_key_id()
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(self._key(key_id)).encrypt(nonce, data_key, _aad(key_id, context))
        return key_id, nonce + sealed

    def unwrap(self, key_id: str, wrapped: bytes, context: bytes) -> bytes:
        master = self._key(key_id)
        try:
            nonce, sealed = wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:]
            return AESGCM(master).decrypt(nonce, sealed, _aad(key_id, context))
        except (InvalidTag, ValueError):
            raise UnwrapError(key_id=key_id, context=context.decode(errors="replace")) from None

    def retire(self, key_id: str) -> None:
        if key_id == self.current_key_id():
            raise PlatformStateError(
                f"master key {key_id!r} is the current one; rotate first "
                "(`datapunk keys rotate-master`)"
            )
        self._cache.pop(key_id, None)
        path = self.path_of(key_id)
        if path.exists():
            # Overwrite before unlinking: a plain unlink leaves the bytes on disk.
            with path.open("r+b") as handle:
                handle.write(secrets.token_bytes(MASTER_KEY_BYTES))
                handle.flush()
                os.fsync(handle.fileno())
            path.unlink()

    def _key(self, key_id: str) -> bytes:
        if key_id not in self._cache:
            self._cache[key_id] = self._read(key_id)
        return self._cache[key_id]

    def _read(self, key_id: str) -> bytes:
        path = self.path_of(key_id)
        try:
            info = path.stat()
        except FileNotFoundError:
            raise NotFoundError(
                kind="master key",
                name=key_id,
                fix=f"restore {path} from backup; data keys wrapped by it cannot be opened",
            ) from None
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise KeyFileError(
                path=path,
                problem=f"mode {mode:04o} lets other users read it",
                fix=f"`chmod 600 {path}`, then rotate (`datapunk keys rotate-master "
                "--remove-old`): a key others could read may have leaked",
            )
        data = path.read_bytes()
        if len(data) != MASTER_KEY_BYTES:
            raise KeyFileError(
                path=path,
                problem=f"holds {len(data)} bytes, not {MASTER_KEY_BYTES}",
                fix="restore the original file from backup",
            )
        return data

    def _create(self, number: int) -> str:
        """Write ``mk<number>`` complete and 0600, or adopt the one a racing process wrote."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        key_id = f"mk{number:06d}"
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".master-")  # mode 0600
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_bytes(MASTER_KEY_BYTES))
                handle.flush()
                os.fsync(handle.fileno())
            # link() fails if the name exists: a complete file appears atomically, once.
            os.link(tmp, self.path_of(key_id))
        except FileExistsError:
            pass  # another process created this id first; its key is the one
        finally:
            os.unlink(tmp)
        return key_id


def check_key_files(settings: Settings) -> None:
    """At startup: every local master key file must be private (``KeyFileError``)."""
    if settings.encryption.key_provider == "local":
        LocalKeyFile(settings.key_dir).verify()


def build_key_provider(settings: Settings) -> KeyProvider:
    """The provider ``encryption.key_provider`` names; nothing is created until used."""
    return LocalKeyFile(settings.key_dir)
