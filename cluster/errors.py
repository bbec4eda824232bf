"""Typed errors that explain themselves.

Every error names the value that was wrong and the fix. The gateway maps each class
to an HTTP status through ``http_status`` and renders
``{"error": {"code", "message", "request_id"}}``; the CLI prints ``message`` on one
line and exits non-zero.
"""

from __future__ import annotations

from typing import Any, ClassVar

from cluster.logging import redact


class DatapunkError(Exception):
    """Base class: a stable machine ``code``, an HTTP status and a human message."""

    code: ClassVar[str] = "internal_error"
    http_status: ClassVar[int] = 500

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses take keyword-only fields, which default exception pickling cannot
        # replay; Ray ships errors between processes, so rebuild from message + fields.
        return (_rebuild, (type(self), self.message, self.fields))

    def to_dict(self, request_id: str | None = None) -> dict[str, Any]:
        message = redact(self.message)  # an error body never carries a secret
        return {"error": {"code": self.code, "message": message, "request_id": request_id}}


class ConfigError(DatapunkError):
    """A setting has a value that is not allowed."""

    code = "invalid_config"
    http_status = 500

    def __init__(self, *, key: str, value: Any, allowed: str, source: str = "settings") -> None:
        super().__init__(
            f"invalid setting {key}={value!r} ({source}): {allowed}",
            key=key,
            value=value,
            allowed=allowed,
        )


class ServiceUnavailableError(DatapunkError):
    """An external service (database, Redis, RabbitMQ, Ray, Consul) cannot be reached."""

    code = "service_unavailable"
    http_status = 503

    def __init__(self, *, service: str, target: str, reason: str, fix: str) -> None:
        super().__init__(
            f"{service} at {target} is unreachable: {reason}. Fix: {fix}",
            service=service,
            target=target,
            reason=reason,
        )


class AuthenticationError(DatapunkError):
    """No credentials, or credentials that do not identify anyone."""

    code = "unauthenticated"
    http_status = 401


class PermissionDeniedError(DatapunkError):
    """The caller is known but its role lacks the permission."""

    code = "permission_denied"
    http_status = 403

    def __init__(self, *, role: str, permission: str) -> None:
        super().__init__(
            f"role {role!r} lacks permission {permission!r}; "
            "use a key whose role grants it (see `datapunk keys create --role`)",
            role=role,
            permission=permission,
        )


class NotFoundError(DatapunkError):
    """A named thing does not exist."""

    code = "not_found"
    http_status = 404

    def __init__(self, *, kind: str, name: str, fix: str = "") -> None:
        hint = f"; {fix}" if fix else ""
        super().__init__(f"{kind} {name!r} does not exist{hint}", kind=kind, name=name)


class InvalidInputError(DatapunkError):
    """A request or command argument has a value that is not allowed."""

    code = "invalid_input"
    http_status = 422

    def __init__(self, *, field: str, value: Any, allowed: str) -> None:
        super().__init__(
            f"invalid {field}={value!r}: {allowed}", field=field, value=value, allowed=allowed
        )


class PlatformStateError(DatapunkError):
    """The platform is not in a state where the command makes sense."""

    code = "platform_state"
    http_status = 409


def _rebuild(cls: type[DatapunkError], message: str, fields: dict[str, Any]) -> DatapunkError:
    error = cls.__new__(cls)
    DatapunkError.__init__(error, message, **fields)
    return error
