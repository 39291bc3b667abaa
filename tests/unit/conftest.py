"""The unit tier: no moto, no AWS, no network. `make unit` runs it alone, in seconds.

A unit test that asks for AWS (`aws_endpoint`, and so `client`, `api`, `api_stack`, `worker`) fails at once, and
so does one that makes an AWS call (botocore or PynamoDB) or opens a connection off this machine or to this
process's moto port (under `make test` another tier may have started moto in the same process). Such a test
belongs in tests/integration. Connections to a server the test itself runs on 127.0.0.1 are allowed.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

NOT_HERE = "tests/unit runs without moto and without network: move this test to tests/integration"


class NetworkInUnitTest(AssertionError):
    """A unit test reached for AWS or the network."""


@pytest.fixture(scope="session")
def aws_endpoint() -> str:
    raise NetworkInUnitTest(f"{NOT_HERE} (it asks for the moto server)")


def _moto_port() -> int | None:
    return urlsplit(os.environ.get("AWS_ENDPOINT_URL") or "").port


def _allowed(address: Any) -> bool:
    if not isinstance(address, tuple) or not address:
        return True  # a Unix socket
    host, port = str(address[0]), address[1] if len(address) > 1 else None
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    return loopback and port != _moto_port()


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Yields the list of refusals (tests/unit/test_suite_hygiene.py checks the guard, then clears it)."""
    import botocore.endpoint

    caught: list[str] = []  # a test that swallows the error (a broad `except`) still fails

    def refuse_with(reason: str) -> NetworkInUnitTest:
        caught.append(reason)
        return NetworkInUnitTest(f"{NOT_HERE} ({reason})")

    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def refuse(address: Any) -> None:
        if not _allowed(address):
            raise refuse_with(f"it connects to {address}")

    def connect(self: socket.socket, address: Any) -> None:
        refuse(address)
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        refuse(address)
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in (None, "localhost") and not _allowed((name, None)):
            raise refuse_with(f"it looks up {name}")
        return real_getaddrinfo(host, *args, **kwargs)

    def make_request(self: Any, operation_model: Any, request_dict: Any) -> Any:
        raise refuse_with(f"it calls AWS: {operation_model.service_model.service_name}.{operation_model.name}")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(botocore.endpoint.Endpoint, "make_request", make_request)
    yield caught
    if caught:
        pytest.fail(f"{NOT_HERE}: {'; '.join(dict.fromkeys(caught))}", pytrace=False)
