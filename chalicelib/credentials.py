"""Secrets at first use: SSM Parameter Store (SecureString) in deployed stages, plain settings locally.

A deployed stage names its parameters (`JWT_SECRET_PARAM`, `OPENAI_API_KEY_PARAM`); each value is fetched
through Powertools Parameters when first needed and cached for `secrets_max_age_seconds`, so a rotated
secret is picked up within minutes without a redeploy. Nothing here runs at import: the API function's
cold start never waits on SSM, and only the code path that needs a secret pays for fetching it.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

from chalicelib.errors import ServiceUnavailable
from chalicelib.settings import LOCAL_JWT_SECRET, Settings

log = logging.getLogger(__name__)


class Misconfigured(RuntimeError):
    """A deployed function would fall back to a development default for a secret."""


@lru_cache(maxsize=1)
def _provider() -> Any:
    from aws_lambda_powertools.utilities.parameters import SSMProvider

    from chalicelib import deps

    return SSMProvider(boto3_client=deps.client("ssm"))


def _fetch(name: str, settings: Settings, *, required: bool) -> str | None:
    from aws_lambda_powertools.utilities.parameters import GetParameterError

    try:
        value = _provider().get(name, decrypt=True, max_age=settings.secrets_max_age_seconds)
    except GetParameterError as err:
        code = getattr(err.__context__, "response", {}).get("Error", {}).get("Code")
        if code == "ParameterNotFound" and not required:
            log.warning("secret parameter not found; going on without it", extra={"parameter": name})
            return None
        # The parameter's name is logged, never its value.
        log.error("could not read secret parameter", extra={"parameter": name, "code": code})
        raise ServiceUnavailable("A secret this service needs could not be read; try again shortly.") from err
    return str(value) if value else None


def jwt_secret(settings: Settings) -> str:
    """The HS256 signing secret: the named SSM parameter, else JWT_SECRET (local)."""
    secret = _fetch(settings.jwt_secret_param, settings, required=True) if settings.jwt_secret_param else None
    secret = secret or settings.jwt_secret
    if settings.in_lambda and secret == LOCAL_JWT_SECRET:
        # Fail closed: the local default is published in the README.
        raise Misconfigured("JWT_SECRET_PARAM (or JWT_JWKS_URL) must be set in a deployed stage")
    return secret


def openai_api_key(settings: Settings) -> str | None:
    """The model provider's key: the named SSM parameter, else OPENAI_API_KEY; None means the rules categorizer."""
    if settings.openai_api_key_param:
        return _fetch(settings.openai_api_key_param, settings, required=False)
    return settings.openai_api_key


def reset() -> None:
    """Forget cached values and the client (tests)."""
    _provider.cache_clear()
