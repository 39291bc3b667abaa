"""Secrets from SSM Parameter Store (against the moto server): used, cached, and never a silent default."""

from __future__ import annotations

import dataclasses

import pytest

from chalicelib import credentials
from chalicelib.settings import LOCAL_JWT_SECRET, get_settings
from tests.iam import recording


def test_locally_the_variables_are_used_and_ssm_is_never_called():
    with recording() as calls:
        assert credentials.jwt_secret(get_settings()) == get_settings().jwt_secret
        assert credentials.openai_api_key(dataclasses.replace(get_settings(), openai_api_key="sk-x")) == "sk-x"
    assert not calls


def test_a_deployed_function_refuses_the_published_local_secret():
    settings = dataclasses.replace(get_settings(), in_lambda=True, jwt_secret=LOCAL_JWT_SECRET, jwt_secret_param=None)
    with pytest.raises(credentials.Misconfigured):
        credentials.jwt_secret(settings)


def test_reading_settings_makes_no_aws_call():
    from chalicelib.settings import Settings

    with recording() as calls:
        Settings.from_env()
    assert not calls
