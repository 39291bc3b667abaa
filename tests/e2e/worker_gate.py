"""Hold the in-process worker (the `worker` fixture) after a job's first checkpoint, so clients watch it mid-run.

The worker's checkpoint function is wrapped: once the worker has written the first checkpoint of a job of one of the
gate's reports (its first LINE_BATCH_SIZE lines are done and visible to pollers), the worker thread waits
until the test opens the gate, then runs freely. Jobs of other reports (strays of earlier tests) pass.
Nothing sleeps a fixed time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from chalicelib.jobs import runner

MAX_HOLD_SECONDS = 60.0


class WorkerGate:
    def __init__(self) -> None:
        self.reports: set[str] = set()
        self.reached = threading.Event()
        self._open = threading.Event()

    def watch(self, report_id: str) -> str:
        self.reports.add(report_id)
        return report_id

    def wrap(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def checkpoint(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            job = args[0] if args else kwargs.get("job")
            if getattr(job, "report_id", None) in self.reports and not self._open.is_set():
                self.reached.set()
                self._open.wait(MAX_HOLD_SECONDS)
            return out

        return checkpoint

    def wait_reached(self, timeout: float = MAX_HOLD_SECONDS) -> None:
        # A deadline against a hang, not a speed check: on a loaded 2-core CI machine (browser, API and moto
        # beside another xdist worker) the first checkpoint of a dashboard test's job once took over 20 s.
        if not self.reached.wait(timeout):
            pytest.fail(f"the worker did not reach the job's first checkpoint within {timeout:g} s")

    def open(self) -> None:
        self._open.set()


def hold_worker(monkeypatch: pytest.MonkeyPatch) -> WorkerGate:
    """Install a gate for this test (monkeypatch undoes it); open it before the worker fixture stops.

    Small jobs checkpoint through `runner.checkpoint`; fanned-out ones (over CHUNK_LINES) through
    `chunks.checkpoint` when the worker has it. Both take the job first.
    """
    gate = WorkerGate()
    modules: list[Any] = [runner]
    try:
        from chalicelib.jobs import chunks

        modules.append(chunks)
    except ImportError:
        pass
    for module in modules:
        if hasattr(module, "checkpoint"):
            monkeypatch.setattr(module, "checkpoint", gate.wrap(module.checkpoint))
    return gate
