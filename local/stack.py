"""The whole product on one machine: `python -m local.stack` (what `make run` runs).

1. AWS: with AWS_ENDPOINT_URL unset, starts moto's server on 127.0.0.1 (a free port); otherwise attaches to the
   server at AWS_ENDPOINT_URL (started by someone else, and left running at exit).
2. Deploys infra/template.yaml into it (or attaches to the deployed stack) with local.deploy.
3. Starts the components listed in COMPONENTS (comma list of api, worker, scheduler; default all):
   api: `chalice local` on 127.0.0.1:$PORT (default 8000) in a subprocess; worker: one SQS poller thread per
   `@app.on_sqs_message` handler (local.poller); scheduler: the `@app.schedule` handlers (local.scheduler).
4. Prints the API base URL, the AWS endpoint and a bearer token, then runs until Ctrl-C or SIGTERM, and stops
   everything it started (exit code 0).

Knobs: PORT, COMPONENTS, AWS_ENDPOINT_URL, CHALICE_STAGE (default dev: its APP_PREFIX names the resources),
JWT_SECRET, and those of local.poller / local.scheduler (WORKER_TIMEOUT_SECONDS, WORKER_WAIT_SECONDS,
WORKER_CONCURRENCY, <HANDLER>_INTERVAL_SECONDS...).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from local.deploy import DEFAULT_REGION, PROJECT_ROOT, DeployError, deploy, resolve_prefix

log = logging.getLogger("local.stack")

COMPONENT_NAMES = ("api", "worker", "scheduler")
DEFAULT_API_PORT = 8000
TOKEN_USER = "local-user"
TOKEN_ROLES = ["finance"]


class StartupError(RuntimeError):
    """A component did not come up."""


class Interrupted(RuntimeError):
    """Stop was requested while starting."""


# --- helpers -----------------------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (another process may still take it before we bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_open(port: int, host: str = "127.0.0.1") -> bool:
    """True if something accepts connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def http_answers(url: str, timeout: float = 1.0) -> int | None:
    """The HTTP status url answers with, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except (OSError, ValueError):
        return None


def wait_until(check: Callable[[], Any], deadline_seconds: float, what: str, *, stop: threading.Event | None = None,
               process: ManagedProcess | None = None) -> None:
    """Poll `check()` until truthy; StartupError at the deadline or if `process` exits; Interrupted on stop."""
    deadline = time.monotonic() + deadline_seconds
    delay = 0.05
    while not check():
        if stop is not None and stop.is_set():
            raise Interrupted(what)
        if process is not None and not process.alive():
            raise StartupError(f"{what}: {process.name} exited with code {process.returncode}{process.log_tail()}")
        if time.monotonic() > deadline:
            tail = process.log_tail() if process else ""
            raise StartupError(f"{what}: no answer within {deadline_seconds:.0f}s{tail}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def _prepare_die_with_parent() -> Any:
    """A preexec_fn that makes the child get SIGTERM when this process dies, even by SIGKILL (Linux only).

    PR_SET_PDEATHSIG fires when the *thread* that forked exits, so only the main thread uses it.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return preexec


class ManagedProcess:
    """A child in its own process group (Ctrl-C in the terminal does not reach it; we stop it in order)."""

    def __init__(self, name: str, argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
                 log_path: Path | None = None) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> ManagedProcess:
        out: Any = None
        if self.log_path is not None:
            self._log = open(self.log_path, "ab")  # closed in stop()
            out = self._log
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT if out else None, start_new_session=True,
                                     preexec_fn=_prepare_die_with_parent())
        log.debug("started %s (pid %d): %s", self.name, self.proc.pid, " ".join(self.argv))
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return ("\n--- " + self.name + " log ---\n" + "\n".join(tail)) if tail else ""

    def terminate(self) -> None:
        """Send SIGTERM to the whole process group (no wait)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)  # type: ignore[union-attr]

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM the group, wait up to `timeout`, then SIGKILL it; the exit code."""
        if self.proc is None:
            return None
        self.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0fs; killing it", self.name, timeout)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        # Anything left in its group (grandchildren) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode


# --- moto ---------------------------------------------------------------------------------------------------


class MotoServer(ManagedProcess):
    """moto's server (local.moto_server: DynamoDB writes made atomic) on 127.0.0.1 and a free port."""

    def __init__(self, port: int | None = None, *, host: str = "127.0.0.1", log_path: Path | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        if log_path is None:
            # Keep moto's log out of the terminal (errors; every request too with MOTO_ACCESS_LOG=1).
            fd, name = tempfile.mkstemp(prefix="moto-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
            self._own_log = True
        else:
            self._own_log = False
        super().__init__("moto", [sys.executable, "-m", "local.moto_server", "-H", host, "-p", str(self.port)],
                         log_path=log_path, cwd=PROJECT_ROOT)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start_and_wait(self, deadline_seconds: float = 20.0, stop: threading.Event | None = None) -> MotoServer:
        for attempt in range(3):
            self.start()
            try:
                wait_until(lambda: http_answers(f"{self.url}/moto-api/") is not None, deadline_seconds,
                           "moto server", stop=stop, process=self)
                return self
            except StartupError:
                if self.alive() or attempt == 2:
                    raise
                self.port = free_port(self.host)  # lost the race for the port: try another
                self.argv[-1] = str(self.port)
        return self

    def stop(self, timeout: float = 5.0) -> int | None:
        code = super().stop(timeout)
        if self._own_log and self.log_path is not None:
            with contextlib.suppress(OSError):
                self.log_path.unlink()
        return code


# --- chalice local ------------------------------------------------------------------------------------------


def chalice_local_argv(port: int, stage: str, host: str = "127.0.0.1") -> list[str]:
    """`chalice local` for this interpreter (no console script needed; chalice has no __main__)."""
    # harden_chalice_local() runs in the child before chalice's CLI builds the server.
    boot = "import sys; from local.stack import harden_chalice_local; harden_chalice_local(); " \
           "from chalice.cli import main; sys.exit(main())"
    return [sys.executable, "-c", boot,
            "local", "--host", host, "--port", str(port), "--stage", stage, "--no-autoreload"]


def harden_chalice_local() -> None:
    """Make `chalice local`'s HTTP server answer as the deployed API does, for every request line.

    - Its listen backlog stays at the stdlib's 5: a burst of concurrent clients (20 creates at once) would see
      connection resets, which API Gateway never gives. Raised to 128.
    - Its handler (http.server) has a method of its own for GET, PUT, POST, HEAD, DELETE, PATCH and OPTIONS only,
      and answers any other (TRACE, CONNECT, QUERY, PROPFIND...) with a 501 HTML page before the app sees it.
      Every method now goes to the app, whose router answers a method the route does not declare with 405 and
      `Allow` (made problem+json by the app's middleware, after authentication).
    - A path no route matches was a 403 whose body echoed the Authorization header; it is a 404 problem+json.
    - A HEAD answer carried a body, which a keep-alive client reads as the start of its next answer.

    And it keeps its output to what a user needs (`make run` shares the terminal with it):

    - A client that hangs up early (a reset, a closed socket before the answer is written) made socketserver print
      a whole `ConnectionResetError`/`BrokenPipeError` traceback. It is one debug line (not shown at chalice
      local's INFO level); any other error keeps its traceback.
    - PynamoDB logs "Override settings for pynamo not available ..." at INFO when it is imported and finds no
      settings file (/etc/pynamodb/global_default_settings.py or $PYNAMODB_CONFIG); chalice local logs INFO to
      stdout. The app needs no such file, so `pynamodb.settings` logs warnings only.
    """
    from chalice import local as chalice_local

    logging.getLogger("pynamodb.settings").setLevel(logging.WARNING)
    chalice_local.ThreadedHTTPServer.request_queue_size = 128
    server_cls = chalice_local.ThreadedHTTPServer
    if not getattr(server_cls, "quiet_on_hangup", False):
        report_error = server_cls.handle_error

        def handle_error(self: Any, request: Any, client_address: Any) -> None:
            error = sys.exc_info()[1]
            if isinstance(error, ConnectionError):  # reset, broken pipe, aborted: the client went away
                log.debug("client %s hung up early: %s", client_address, error.__class__.__name__)
                return
            report_error(self, request, client_address)

        server_cls.handle_error = handle_error
        server_cls.quiet_on_hangup = True
    handler = chalice_local.ChaliceRequestHandler
    if getattr(handler, "hardened", False):
        return
    generic = handler._generic_handle
    send_with_body = handler._send_http_response_with_body

    def handle(self: Any) -> None:
        if not _route_exists(self.local_gateway, self.path):
            self._parse_payload()  # read the body off the connection: it is kept alive for the next request
            self._send_http_response(404, {"Content-Type": "application/problem+json"}, _not_found_body())
            return
        generic(self)

    def send_http_response_with_body(self: Any, code: int, headers: dict[str, Any], body: str | bytes) -> None:
        if self.command != "HEAD":
            send_with_body(self, code, headers, body)
            return
        raw = body if isinstance(body, bytes) else body.encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Length", str(len(raw)))
        self.send_header("Content-Type", headers.pop("Content-Type", "application/json"))
        self._send_headers(headers)  # and no body

    def any_method(self: Any, name: str) -> Any:
        # http.server looks up do_<METHOD> and answers 501 when there is none: every method is the app's.
        if name.startswith("do_"):
            return functools.partial(handle, self)
        raise AttributeError(name)

    for method in ("GET", "PUT", "POST", "HEAD", "DELETE", "PATCH", "OPTIONS"):
        setattr(handler, f"do_{method}", handle)
    handler.__getattr__ = any_method
    handler._send_http_response_with_body = send_http_response_with_body
    handler.hardened = True


def _not_found_body() -> str:
    from chalicelib.api import problem_types  # the one registry of problem types (imported in the child only)

    return json.dumps(problem_types.get("not-found").body("No resource of this API has this path."))


def _route_exists(gateway: Any, path: str) -> bool:
    """True if a route of the app matches `path` (the lookup chalice local's event converter makes)."""
    try:
        gateway.event_converter._route_matcher.match_route(path)
    except Exception:  # ValueError for no match; a request target that is no path at all (CONNECT host:443)
        return False
    return True


class ChaliceLocal(ManagedProcess):
    """The API as `chalice local`, in the project root, with `env`.

    Chalice quirk: the stage's environment_variables from .chalice/config.json overwrite `env` for those keys
    (e.g. APP_PREFIX) - see local.deploy.stage_environment / resolve_prefix.
    """

    def __init__(self, port: int, env: dict[str, str], *, stage: str = "dev", host: str = "127.0.0.1",
                 log_path: Path | None = None) -> None:
        self.host = host
        self.port = port
        env = {**env, "PYTHONUNBUFFERED": "1"}
        super().__init__("chalice local", chalice_local_argv(port, stage, host), env=env, cwd=PROJECT_ROOT,
                         log_path=log_path)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start_and_wait(self, deadline_seconds: float = 30.0, stop: threading.Event | None = None) -> ChaliceLocal:
        if port_is_open(self.port, self.host):
            raise StartupError(f"port {self.port} is already in use: set PORT to a free port")
        self.start()
        wait_until(lambda: http_answers(f"{self.url}/health") == 200, deadline_seconds, "chalice local /health",
                   stop=stop, process=self)
        return self


# --- the stack ----------------------------------------------------------------------------------------------


def parse_components(raw: str | None) -> list[str]:
    items = [c.strip().lower() for c in (raw or "").split(",") if c.strip()]
    if not items or items == ["all"]:
        return list(COMPONENT_NAMES)
    unknown = [c for c in items if c not in COMPONENT_NAMES]
    if unknown:
        raise ValueError(f"unknown COMPONENTS {unknown}: use a comma list of {', '.join(COMPONENT_NAMES)}")
    return [c for c in COMPONENT_NAMES if c in items]


class LocalStack:
    def __init__(self, *, components: list[str], port: int, stage: str, endpoint_url: str | None,
                 stop: threading.Event) -> None:
        self.components = components
        self.port = port
        self.stage = stage
        self.endpoint_url = endpoint_url
        self.stop_event = stop
        self.moto: MotoServer | None = None
        self.api: ChaliceLocal | None = None
        self.pollers: list[Any] = []
        self.scheduler: Any = None
        self.prefix = resolve_prefix(stage)
        self.token = ""

    def start(self) -> None:
        if self.endpoint_url:
            log.info("attaching to the AWS endpoint %s", self.endpoint_url)
            wait_until(lambda: http_answers(self.endpoint_url) is not None, 10.0, f"AWS endpoint {self.endpoint_url}",
                       stop=self.stop_event)
        else:
            self.moto = MotoServer().start_and_wait(stop=self.stop_event)
            self.endpoint_url = self.moto.url
            log.info("moto server on %s (log: %s)", self.moto.url, self.moto.log_path)
        if self.stop_event.is_set():
            raise Interrupted("deploy")
        result = deploy(self.endpoint_url, self.prefix)
        log.info("stack %s %s", result["stack_name"], "created" if result["created"] else "attached")
        os.environ.update(result["env"])
        from chalicelib.settings import LOCAL_JWT_SECRET  # the settings module itself reads nothing at import

        os.environ.setdefault("JWT_SECRET", LOCAL_JWT_SECRET)
        # A developer receives webhooks on their own machine (http://127.0.0.1:<port>); never a deployed stage.
        os.environ.setdefault("WEBHOOK_ALLOW_LOOPBACK", "1")
        # Links in emails and webhook payloads: the worker has no request to take a host from.
        os.environ.setdefault("PUBLIC_BASE_URL", f"http://127.0.0.1:{self.port}")

        if "api" in self.components:
            self.api = ChaliceLocal(self.port, dict(os.environ), stage=self.stage)
            self.api.start_and_wait(stop=self.stop_event)
        if "worker" in self.components or "scheduler" in self.components:
            app = self._import_app()
            if "worker" in self.components:
                from local.poller import build_pollers

                self.pollers = build_pollers(app, stop_event=self.stop_event)
                for poller in self.pollers:
                    poller.start()
            if "scheduler" in self.components:
                from local.scheduler import Scheduler

                self.scheduler = Scheduler(app, stop_event=self.stop_event)
                self.scheduler.start()

        from chalicelib.auth import mint_token
        from chalicelib.settings import get_settings

        self.token = mint_token(get_settings(), TOKEN_USER, TOKEN_ROLES, ttl_seconds=86400)

    @staticmethod
    def _import_app() -> Any:
        if str(PROJECT_ROOT) not in sys.path:
            sys.path.insert(0, str(PROJECT_ROOT))
        import app as app_module  # after the environment is complete: settings are read once, here

        return app_module.app

    def banner(self) -> str:
        api = self.api.url if self.api else f"(not started: COMPONENTS={','.join(self.components)})"
        base = self.api.url if self.api else f"http://127.0.0.1:{self.port}"
        owner = "moto, started here" if self.moto else "attached"
        workers = ", ".join(p.name for p in self.pollers) or "-"
        schedules = ", ".join(h.name for h in (self.scheduler.handlers if self.scheduler else [])) or "-"
        return "\n".join([
            f"==> Local stack ready (prefix {self.prefix}, components {','.join(self.components)})",
            f"    API base URL:  {api}",
            f"    AWS endpoint:  {self.endpoint_url}  ({owner})",
            f"    Workers:       {workers}",
            f"    Schedules:     {schedules}",
            f"    Bearer token:  {self.token}",
            f"                   (sub {TOKEN_USER}, roles {','.join(TOKEN_ROLES)}, valid 24 h)",
            "    Try:",
            f"      export TOKEN={self.token}",
            f"      curl -s -H \"Authorization: Bearer $TOKEN\" {base}/api/v1/jobs",
            f"      REPORTS_API_URL={base} REPORTS_TOKEN=$TOKEN .venv/bin/reports list",
            f"      AWS_ENDPOINT_URL={self.endpoint_url} .venv/bin/python -m local.scheduler list",
            f"      AWS_ENDPOINT_URL={self.endpoint_url} .venv/bin/python -m local.mailbox  # emails sent",
            "      .venv/bin/python -m local.webhook_receiver --port 9000   # webhooks to http://127.0.0.1:9000/",
            "    Ctrl-C stops everything.",
        ])

    def watch(self) -> int:
        """Run until stop is requested (0) or a child dies (1)."""
        while not self.stop_event.wait(1.0):
            for child in (self.moto, self.api):
                if child is not None and not child.alive():
                    log.error("%s exited unexpectedly (code %s)%s", child.name, child.returncode, child.log_tail())
                    return 1
        return 0

    def shutdown(self) -> None:
        self.stop_event.set()
        if self.api is not None:
            self.api.terminate()  # in parallel with the threads winding down
        deadline = time.monotonic() + 8.0
        for poller in self.pollers:
            # An idle poller sits in a long poll of at most WORKER_WAIT_SECONDS. With our own moto about to go,
            # nothing it could still receive matters; on an attached endpoint, let it hand such messages back.
            busy = poller.busy
            grace = 8.0 if (busy or self.moto is None) else 0.5
            if not poller.stop(timeout=max(0.0, min(grace, deadline - time.monotonic()))):
                log.log(logging.WARNING if busy or self.moto is None else logging.DEBUG,
                        "poller %s still running at exit", poller.name)
        if self.scheduler is not None and not self.scheduler.stop(timeout=max(0.0, deadline - time.monotonic())):
            log.warning("a scheduled handler was still running at exit")
        if self.api is not None:
            self.api.stop(timeout=3.0)
        if self.moto is not None:
            self.moto.stop(timeout=3.0)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for noisy in ("botocore", "pynamodb"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        # Only sets the event: startup waits and the watch loop check it, and shutdown is bounded (~15 s).
        log.info("%s received: %s", signal.Signals(signum).name, "already stopping" if stop.is_set() else "stopping")
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", DEFAULT_REGION)
    try:
        components = parse_components(os.environ.get("COMPONENTS"))
        port = int(os.environ.get("PORT") or DEFAULT_API_PORT)
    except ValueError as err:
        log.error("%s", err)
        return 2
    stack = LocalStack(components=components, port=port, stage=os.environ.get("CHALICE_STAGE") or "dev",
                       endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None, stop=stop)
    code = 0
    try:
        stack.start()
        print(stack.banner(), flush=True)
        code = stack.watch()
    except Interrupted:
        code = 0
    except (StartupError, DeployError) as err:
        log.error("local stack failed to start: %s", err)
        code = 1
    except Exception:
        log.exception("local stack failed")
        code = 1
    finally:
        stack.shutdown()
        log.info("local stack stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())
