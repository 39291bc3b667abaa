"""One error tree for the application; api/problems.py maps it to problem+json.

Every class names its problem type (`slug`, or inherits its parent's) in the registry,
chalicelib/api/problem_types.py, and takes its status and title from there: an unregistered slug fails at import.
"""

from __future__ import annotations

from typing import Any

from chalicelib.api import problem_types


class AppError(Exception):
    """Base of every error the service raises on purpose."""

    slug = "internal-error"
    status = 500
    title = "Internal error"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        entry = problem_types.BY_SLUG.get(cls.slug)  # its own slug, or the one of the class it refines
        if entry is None:
            raise TypeError(f"{cls.__name__}.slug {cls.slug!r} is not in chalicelib/api/problem_types.py")
        cls.status, cls.title = entry.status, entry.title

    def __init__(self, detail: str, **extensions: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extensions = extensions
        self.headers: dict[str, str] = {}


class ValidationFailed(AppError):
    slug = "validation-failed"


class Unauthorized(AppError):
    slug = "unauthorized"


class Forbidden(AppError):
    slug = "forbidden"


class NotFound(AppError):
    slug = "not-found"


class Conflict(AppError):
    slug = "conflict"


class NoLines(AppError):
    """Generating a period with no lines: no job (it would only spend one of the hour's jobs on an empty report)."""

    slug = "no-lines"


class NotAsyncReport(Conflict):
    slug = "not-async-report"


class ActiveJobExists(Conflict):
    slug = "active-job-exists"


class InvalidTransition(Conflict):
    slug = "invalid-transition"


class PreconditionFailed(AppError):
    slug = "precondition-failed"


class PreconditionRequired(AppError):
    slug = "precondition-required"


class PayloadTooLarge(AppError):
    slug = "payload-too-large"


class UnsupportedMediaType(AppError):
    slug = "unsupported-media-type"


class IdempotencyMismatch(AppError):
    slug = "idempotency-key-reused"


class RateLimited(AppError):
    slug = "rate-limited"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.headers["Retry-After"] = str(max(1, retry_after))


class ServiceUnavailable(AppError):
    slug = "service-unavailable"

    def __init__(self, detail: str, retry_after: int = 5, **extensions: Any) -> None:
        super().__init__(detail, **extensions)
        self.headers["Retry-After"] = str(retry_after)
