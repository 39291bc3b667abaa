"""Bearer-token checks with PyJWT: HS256 with a shared secret, or RS256 from a JWKS URL."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import jwt

from chalicelib import credentials
from chalicelib.errors import Unauthorized
from chalicelib.settings import Settings

MAX_TOKEN_BYTES = 8192


@dataclass(frozen=True)
class Principal:
    user_id: str
    roles: frozenset[str]


@lru_cache(maxsize=4)
def _jwks_client(url: str) -> jwt.PyJWKClient:
    return jwt.PyJWKClient(url, cache_keys=True, lifespan=3600)


def principal_from_header(header: str | None, settings: Settings) -> Principal:
    """Verify an `Authorization: Bearer …` header; raise Unauthorized with a reason."""
    if not header:
        raise Unauthorized("A bearer token is required.", tokenPresented=False)
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("The Authorization header must be 'Bearer <token>'.")
    if len(token) > MAX_TOKEN_BYTES:
        raise Unauthorized("The bearer token is too large.")
    try:
        if settings.jwt_jwks_url:
            key = _jwks_client(settings.jwt_jwks_url).get_signing_key_from_jwt(token).key
            algorithms = ["RS256"]
        else:
            key, algorithms = credentials.jwt_secret(settings), ["HS256"]
        # The algorithm list is fixed by configuration, never taken from the token:
        # that is what stops `alg: none` and HS/RS confusion.
        claims = jwt.decode(
            token,
            key,
            algorithms=algorithms,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            options={"require": ["exp", "sub"], "verify_aud": bool(settings.jwt_audience)},
            leeway=5,
        )
    except jwt.ExpiredSignatureError as err:
        raise Unauthorized("The bearer token has expired.") from err
    except (jwt.PyJWTError, ValueError) as err:
        raise Unauthorized("The bearer token is invalid.") from err
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub.strip() or len(sub) > 256:
        raise Unauthorized("The bearer token has no valid 'sub' claim.")
    roles = claims.get("roles", claims.get("cognito:groups", []))
    if not isinstance(roles, list):
        roles = []
    return Principal(sub, frozenset(r for r in roles if isinstance(r, str)))


def mint_token(settings: Settings, sub: str, roles: list[str] | None = None, ttl_seconds: int = 86400) -> str:
    """A token the local stack prints and tests use; never called by deployed code paths."""
    import time

    claims = {"sub": sub, "roles": roles or [], "iat": int(time.time()), "exp": int(time.time()) + ttl_seconds}
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")
