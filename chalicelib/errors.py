"""One error tree for the application; api/problems.py maps it to problem+json."""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    """Base of every error the service raises on purpose."""

    status = 500
    title = "Internal error"

    def __init__(self, detail: str, **extensions: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extensions = extensions
        self.headers: dict[str, str] = {}


class ValidationFailed(AppError):
    status = 400
    title = "Invalid request"


class Unauthorized(AppError):
    status = 401
    title = "Unauthorized"


class Forbidden(AppError):
    status = 403
    title = "Forbidden"


class NotFound(AppError):
    status = 404
    title = "Not found"


class Conflict(AppError):
    status = 409
    title = "Conflict"


class NotAsyncReport(Conflict):
    pass


class ActiveJobExists(Conflict):
    pass


class InvalidTransition(Conflict):
    pass


class PayloadTooLarge(AppError):
    status = 413
    title = "Payload too large"


class UnsupportedMediaType(AppError):
    status = 415
    title = "Unsupported media type"


class IdempotencyMismatch(AppError):
    status = 422
    title = "Idempotency-Key reused with another request"


class RateLimited(AppError):
    status = 429
    title = "Too many requests"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.headers["Retry-After"] = str(max(1, retry_after))


class ServiceUnavailable(AppError):
    status = 503
    title = "Service unavailable"

    def __init__(self, detail: str, retry_after: int = 5) -> None:
        super().__init__(detail)
        self.headers["Retry-After"] = str(retry_after)
