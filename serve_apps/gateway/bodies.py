"""The base of every request body the gateway reads.

Unknown fields are refused (422 naming them) rather than ignored: a client cannot slip
in a field the server sets itself (``created_by``, a digest, a lock time), and a
misspelt optional field is an error, not a silent default (OWASP API3:2023).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictBody(BaseModel):
    """A request body: only the declared fields."""

    model_config = ConfigDict(extra="forbid")
