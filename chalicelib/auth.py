"""Bearer-token checks with PyJWT: HS256 with a shared secret, or RS256 from a JWKS URL.

Tenants. A token's tenant is its `tenant` claim, or Cognito's `custom:tenant`; a token without one is a tenant
of its own, keyed by its `sub`. Everything a user stores or reads is keyed by two strings derived here:

- the tenant key (`Principal.tenant`): `tenant#<claim>` (with `%` and `#` escaped), or the bare `sub` for a
  token without a tenant. It scopes what a tenant shares: report configurations, roles, the vendor cache and
  the seen-vendor notes.
- the owner key (`Principal.user_id`): `<tenant key>#<sub>`, or the bare `sub` for a token without a tenant.
  It scopes what one user owns: expense lines, jobs, idempotency keys, rate windows and active-job locks.

A token without a tenant keeps the keys a user had before tenants existed (its `sub`), so its data stays its
own. The two kinds never meet: a token without a tenant whose `sub` starts with `tenant#` is refused, so no
bare `sub` can spell another tenant's key, and the escaping makes `<tenant>#<sub>` read back one way only.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from functools import lru_cache

import jwt

from chalicelib import credentials
from chalicelib.errors import Unauthorized
from chalicelib.settings import Settings

log = logging.getLogger(__name__)

MAX_TOKEN_BYTES = 8192
MAX_TENANT_CHARS = 128
TENANT_PREFIX = "tenant#"
TOKEN_USES = ("access", "id")


@dataclass(frozen=True)
class Principal:
    user_id: str  # the owner key (module docstring): what lines, jobs, rate windows and locks are keyed by
    roles: frozenset[str]  # granted within `tenant` only
    tenant: str  # the tenant key (module docstring): what reports, roles and the vendor cache are scoped by
    sub: str


def _escape(text: str) -> str:
    # `%` first, so an escaped `#` (%23) cannot be confused with a literal "%23" in the claim.
    return text.replace("%", "%25").replace("#", "%23")


def tenant_key(tenant_claim: str | None, sub: str) -> str:
    """The key a tenant's shared data is stored under: see the module docstring."""
    return f"{TENANT_PREFIX}{_escape(tenant_claim)}" if tenant_claim is not None else sub


def owner_key(tenant_claim: str | None, sub: str) -> str:
    """The key one user's own data is stored under: see the module docstring."""
    return f"{tenant_key(tenant_claim, sub)}#{sub}" if tenant_claim is not None else sub


def system_owner(tenant: str) -> str:
    """The owner key of a tenant's own jobs (a `cache_warm` job: no user started it), shown to its `admin`s.

    `tenant#%system%<escaped tenant key>` is no user's owner key: a member's is `tenant#<T>#<sub>` (a second
    `#`, which this never has) and a bare `sub` never starts with `tenant#`; `%s` is no escape `_escape` writes,
    so it is no tenant key either.
    """
    if not tenant:
        raise ValueError("a tenant is required")
    return f"{TENANT_PREFIX}%system%{_escape(tenant)}"


ADMIN_ROLE = "admin"  # sees (and may cancel) its tenant's own jobs (system_owner)


def sub_of(owner: str, tenant: str) -> str:
    """The `sub` inside an owner key of `tenant` (the inverse of `owner_key`)."""
    return owner if owner == tenant else owner.removeprefix(f"{tenant}#")


def tenant_scope(tenant: str) -> str:
    """A fixed-length stand-in for a tenant key inside other keys (vendor cache, schedule markers).

    A tenant key can be up to ~0.5 KB; a DynamoDB key has room for 2 KB in all, beside a vendor name.
    128 bits of SHA-256: two tenants sharing one is out of reach.
    """
    if not tenant:
        raise ValueError("a tenant is required")  # never one shared scope for callers that forgot theirs
    return hashlib.sha256(tenant.encode("utf-8")).hexdigest()[:32]


def _tenant_claim(claims: dict) -> str | None:
    values = [claims[name] for name in ("tenant", "custom:tenant") if name in claims]
    if not values:
        return None
    if len(values) == 2 and values[0] != values[1]:
        raise Unauthorized("The bearer token names two different tenants.")
    value = values[0]
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TENANT_CHARS or not value.isprintable():
        raise Unauthorized(f"The bearer token's tenant must be a printable string of 1 to {MAX_TENANT_CHARS} "
                           "characters.")
    return value


@lru_cache(maxsize=4)
def _jwks_client(url: str) -> jwt.PyJWKClient:
    return jwt.PyJWKClient(url, cache_keys=True, lifespan=3600)


def jwks_misconfiguration(settings: Settings) -> str | None:
    """Why JWKS mode cannot accept any token, or None when it can.

    A JWKS URL alone would accept every token the user pool signs, for any app client and any issuer that
    happens to share keys; so issuer and audience (the app client id) are required, and the token kind must
    be one Cognito issues.
    """
    missing = [name for name, value in (("JWT_ISSUER", settings.jwt_issuer), ("JWT_AUDIENCE", settings.jwt_audience))
               if not value]
    if missing:
        return f"JWT_JWKS_URL is set but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not"
    if settings.jwt_token_use not in TOKEN_USES:
        return f"JWT_TOKEN_USE must be one of {', '.join(TOKEN_USES)}, not {settings.jwt_token_use!r}"
    return None


@lru_cache(maxsize=8)
def _log_misconfiguration_once(reason: str) -> None:
    # Every request is refused while this lasts: one line per process says why, not one per request.
    log.error("refusing every bearer token: %s", reason)


def _decode(token: str, settings: Settings) -> dict:
    if not settings.jwt_jwks_url:
        key = credentials.jwt_secret(settings)
        # The algorithm list is fixed by configuration, never taken from the token:
        # that is what stops `alg: none` and HS/RS confusion.
        return jwt.decode(token, key, algorithms=["HS256"], audience=settings.jwt_audience,
                          issuer=settings.jwt_issuer, leeway=5,
                          options={"require": ["exp", "sub"], "verify_aud": bool(settings.jwt_audience)})
    reason = jwks_misconfiguration(settings)
    if reason:
        _log_misconfiguration_once(reason)
        raise Unauthorized("The service cannot verify bearer tokens: its token settings are incomplete.")
    key = _jwks_client(settings.jwt_jwks_url).get_signing_key_from_jwt(token).key
    # Cognito ID tokens carry the app client id in `aud`; access tokens carry none, and the id in `client_id`.
    id_token = settings.jwt_token_use == "id"
    claims = jwt.decode(token, key, algorithms=["RS256"], issuer=settings.jwt_issuer, leeway=5,
                        audience=settings.jwt_audience if id_token else None,
                        options={"require": ["exp", "sub", "iss", "token_use"] + (["aud"] if id_token else []),
                                 "verify_aud": id_token})
    if claims.get("token_use") != settings.jwt_token_use:
        raise Unauthorized(f"The bearer token must be a Cognito {settings.jwt_token_use} token.")
    if not id_token and claims.get("client_id") != settings.jwt_audience:
        raise Unauthorized("The bearer token was issued to another client.")
    return claims


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
        claims = _decode(token, settings)
    except jwt.ExpiredSignatureError as err:
        raise Unauthorized("The bearer token has expired.") from err
    except (jwt.PyJWTError, ValueError) as err:
        raise Unauthorized("The bearer token is invalid.") from err
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub.strip() or len(sub) > 256:
        raise Unauthorized("The bearer token has no valid 'sub' claim.")
    tenant = _tenant_claim(claims)
    if tenant is None and sub.startswith(TENANT_PREFIX):
        # Such a sub would spell the keys of tenant members (module docstring); Cognito subs are UUIDs.
        raise Unauthorized(f"A bearer token without a tenant cannot have a 'sub' starting with '{TENANT_PREFIX}'.")
    roles = claims.get("roles", claims.get("cognito:groups", []))
    if not isinstance(roles, list):
        roles = []
    return Principal(owner_key(tenant, sub), frozenset(r for r in roles if isinstance(r, str)),
                     tenant=tenant_key(tenant, sub), sub=sub)


def mint_token(settings: Settings, sub: str, roles: list[str] | None = None, ttl_seconds: int = 86400,
               tenant: str | None = None) -> str:
    """A token the local stack prints and tests use; never called by deployed code paths."""
    import time

    claims: dict = {"sub": sub, "roles": roles or [], "iat": int(time.time()), "exp": int(time.time()) + ttl_seconds}
    if tenant is not None:
        claims["tenant"] = tenant
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")
