"""Shared fixtures. The suite runs offline: AWS is a moto server subprocess, reached over the real wire.

Settings are read from the environment once per process, at first use (the PynamoDB models and the observability
module too), but a moto server's URL is only known once it runs. So this file sets the test environment when it
is imported and, in `pytest_configure` (before any test module is collected, hence before anything reads the
settings), reserves a free port and points AWS_ENDPOINT_URL (and the queue and bucket names the stack will have)
at it. The server itself starts lazily: the first test that needs AWS (through `aws_endpoint`, which `client`,
`api_stack`, `worker`... depend on, and which every test outside tests/unit gets) starts it on that port and
deploys infra/template.yaml into it. The unit tier (tests/unit, `make unit`) never starts one: its conftest fails
a test that asks for it or touches the network. With pytest-xdist every worker process gets its own server, when
it first needs it; the controller starts none. Tests isolate their state with fresh random user ids and report
ids, never by resetting moto.

Fixtures: aws_endpoint, settings, token_for, client, api_stack, worker, sim, api.
"""

from __future__ import annotations

import os
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# --- the test environment, before anything imports chalicelib ------------------------------------------------
os.environ["AWS_ACCESS_KEY_ID"] = "testing"  # never real credentials, whatever the shell has
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
for _var in ("AWS_SESSION_TOKEN", "AWS_PROFILE",
             # Ambient settings that would make the suite leave the machine or change the contract under test.
             "AWS_ENDPOINT_URL", "WORK_QUEUE_URL", "RESULTS_BUCKET", "OPENAI_API_KEY", "OPENAI_BASE_URL",
             "JWT_JWKS_URL", "PUBLIC_BASE_URL", "JWT_SECRET_PARAM", "OPENAI_API_KEY_PARAM", "AWS_LAMBDA_FUNCTION_NAME"):
    os.environ.pop(_var, None)
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("APP_PREFIX", "reports-test")
os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")  # no X-Ray SDK, no daemon
# Batches of exactly LINE_BATCH_SIZE lines: the tests that watch a job mid-run (a progress line, a race with
# the last batch, a reap between checkpoints) count on them. The worker's own tests (tests/integration/
# test_worker.py) run with the default read-ahead.
os.environ.setdefault("LINE_READ_AHEAD", "1")
# As `make run` sets it: the delivery tests receive webhooks on a local HTTP server. The SSRF tests turn it off.
os.environ.setdefault("WEBHOOK_ALLOW_LOOPBACK", "1")

# A chalice stage that .chalice/config.json does not declare: `chalice local --stage` and chalice.test.Client
# then only apply the top-level environment_variables, so they keep APP_PREFIX=reports-test (stage `dev`
# would force reports-dev onto the app).
TEST_STAGE = "pytest"

UNIT_TIER = ROOT / "tests" / "unit"
MOTO_ACCOUNT = "123456789012"  # moto's default account: the queue URLs and bucket name contain it


class LazyMoto:
    """This process's moto server: its URL (and the stack's names) are fixed at configure time, it starts at the
    first `start()`. The port stays bound by a placeholder socket until then, so nothing else takes it."""

    def __init__(self) -> None:
        import socket

        self._placeholder: Any = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._placeholder.bind(("127.0.0.1", 0))
        self.port = self._placeholder.getsockname()[1]
        self.server: Any = None

    def expected_env(self) -> dict[str, str]:
        """What local.deploy.deploy will answer for this port (checked when it does)."""
        url, prefix = f"http://127.0.0.1:{self.port}", os.environ["APP_PREFIX"]
        account = os.environ.get("MOTO_ACCOUNT_ID", MOTO_ACCOUNT)
        return {"AWS_ENDPOINT_URL": url, "WORK_QUEUE_URL": f"{url}/{account}/{prefix}-work",
                "DLQ_URL": f"{url}/{account}/{prefix}-work-dlq", "RESULTS_BUCKET": f"{prefix}-results-{account}"}

    def start(self) -> str:
        if self.server is not None:
            return self.server.url
        from local.deploy import deploy
        from local.stack import MotoServer

        self._placeholder.close()
        server = MotoServer(self.port).start_and_wait(deadline_seconds=30.0)
        try:
            env = deploy(server.url, os.environ["APP_PREFIX"])["env"]
        except BaseException:
            server.stop()
            raise
        self.server = server
        from chalicelib.settings import Settings  # reads nothing at import

        announced = Settings.from_env()
        os.environ.update(env)
        if Settings.from_env() != announced and _chalicelib_read_settings():
            raise RuntimeError(f"the test stack ({env}) differs from what tests/conftest.py announced, and the "
                               "settings were read already: they would not point at this moto server")
        return server.url

    def stop(self) -> None:
        self._placeholder.close()
        if self.server is not None:
            self.server.stop(timeout=3.0)
            self.server = None


_moto: LazyMoto | None = None


def _is_xdist_controller(config: pytest.Config) -> bool:
    if hasattr(config, "workerinput"):
        return False
    return bool(getattr(config.option, "numprocesses", None)) and getattr(config.option, "dist", "no") != "no"


def _chalicelib_read_settings() -> bool:
    settings_module = sys.modules.get("chalicelib.settings")
    return bool(settings_module and settings_module.get_settings.cache_info().currsize)


def pytest_configure(config: pytest.Config) -> None:
    global _moto
    config.addinivalue_line("markers", "sim(**knobs): the `sim` fixture's SimConfig knobs (latency, rpm, seed...)")
    if _moto is not None or _is_xdist_controller(config) or config.option.help or config.option.version:
        return
    if _chalicelib_read_settings():
        raise pytest.UsageError("the settings were read before tests/conftest.py set AWS_ENDPOINT_URL: "
                                "settings are read once per process, so it would not point at the test moto server")
    _moto = LazyMoto()
    os.environ.update(_moto.expected_env())


def pytest_unconfigure(config: pytest.Config) -> None:
    global _moto
    if _moto is not None:
        _moto.stop()
        _moto = None


# --- fixtures ---------------------------------------------------------------------------------------------


class Token(str):
    """A bearer token (a str) that also knows its user: `.sub`, `.roles`, `.headers`."""

    sub: str
    roles: tuple[str, ...]
    tenant: str | None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self}"}


@pytest.fixture(scope="session")
def aws_endpoint() -> str:
    """The URL of this process's moto server, started (and the stack deployed) at the first test that needs it."""
    if _moto is None:
        raise pytest.UsageError("tests/conftest.py configured no moto server in this process")
    return _moto.start()


@pytest.fixture(autouse=True)
def _aws_outside_the_unit_tier(request: pytest.FixtureRequest) -> None:
    """Every test outside tests/unit may talk to AWS: start moto for it (once per process)."""
    if UNIT_TIER not in Path(str(request.node.path)).parents:
        request.getfixturevalue("aws_endpoint")


@pytest.fixture(scope="session")
def settings() -> Any:
    from chalicelib.settings import get_settings

    current = get_settings()
    assert current.aws_endpoint_url == os.environ["AWS_ENDPOINT_URL"], "settings were read before conftest ran"
    return current


@pytest.fixture(scope="session")
def token_for(settings: Any) -> Any:
    """`token_for(sub=None, roles=(), tenant=None)`: a valid bearer token; a fresh random user when `sub` is None,
    a member of `tenant` (its `tenant` claim) when given, else a tenant of its own."""
    from chalicelib.auth import mint_token

    def make(sub: str | None = None, roles: tuple[str, ...] | list[str] = (), tenant: str | None = None) -> Token:
        user = sub or f"user-{uuid.uuid4()}"
        token = Token(mint_token(settings, user, list(roles), tenant=tenant))
        token.sub, token.roles, token.tenant = user, tuple(roles), tenant
        return token

    return make


@pytest.fixture
def client(aws_endpoint: str) -> Iterator[Any]:
    """The API in-process (chalice.test.Client) against this process's moto server.

    Chalice quirk: the test client swaps os.environ for a copy patched with the stage's environment_variables
    during every invocation; TEST_STAGE keeps that from changing APP_PREFIX.
    """
    from chalice.test import Client

    from app import app

    _check_stage()
    with Client(app, stage_name=TEST_STAGE, project_dir=str(ROOT)) as test_client:
        yield test_client


def _check_stage() -> None:
    from local.deploy import stage_environment

    forced = stage_environment(TEST_STAGE).get("APP_PREFIX")
    if forced and forced != os.environ["APP_PREFIX"]:
        pytest.fail(f".chalice/config.json stage {TEST_STAGE!r} sets APP_PREFIX={forced}; tests deploy "
                    f"{os.environ['APP_PREFIX']}")


@pytest.fixture(scope="session")
def api_stack(aws_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A `chalice local` subprocess against this process's moto server; yields its base URL."""
    from local.stack import ChaliceLocal, StartupError, free_port

    _check_stage()
    log_path = tmp_path_factory.mktemp("api-stack") / "chalice-local.log"
    api = None
    for attempt in range(3):
        api = ChaliceLocal(free_port(), dict(os.environ), stage=TEST_STAGE, log_path=log_path)
        try:
            api.start_and_wait(deadline_seconds=30.0)
            break
        except StartupError:
            api.stop(timeout=3.0)
            if attempt == 2:
                raise
    assert api is not None
    try:
        yield api.url
    finally:
        api.stop(timeout=5.0)


@pytest.fixture
def worker(aws_endpoint: str, settings: Any) -> Iterator[Any]:
    """A local.poller thread feeding the work queue to the real SQS handler for this test; yields the poller.

    `worker.stats` counts invocations, deletions and failures. Long polls are 1 s, so teardown is quick.
    """
    from app import app
    from local.poller import build_pollers

    stop = threading.Event()
    pollers = build_pollers(app, stop_event=stop, queues=[f"{settings.prefix}-work"], concurrency=1,
                            wait_time_seconds=1)
    assert pollers, f"app.py declares no @app.on_sqs_message handler for {settings.prefix}-work"
    for poller in pollers:
        poller.start()
    try:
        yield pollers[0]
    finally:
        stop.set()
        for poller in pollers:
            if not poller.stop(timeout=30.0):
                pytest.fail(f"worker {poller.name} did not stop within 30 s")


@pytest.fixture
def sim(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The provider simulator (local/simulator.py) on a free port; `sim.configure(...)` changes it mid-test.

    It answers at once unless the test asks otherwise with `@pytest.mark.sim(**knobs)` (or its module with
    `pytestmark = pytest.mark.sim(...)`): any SimConfig knob, e.g. `latency=0.3, rpm=600, seed=7, p500=0.1`.
    """
    from local.simulator import Simulator

    marker = request.node.get_closest_marker("sim")
    simulator = Simulator(**{"latency": 0.0, **(marker.kwargs if marker else {})}).start()
    yield simulator
    simulator.stop()


@pytest.fixture
def api(client: Any, token_for: Any) -> Any:
    """A fresh user's side of the API through the in-process client (tests/driver.py)."""
    from tests.driver import Driver

    return Driver(client, token_for())
