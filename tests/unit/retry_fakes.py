"""A fake clock and loop for the retry policy's tests (test_retry_policy.py, test_retry_executor.py): no real
waiting, the same waits on every run (a seeded jitter)."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any

from chalicelib.categorize.retry import Gate, RetryLoop


class FakeClock:
    """Time that moves only when the loop sleeps; safe for the tests that retry on several threads."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.sleeps.append(seconds)
            self.now += seconds


def make_loop(clock: FakeClock, policy: Any = None, seed: int = 1, **kw: Any) -> RetryLoop:
    args = {"deadline": clock.now + 300, "inline_wait_max": 10, "ceiling_seconds": 600, **kw}
    return RetryLoop(*([policy] if policy else []), gate=Gate(clock, clock.sleep), rng=random.Random(seed), **args)


def failing(errors: list[BaseException], result: str = "ok") -> tuple[Callable[[], str], dict[str, int]]:
    """A call that raises `errors` one by one, then returns `result`; and the count of its calls."""
    calls = {"n": 0}

    def call() -> str:
        calls["n"] += 1
        if errors:
            raise errors.pop(0)
        return result

    return call, calls
