"""Token attacks: every hostile bearer token is a 401 on every protected route, and none reaches a data store.

Requests go through chalice.test.Client in this process, so a botocore hook sees every DynamoDB, SQS, S3 or
SSM call the request makes; a valid token is the positive control that the hook does see them.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from chalicelib.api import middleware
from chalicelib.settings import get_settings
from tests.hardening.common import assert_problem, count_store_calls, protected_routes, request_for

ROUTES = protected_routes()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _json(value: object) -> str:
    return _b64(json.dumps(value).encode())


def forge(header: dict, claims: object, key: bytes | None = None, digest=hashlib.sha256) -> str:
    """A JWT built by hand: any header, any payload, HMAC-signed with `key` (or unsigned)."""
    signing_input = f"{_json(header)}.{_json(claims)}"
    signature = _b64(hmac.new(key, signing_input.encode(), digest).digest()) if key is not None else ""
    return f"{signing_input}.{signature}"


def claims(**changes: object) -> dict:
    now = int(time.time())
    out = {"sub": f"attacker-{uuid.uuid4()}", "iat": now, "exp": now + 600, "roles": ["finance"]}
    out.update(changes)
    return {k: v for k, v in out.items() if v is not None}


def _secret() -> bytes:
    return get_settings().jwt_secret.encode()


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _tampered_payload() -> str:
    header, _, signature = jwt.encode(claims(), _secret(), algorithm="HS256").split(".")
    return f"{header}.{_json(claims(sub='victim'))}.{signature}"


def _flipped_signature() -> str:
    token = jwt.encode(claims(), _secret(), algorithm="HS256")
    return token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]


# Every value is the whole Authorization header (None: the header is absent).
HOSTILE_HS = {
    "missing header": lambda: None,
    "empty header": lambda: "",
    "scheme only": lambda: "Bearer",
    "scheme and spaces": lambda: "Bearer    ",
    "basic credentials": lambda: "Basic " + base64.b64encode(b"admin:admin").decode(),
    "valid token under another scheme": lambda: "Token " + jwt.encode(claims(), _secret(), algorithm="HS256"),
    "bearer twice": lambda: "Bearer Bearer " + jwt.encode(claims(), _secret(), algorithm="HS256"),
    "alg none": lambda: "Bearer " + forge({"alg": "none", "typ": "JWT"}, claims()),
    "alg None": lambda: "Bearer " + forge({"alg": "None", "typ": "JWT"}, claims()),
    "alg NONE with a signature": lambda: "Bearer " + forge({"alg": "NONE"}, claims(), _secret()),
    "alg missing": lambda: "Bearer " + forge({"typ": "JWT"}, claims(), _secret()),
    "HS512 with the right secret": lambda: "Bearer " + forge({"alg": "HS512"}, claims(), _secret(), hashlib.sha512),
    "RS256 from a foreign key": lambda: "Bearer " + jwt.encode(claims(), _rsa_key(), algorithm="RS256"),
    "wrong secret": lambda: "Bearer " + forge({"alg": "HS256"}, claims(), b"not-the-secret-" * 3),
    "empty secret": lambda: "Bearer " + forge({"alg": "HS256"}, claims(), b""),
    "expired": lambda: "Bearer " + jwt.encode(claims(exp=int(time.time()) - 3600), _secret(), algorithm="HS256"),
    "expired past the leeway": lambda: "Bearer " + jwt.encode(claims(exp=int(time.time()) - 30), _secret(),
                                                              algorithm="HS256"),
    "not yet valid": lambda: "Bearer " + jwt.encode(claims(nbf=int(time.time()) + 3600), _secret(),
                                                    algorithm="HS256"),
    "issued in the future": lambda: "Bearer " + jwt.encode(claims(iat=int(time.time()) + 3600), _secret(),
                                                           algorithm="HS256"),
    "no exp": lambda: "Bearer " + forge({"alg": "HS256"}, {"sub": "attacker"}, _secret()),
    "exp not a number": lambda: "Bearer " + forge({"alg": "HS256"}, claims(exp="tomorrow"), _secret()),
    "no sub": lambda: "Bearer " + jwt.encode({"exp": int(time.time()) + 600}, _secret(), algorithm="HS256"),
    "empty sub": lambda: "Bearer " + forge({"alg": "HS256"}, claims(sub=""), _secret()),
    "blank sub": lambda: "Bearer " + forge({"alg": "HS256"}, claims(sub="   "), _secret()),
    "sub not a string": lambda: "Bearer " + forge({"alg": "HS256"}, claims(sub=12345), _secret()),
    "sub of 300 characters": lambda: "Bearer " + jwt.encode(claims(sub="u" * 300), _secret(), algorithm="HS256"),
    "payload not an object": lambda: "Bearer " + forge({"alg": "HS256"}, ["sub", "exp"], _secret()),
    "tampered payload": lambda: "Bearer " + _tampered_payload(),
    "tampered signature": lambda: "Bearer " + _flipped_signature(),
    "signature stripped": lambda: "Bearer " + jwt.encode(claims(), _secret(), algorithm="HS256").rsplit(".", 1)[0],
    "header not json": lambda: "Bearer " + "eyJub3QganNvbg." + _json(claims()) + ".c2ln",
    "garbage": lambda: "Bearer garbage",
    "three empty parts": lambda: "Bearer ..",
    "non-ascii": lambda: "Bearer \u00fc\u00f1\u00ee.\u00e7\u00f8d\u00e9.\u2603",
    "control characters": lambda: "Bearer a\x00b.\x1b[31m.c\r\nX-Injected: 1",
    "oversized garbage": lambda: "Bearer " + "A" * 9000,
    "oversized but well signed": lambda: "Bearer " + jwt.encode(claims(pad="x" * 9000), _secret(), algorithm="HS256"),
    "one megabyte": lambda: "Bearer " + "eyJ" * 350_000,
}


def _send(client, header: str | None, method: str, template: str):
    path, body = request_for(method, template)
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["Authorization"] = header
    return client.http.request(method, path, headers=headers, body=(body or "").encode())


def _assert_rejected_everywhere(client, header: str | None) -> None:
    for method, template in ROUTES:
        with count_store_calls() as store:
            response = _send(client, header, method, template)
        where = f"{method} {template}"
        assert_problem(response.status_code, response.headers, response.body, 401)
        assert response.headers.get("WWW-Authenticate", "").startswith("Bearer"), where
        assert store.calls == [], f"{where} reached a data store with a hostile token: {store.calls}"
        if header:
            secret_part = header.split(" ", 1)[-1].strip()
            assert len(secret_part) < 8 or secret_part.encode() not in response.body, f"{where} echoed the token"


def test_a_valid_token_reaches_the_data_stores_so_the_hook_would_see_a_bypass(client, token_for):
    with count_store_calls() as store:
        response = client.http.get("/api/v1/jobs", headers=token_for().headers)
    assert response.status_code == 200
    assert "dynamodb" in store.services()


def test_there_are_protected_routes_for_every_documented_operation():
    assert len(ROUTES) >= 12
    assert ("POST", "/api/v1/reports/{reportId}/generate") in ROUTES


@pytest.mark.parametrize("attack", sorted(HOSTILE_HS))
def test_hostile_token_is_401_on_every_protected_route_and_reaches_no_data_store(client, attack):
    _assert_rejected_everywhere(client, HOSTILE_HS[attack]())


# --- iss / aud, when configured -----------------------------------------------------------------------------

ISSUER, AUDIENCE = "https://issuer.reports.test", "reports-api"


@pytest.fixture
def strict_claims(monkeypatch):
    strict = dataclasses.replace(get_settings(), jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
    monkeypatch.setattr(middleware, "get_settings", lambda: strict)
    return strict


def _signed(**changes: object) -> str:
    return "Bearer " + jwt.encode(claims(**changes), _secret(), algorithm="HS256")


HOSTILE_ISS_AUD = {
    "no iss or aud": lambda: _signed(),
    "wrong iss": lambda: _signed(iss="https://evil.test", aud=AUDIENCE),
    "no iss": lambda: _signed(aud=AUDIENCE),
    "iss with a trailing slash": lambda: _signed(iss=ISSUER + "/", aud=AUDIENCE),
    "wrong aud": lambda: _signed(iss=ISSUER, aud="another-api"),
    "no aud": lambda: _signed(iss=ISSUER),
    "aud list without ours": lambda: _signed(iss=ISSUER, aud=["a", "b"]),
}


def test_right_issuer_and_audience_are_accepted_when_configured(client, strict_claims):
    response = client.http.get("/api/v1/jobs", headers={"Authorization": _signed(iss=ISSUER, aud=AUDIENCE)})
    assert response.status_code == 200, response.body


@pytest.mark.parametrize("attack", sorted(HOSTILE_ISS_AUD))
def test_wrong_issuer_or_audience_is_401_everywhere_when_configured(client, strict_claims, attack):
    _assert_rejected_everywhere(client, HOSTILE_ISS_AUD[attack]())


# --- RS256 from a JWKS URL ----------------------------------------------------------------------------------

KID = "reports-test-key"


class _Jwks:
    """A JWKS endpoint on 127.0.0.1 serving one RSA public key."""

    def __init__(self) -> None:
        self.key = _rsa_key()
        jwk = {**RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True), "kid": KID, "alg": "RS256", "use": "sig"}
        self.jwk = jwk
        document = json.dumps({"keys": [jwk]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(document)))
                self.end_headers()
                self.wfile.write(document)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def jwks(monkeypatch):
    server = _Jwks()
    # Issuer and audience are required in JWKS mode (see the token_use tests below).
    configured = dataclasses.replace(get_settings(), jwt_jwks_url=server.url, jwt_issuer=ISSUER,
                                     jwt_audience=AUDIENCE)
    monkeypatch.setattr(middleware, "get_settings", lambda: configured)
    yield server
    server.stop()


def _hs_with_public_key(j: _Jwks) -> str:
    return "Bearer " + forge({"alg": "HS256", "kid": KID}, claims(), j.public_pem())


def _hs_with_jwk_json(j: _Jwks) -> str:
    return "Bearer " + forge({"alg": "HS256", "kid": KID}, claims(), json.dumps(j.jwk).encode())


def _foreign_rs256(j: _Jwks, **header: object) -> str:
    return "Bearer " + jwt.encode(claims(), _rsa_key(), algorithm="RS256", headers={"kid": KID, **header})


def _embedded_jwk(j: _Jwks) -> str:
    attacker = _rsa_key()
    own = RSAAlgorithm.to_jwk(attacker.public_key(), as_dict=True)
    return "Bearer " + jwt.encode(claims(), attacker, algorithm="RS256", headers={"kid": KID, "jwk": own})


HOSTILE_JWKS = {
    "HS256 signed with the public key PEM": _hs_with_public_key,
    "HS256 signed with the public JWK": _hs_with_jwk_json,
    "alg none with the right kid": lambda j: "Bearer " + forge({"alg": "none", "kid": KID}, claims()),
    "RS256 from a foreign key with the right kid": _foreign_rs256,
    "RS256 with an embedded jwk header": _embedded_jwk,
    "RS256 with a jku header elsewhere": lambda j: _foreign_rs256(j, jku="http://127.0.0.1:9/jwks.json"),
    "unknown kid": lambda j: "Bearer " + jwt.encode(claims(), j.key, algorithm="RS256", headers={"kid": "other"}),
    "kid with path traversal": lambda j: "Bearer " + jwt.encode(claims(), j.key, algorithm="RS256",
                                                                headers={"kid": "../../../../etc/passwd"}),
    "expired with the right key": lambda j: "Bearer " + jwt.encode(
        claims(exp=int(time.time()) - 3600), j.key, algorithm="RS256", headers={"kid": KID}),
    "HS256 with the local secret": lambda j: "Bearer " + jwt.encode(claims(), _secret(), algorithm="HS256"),
}


def test_rs256_from_the_jwks_key_is_accepted(client, jwks):
    token = jwt.encode(claims(iss=ISSUER, client_id=AUDIENCE, token_use="access"), jwks.key, algorithm="RS256",
                       headers={"kid": KID})
    response = client.http.get("/api/v1/jobs", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.body


@pytest.mark.parametrize("attack", sorted(HOSTILE_JWKS))
def test_hs_rs_confusion_and_foreign_keys_are_401_everywhere_in_jwks_mode(client, jwks, attack):
    _assert_rejected_everywhere(client, HOSTILE_JWKS[attack](jwks))


# --- over the wire ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attack", ["alg none", "oversized garbage", "expired", "control characters"])
def test_hostile_token_is_401_through_chalice_local(api_stack, attack):
    header = HOSTILE_HS[attack]().replace("\r\n", " ")  # a raw CR LF cannot be sent in a header value
    for method, template in ROUTES:
        path, body = request_for(method, template)
        response = requests.request(method, api_stack + path, data=body, timeout=10,
                                    headers={"Authorization": header, "Content-Type": "application/json"})
        assert_problem(response.status_code, dict(response.headers), response.content, 401)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


# --- JWKS mode: issuer and audience required, token_use checked ---------------------------------------------


def _cognito(j: _Jwks, kind: str = "access", **changes: object) -> str:
    """A Cognito-shaped token signed by the JWKS key: access tokens name the app client in `client_id`, ID
    tokens in `aud`."""
    shape = {"iss": ISSUER, "token_use": kind, **({"client_id": AUDIENCE} if kind == "access" else {"aud": AUDIENCE})}
    return "Bearer " + jwt.encode(claims(**{**shape, **changes}), j.key, algorithm="RS256", headers={"kid": KID})


def _configure(monkeypatch, j: _Jwks, **changes: object) -> None:
    configured = dataclasses.replace(get_settings(), **{"jwt_jwks_url": j.url, "jwt_issuer": ISSUER,
                                                        "jwt_audience": AUDIENCE, **changes})
    monkeypatch.setattr(middleware, "get_settings", lambda: configured)


def test_a_cognito_access_token_for_our_client_is_accepted_by_default(client, jwks):
    assert get_settings().jwt_token_use == "access"
    response = client.http.get("/api/v1/jobs", headers={"Authorization": _cognito(jwks)})
    assert response.status_code == 200, response.body


def test_an_id_token_is_accepted_when_configured_for_id_tokens(client, jwks, monkeypatch):
    _configure(monkeypatch, jwks, jwt_token_use="id")
    response = client.http.get("/api/v1/jobs", headers={"Authorization": _cognito(jwks, "id")})
    assert response.status_code == 200, response.body


# Most carry our `aud` too: a check of iss/aud alone would let them in.
HOSTILE_COGNITO_ACCESS = {
    "an ID token": lambda j: _cognito(j, "id"),
    "no token_use": lambda j: _cognito(j, token_use=None, aud=AUDIENCE),
    "token_use of another kind": lambda j: _cognito(j, token_use="refresh", aud=AUDIENCE),
    "another app client": lambda j: _cognito(j, client_id="another-client", aud=AUDIENCE),
    "no client_id": lambda j: _cognito(j, client_id=None, aud=AUDIENCE),
    "another issuer (same pool keys)": lambda j: _cognito(j, iss="https://cognito-idp.test/another-pool",
                                                          aud=AUDIENCE),
    "no issuer": lambda j: _cognito(j, iss=None, aud=AUDIENCE),
}


@pytest.mark.parametrize("attack", sorted(HOSTILE_COGNITO_ACCESS))
def test_only_access_tokens_for_our_client_and_issuer_pass_in_access_mode(client, jwks, attack):
    _assert_rejected_everywhere(client, HOSTILE_COGNITO_ACCESS[attack](jwks))


HOSTILE_COGNITO_ID = {
    "an access token": lambda j: _cognito(j, "access"),
    "no token_use": lambda j: _cognito(j, "id", token_use=None),
    "another audience": lambda j: _cognito(j, "id", aud="another-client"),
    "no audience": lambda j: _cognito(j, "id", aud=None),
    "another issuer": lambda j: _cognito(j, "id", iss="https://cognito-idp.test/another-pool"),
}


@pytest.mark.parametrize("attack", sorted(HOSTILE_COGNITO_ID))
def test_only_id_tokens_for_our_audience_pass_in_id_mode(client, jwks, monkeypatch, attack):
    _configure(monkeypatch, jwks, jwt_token_use="id")
    _assert_rejected_everywhere(client, HOSTILE_COGNITO_ID[attack](jwks))


@pytest.mark.parametrize("missing", [{"jwt_issuer": None}, {"jwt_audience": None},
                                     {"jwt_issuer": None, "jwt_audience": None}, {"jwt_token_use": "both"}])
def test_jwks_mode_without_issuer_or_audience_refuses_every_token_and_says_why_once(client, jwks, monkeypatch,
                                                                                     caplog, missing):
    from chalicelib import auth

    _configure(monkeypatch, jwks, **missing)
    auth._log_misconfiguration_once.cache_clear()
    good_access, good_id = _cognito(jwks), _cognito(jwks, "id")
    with caplog.at_level("ERROR", logger="chalicelib.auth"):
        _assert_rejected_everywhere(client, good_access)
        _assert_rejected_everywhere(client, good_id)
    reasons = [r.getMessage() for r in caplog.records if r.name == "chalicelib.auth"]
    assert len(reasons) == 1, reasons
    names = [n for n in ("JWT_ISSUER", "JWT_AUDIENCE", "JWT_TOKEN_USE") if n in reasons[0]]
    assert names and all(n in reasons[0] for n in names), reasons


def test_jwt_token_use_is_read_from_the_environment(monkeypatch):
    from chalicelib.settings import Settings

    monkeypatch.delenv("JWT_TOKEN_USE", raising=False)
    assert Settings.from_env().jwt_token_use == "access"
    monkeypatch.setenv("JWT_TOKEN_USE", "ID")
    assert Settings.from_env().jwt_token_use == "id"
