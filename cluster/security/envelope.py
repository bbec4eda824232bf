"""Cell encryption with AES-256-GCM: pure functions, no keys stored, no I/O.

Each non-null value is encrypted on its own with a fresh random 96-bit nonce and stored
as ``nonce || ciphertext || tag`` (binary). Nulls stay null: whether a value exists is
not hidden, what it is, is. The associated data names the table, the column and the
data key, so a ciphertext copied into another column or table fails to decrypt instead
of showing up there.

Values become bytes through their text form (``cast(string)``), which Arrow reads back
exactly for the types ``ENCRYPTABLE`` admits; strings are UTF-8 and binaries as they
are. A random nonce per value keeps one data key safe for about 2**32 encryptions
(NIST SP 800-38D); at that scale, give the column a new data key.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pyarrow as pa
import pyarrow.types as pat
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cluster.errors import DatapunkError, InvalidInputError

DATA_KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
MASK_TEXT = "****"

_ENCRYPTABLE: tuple[Callable[[pa.DataType], bool], ...] = (
    pat.is_string,
    pat.is_large_string,
    pat.is_binary,
    pat.is_large_binary,
    pat.is_fixed_size_binary,
    pat.is_integer,
    pat.is_floating,
    pat.is_boolean,
    pat.is_decimal,
    pat.is_date,
    pat.is_timestamp,
)


class CellDecryptionError(DatapunkError):
    """A stored ciphertext does not open: altered, moved, or under another key."""

    code = "decryption_failed"
    http_status = 500

    def __init__(self, *, table: str, column: str) -> None:
        super().__init__(
            f"an encrypted value of {table}.{column} does not decrypt: it was altered or "
            "copied from another column or table; restore the table from an earlier "
            "snapshot (`datapunk lake history`, `datapunk lake rollback`)",
            table=table,
            column=column,
        )


def new_data_key() -> bytes:
    """A fresh 256-bit AES key from the OS's CSPRNG."""
    return AESGCM.generate_key(bit_length=256)


def column_aad(table: str, column: str, key_id: str) -> bytes:
    """Associated data binding a ciphertext to one column of one table and its key."""
    return f"datapunk:lake:{table}:{column}:{key_id}".encode()


def encryptable(arrow_type: pa.DataType) -> bool:
    """Whether values of ``arrow_type`` can be encrypted (primitive, text-round-trippable)."""
    return any(check(arrow_type) for check in _ENCRYPTABLE)


def check_encryptable(table: str, column: str, arrow_type: pa.DataType) -> None:
    if not encryptable(arrow_type):
        raise InvalidInputError(
            field=f"sensitive column {table}.{column}",
            value=str(arrow_type),
            allowed="a primitive type (string, binary, number, boolean, decimal, date, "
            "timestamp); time and nested columns cannot be encrypted",
        )


def _plain_bytes(values: pa.Array) -> list[bytes | None]:
    if pat.is_binary(values.type) or pat.is_large_binary(values.type):
        return values.to_pylist()
    if pat.is_fixed_size_binary(values.type):
        return values.to_pylist()
    text = values if _is_text(values.type) else values.cast(pa.string())
    return [None if v is None else v.encode("utf-8") for v in text.to_pylist()]


def _is_text(arrow_type: pa.DataType) -> bool:
    return bool(pat.is_string(arrow_type) or pat.is_large_string(arrow_type))


def encrypt_array(values: pa.Array | pa.ChunkedArray, key: bytes, aad: bytes) -> pa.Array:
    """Each non-null value sealed on its own; a binary array of the same length."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    cipher = AESGCM(key)
    sealed: list[bytes | None] = []
    for plain in _plain_bytes(values):
        if plain is None:
            sealed.append(None)
            continue
        nonce = os.urandom(NONCE_BYTES)
        sealed.append(nonce + cipher.encrypt(nonce, plain, aad))
    return pa.array(sealed, type=pa.binary())


def decrypt_array(
    sealed: pa.Array | pa.ChunkedArray,
    key: bytes,
    aad: bytes,
    arrow_type: pa.DataType,
    *,
    table: str,
    column: str,
) -> pa.Array:
    """The values ``encrypt_array`` sealed, as ``arrow_type`` again."""
    if isinstance(sealed, pa.ChunkedArray):
        sealed = sealed.combine_chunks()
    cipher = AESGCM(key)
    plain: list[bytes | None] = []
    try:
        for blob in sealed.to_pylist():
            if blob is None:
                plain.append(None)
            else:
                plain.append(cipher.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad))
    except (InvalidTag, ValueError):
        raise CellDecryptionError(table=table, column=column) from None
    if pat.is_binary(arrow_type) or pat.is_large_binary(arrow_type):
        return pa.array(plain, type=arrow_type)
    if pat.is_fixed_size_binary(arrow_type):
        return pa.array(plain, type=arrow_type)
    text = pa.array([None if v is None else v.decode("utf-8") for v in plain], type=pa.string())
    return text if arrow_type == pa.string() else text.cast(arrow_type)


def mask_array(sealed: pa.Array | pa.ChunkedArray, arrow_type: pa.DataType) -> pa.Array:
    """What a caller without decrypt sees: ``****`` for text, null for anything else."""
    if isinstance(sealed, pa.ChunkedArray):
        sealed = sealed.combine_chunks()
    if _is_text(arrow_type):
        masked = [MASK_TEXT if valid else None for valid in sealed.is_valid().to_pylist()]
        return pa.array(masked, type=arrow_type)
    return pa.nulls(len(sealed), type=arrow_type)
