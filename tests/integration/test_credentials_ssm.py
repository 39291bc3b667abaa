"""Credentials read from SSM parameters (moto's), with their cache and its expiry. The offline rules stay in
tests/unit/test_credentials.py."""

from __future__ import annotations

import dataclasses
import time
import uuid

import jwt
import pytest

from chalicelib import credentials, deps
from chalicelib.auth import principal_from_header
from chalicelib.errors import ServiceUnavailable, Unauthorized
from chalicelib.settings import LOCAL_JWT_SECRET, get_settings
from tests.iam import recording


@pytest.fixture
def param():
    """A fresh SecureString parameter name; `param(value)` (re)writes it."""
    name = f"/{get_settings().prefix}/test-{uuid.uuid4().hex[:8]}"
    ssm = deps.client("ssm")
    credentials.reset()

    def put(value: str) -> str:
        ssm.put_parameter(Name=name, Value=value, Type="SecureString", Overwrite=True)
        return name

    yield put
    credentials.reset()
    try:
        ssm.delete_parameter(Name=name)
    except ssm.exceptions.ParameterNotFound:
        pass


def token(secret: str) -> str:
    return "Bearer " + jwt.encode({"sub": "user-1", "exp": int(time.time()) + 600}, secret, algorithm="HS256")


def test_the_jwt_secret_comes_from_its_parameter_and_signs_tokens(param):
    settings = dataclasses.replace(get_settings(), jwt_secret_param=param("s3cret-from-ssm-" + "x" * 32))
    assert principal_from_header(token("s3cret-from-ssm-" + "x" * 32), settings).user_id == "user-1"
    with pytest.raises(Unauthorized):
        principal_from_header(token(LOCAL_JWT_SECRET), settings)  # the local default no longer verifies


def test_a_parameter_is_read_once_then_served_from_cache_until_max_age(param):
    settings = dataclasses.replace(get_settings(), openai_api_key_param=param("sk-first"))
    with recording() as calls:
        assert credentials.openai_api_key(settings) == "sk-first"
        assert credentials.openai_api_key(settings) == "sk-first"
    assert [a for a, _ in calls] == ["ssm:GetParameter"]
    param("sk-rotated")
    assert credentials.openai_api_key(settings) == "sk-first"  # cached for secrets_max_age_seconds


def test_a_rotated_parameter_is_picked_up_once_the_cached_value_expires(param):
    settings = dataclasses.replace(get_settings(), openai_api_key_param=param("sk-first"), secrets_max_age_seconds=0)
    assert credentials.openai_api_key(settings) == "sk-first"
    param("sk-rotated")  # a round trip later: past the (zero) max age
    assert credentials.openai_api_key(settings) == "sk-rotated"


def test_a_missing_model_key_parameter_means_the_rules_categorizer():
    settings = dataclasses.replace(get_settings(), openai_api_key="sk-local",
                                   openai_api_key_param=f"/{get_settings().prefix}/absent-{uuid.uuid4().hex}")
    credentials.reset()
    assert credentials.openai_api_key(settings) is None  # the parameter, when named, wins over the variable


def test_a_missing_jwt_secret_parameter_is_503_not_the_local_default():
    settings = dataclasses.replace(get_settings(), jwt_secret_param=f"/{get_settings().prefix}/absent-secret")
    credentials.reset()
    with pytest.raises(ServiceUnavailable):
        credentials.jwt_secret(settings)
