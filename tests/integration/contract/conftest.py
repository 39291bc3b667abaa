"""The API for the contract tests: the HTTP side of the suite's in-process client (tests/conftest.py `client`:
chalice.test.Client, moto behind it)."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def api(client: Any) -> Any:
    return client.http
