"""The suite itself: a test that can skip, or that draws its data's order from `hash()`, can hide a failure.

Skips are allowed only where the machine lacks an optional tool (a browser, the installed console script), and
each of those fails instead under CI=true. Orders come from seeded `random.Random(seed)` generators, so a
failure replays (`hash()` of a str changes with PYTHONHASHSEED, that is, with every run).
"""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
# (file, the reason it may skip): optional tools only, and each of them fails under CI=true.
ALLOWED_SKIPS = {
    "e2e/test_cli.py": "the reports console script is not installed",
    "e2e/test_dashboard.py": "no Chromium / playwright",
}


def _sources() -> dict[str, str]:
    return {path.relative_to(TESTS).as_posix(): path.read_text() for path in TESTS.rglob("*.py")
            if path.name != Path(__file__).name}


def test_only_missing_optional_tools_skip_a_test():
    skipping = {name for name, text in _sources().items()
                if re.search(r"pytest\.skip\(|pytest\.mark\.skip(if)?\b|pytest\.importorskip\(", text)}
    assert skipping <= set(ALLOWED_SKIPS), sorted(skipping - set(ALLOWED_SKIPS))
    for name in ALLOWED_SKIPS:
        assert 'os.environ.get("CI", "").lower() == "true"' in _sources()[name], f"{name} must fail under CI=true"


def test_no_test_orders_its_data_by_hash():
    ordered_by_hash = sorted(name for name, text in _sources().items() if re.search(r"(?<![\w.])hash\(", text))
    assert ordered_by_hash == []


# --- the unit tier: no moto, no network (tests/unit/conftest.py) -------------------------------------------

# The fixtures that start or reach the moto server (tests/conftest.py); a unit test asking for one belongs in
# tests/integration. `api` is one too, unless the module defines its own (tests/unit/test_openapi.py does).
AWS_FIXTURES = {"aws_endpoint", "client", "api_stack", "worker", "api"}
MOTO_MODULES = re.compile(r"^\s*(?:from|import)\s+(moto\b|local\.stack\b|local\.moto_server\b|local\.poller\b)", re.M)


def _unit_sources() -> dict[str, str]:
    return {name: text for name, text in _sources().items() if name.startswith("unit/")}


def test_no_unit_test_asks_for_a_moto_fixture_or_imports_moto():
    import ast

    offenders = []
    for name, text in _unit_sources().items():
        tree = ast.parse(text)
        own = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and (node.name.startswith("test_") or any(
                    "fixture" in ast.unparse(d) for d in node.decorator_list)):
                wanted = {arg.arg for arg in node.args.args} & (AWS_FIXTURES - own)
                offenders += [f"{name}::{node.name} asks for {fixture}" for fixture in sorted(wanted)]
        offenders += [f"{name} imports {m}" for m in MOTO_MODULES.findall(text) if name != "unit/conftest.py"]
    assert offenders == [], "move these to tests/integration:\n" + "\n".join(offenders)


def test_the_unit_tier_refuses_moto_aws_calls_and_the_network(request, no_network):
    import socket

    import boto3
    import pytest

    # tests/unit/conftest.py's NetworkInUnitTest, an AssertionError (pytest imports that conftest as `conftest`).
    NetworkInUnitTest = AssertionError  # noqa: N806

    with pytest.raises(NetworkInUnitTest, match="asks for the moto server"):
        request.getfixturevalue("aws_endpoint")
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url="http://127.0.0.1:9")
    with pytest.raises(NetworkInUnitTest, match="calls AWS: s3.ListBuckets"):
        s3.list_buckets()
    with pytest.raises(NetworkInUnitTest, match="connects to"), socket.socket() as sock:
        sock.connect(("192.0.2.1", 443))  # TEST-NET-1: never reached, refused before any packet
    with pytest.raises(NetworkInUnitTest, match="looks up"):
        socket.getaddrinfo("example.com", 443)
    assert len(no_network) == 3  # each refusal is remembered, so a test that swallows one still fails
    no_network.clear()
    with socket.socket() as server:  # a server the test itself runs on loopback is fine
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=2):
            pass


def test_the_benchmarks_do_not_import_the_tests():
    """bench/ imports what it shares with the tests from local/testkit.py (tests/support.py re-exports it)."""
    bench = TESTS.parent / "bench"
    importing = sorted(path.name for path in bench.rglob("*.py")
                       if re.search(r"^\s*(?:from|import)\s+tests\b", path.read_text(), re.M))
    assert importing == []


def test_one_api_driver_and_one_simulator_fixture():
    """tests/driver.py is the API driver (a module's caller subclasses it for its scenario steps) and tests/conftest.py
    has the `sim` fixture (`@pytest.mark.sim(...)` sets its knobs): no module writes its own again."""
    sources = {name: text for name, text in _sources().items() if not name.startswith("unit/")}
    sims = sorted(name for name, text in sources.items() if re.search(r"^def sim\(", text, re.M))
    assert sims == ["conftest.py"]
    drivers = sorted(name for name, text in sources.items()
                     if re.search(r"def __init__\(self, client\b[^)]*\btoken\b", text))
    assert drivers == ["driver.py"]
