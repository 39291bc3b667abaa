"""Idempotency-Key for job creation, on Powertools' idempotency utility (24 h, per user)."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyPersistenceLayerError,
    IdempotencyValidationError,
)

from chalicelib import deps
from chalicelib.errors import Conflict, IdempotencyMismatch, ServiceUnavailable, ValidationFailed
from chalicelib.settings import get_settings

Response = dict[str, Any]


def check_key(key: str) -> str:
    if not (0 < len(key) <= 255) or not key.isascii() or not key.isprintable():
        raise ValidationFailed("Idempotency-Key: must be 1-255 printable ASCII characters.", field="Idempotency-Key")
    return key


@lru_cache(maxsize=1)
def _store() -> DynamoDBPersistenceLayer:
    return DynamoDBPersistenceLayer(table_name=get_settings().table("idempotency"),
                                    boto3_client=deps.client("dynamodb"))


def _wrapped(run: Callable[[], Response]) -> Callable[..., Response]:
    # The key is (user, Idempotency-Key); the body is validated so that the same key
    # with another body is refused instead of answered with the first response.
    config = IdempotencyConfig(event_key_jmespath="[userId, key]", payload_validation_jmespath="body",
                               expires_after_seconds=24 * 3600, raise_on_no_idempotency_key=True)

    def create(request: dict[str, Any]) -> Response:
        return run()

    return idempotent_function(create, data_keyword_argument="request", persistence_store=_store(), config=config)


def once(user_id: str, key: str, body: Any, run: Callable[[], Response]) -> Response:
    """Run `run` once per (user, key) within 24 h and replay its response after that."""
    try:
        return _wrapped(run)(request={"userId": user_id, "key": check_key(key), "body": body})
    except IdempotencyValidationError as err:
        raise IdempotencyMismatch("This Idempotency-Key was used with a different request body.") from err
    except IdempotencyAlreadyInProgressError as err:
        raise Conflict("A request with this Idempotency-Key is still being processed; retry shortly.") from err
    except IdempotencyPersistenceLayerError as err:
        raise ServiceUnavailable("The idempotency store is unavailable; no job was created.") from err
