"""moto's server, with DynamoDB requests made atomic the way the real service makes them.

moto evaluates a write's ConditionExpression and applies the write without a lock, and
its server answers on threads, so two concurrent conditional writes (or transactions)
can both pass a check that only one should pass: 25 concurrent creates could admit 21
jobs against a limit of 20. Real DynamoDB never does that. This server serializes
DynamoDB calls (reads included, they are cheap) and leaves every other service (SQS long
polls above all) concurrent. `python -m local.moto_server -H 127.0.0.1 -p PORT`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from moto.core.model_instances import model_data
from moto.moto_server.threaded_moto_server import MotoRequestHandler
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple


class SerializedDynamoDB:
    """WSGI middleware: one DynamoDB request at a time, answered in full inside the lock."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
            with self.lock:
                try:
                    return list(self.app(environ, start_response))
                finally:
                    forget_dynamodb_instances()
        return self.app(environ, start_response)


def forget_dynamodb_instances() -> None:
    """Drop moto's registry of every DynamoDB model object it ever made (kept only for its dashboard).

    TransactWriteItems deep-copies each table it touches as a rollback backup, and the registry kept every copy
    alive: each transaction leaked whole tables, and a long run grew the server to the machine's memory.
    """
    for model in model_data["dynamodb"].values():
        model.instances_tracked.clear()  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=5000)
    args = parser.parse_args(argv)
    os.environ.setdefault("MOTO_PORT", str(args.port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(args.host, args.port, SerializedDynamoDB(app), threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
