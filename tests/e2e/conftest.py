"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.worker_gate import WorkerGate, hold_worker


@pytest.fixture
def gate(worker: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[WorkerGate]:
    """The worker fixture, held after each job's first checkpoint until the test opens the gate."""
    held = hold_worker(monkeypatch)
    try:
        yield held
    finally:
        held.open()
