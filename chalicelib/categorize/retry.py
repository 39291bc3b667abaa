"""Retry policy as data, with the fields of an Amazon States Language retrier, and its one loop.

The openai client is built with max_retries=0: this loop owns every retry. A 429 waits
what the provider says (never less) and never uses up the attempts kept for real
failures; a wait too long to sit through inside a Lambda becomes a `LongWait`, which the
worker turns into a checkpoint plus an SQS message delayed by that wait.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from chalicelib.categorize.errors import LongWait, ProviderError, RateLimitCeiling, RetriesExhausted

T = TypeVar("T")
RATE_LIMITED = "Provider.RateLimited"


@dataclass(frozen=True)
class Retrier:
    error_equals: tuple[str, ...]
    interval_seconds: float = 1.0
    backoff_rate: float = 2.0
    max_attempts: int = 3
    max_delay_seconds: float | None = None
    jitter_strategy: str = "NONE"

    def __post_init__(self) -> None:
        if not self.error_equals:
            raise ValueError("ErrorEquals must name at least one error")
        if self.interval_seconds <= 0 or self.backoff_rate < 1.0 or self.max_attempts < 0:
            raise ValueError("IntervalSeconds > 0, BackoffRate >= 1 and MaxAttempts >= 0 are required")
        if self.jitter_strategy not in ("NONE", "FULL"):
            raise ValueError("JitterStrategy must be NONE or FULL")
        if self.max_delay_seconds is not None and self.max_delay_seconds <= 0:
            raise ValueError("MaxDelaySeconds must be positive")

    @classmethod
    def from_asl(cls, spec: dict[str, Any]) -> Retrier:
        return cls(tuple(spec["ErrorEquals"]), float(spec.get("IntervalSeconds", 1)),
                   float(spec.get("BackoffRate", 2.0)), int(spec.get("MaxAttempts", 3)),
                   spec.get("MaxDelaySeconds"), spec.get("JitterStrategy", "NONE"))

    def matches(self, error: str) -> bool:
        return error in self.error_equals or "States.ALL" in self.error_equals

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Wait before retry number `attempt` (1-based)."""
        base = self.interval_seconds * self.backoff_rate ** (attempt - 1)
        if self.max_delay_seconds is not None:
            base = min(base, self.max_delay_seconds)
        return rng.uniform(0, base) if self.jitter_strategy == "FULL" else base


# The declared policy. 429s: provider's wait, else full-jitter backoff; bounded by a
# per-job ceiling on time spent rate-limited rather than by attempts.
DEFAULT_POLICY: tuple[dict[str, Any], ...] = (
    {"ErrorEquals": [RATE_LIMITED], "IntervalSeconds": 1, "BackoffRate": 2.0, "MaxAttempts": 1000,
     "MaxDelaySeconds": 60, "JitterStrategy": "FULL"},
    {"ErrorEquals": ["Provider.ServerError", "Provider.Timeout", "Provider.Connection"],
     "IntervalSeconds": 1, "BackoffRate": 2.0, "MaxAttempts": 3, "JitterStrategy": "NONE"},
)


class Gate:
    """Shared 'not before' time: after a 429, no request of this process leaves early."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self._not_before = 0.0
        self._lock = threading.Lock()
        self.clock, self.sleep = clock, sleep

    def hold_until(self, moment: float) -> None:
        with self._lock:
            self._not_before = max(self._not_before, moment)

    def wait(self) -> float:
        with self._lock:
            pause = self._not_before - self.clock()
        if pause > 0:
            self.sleep(pause)
        return max(0.0, pause)


@dataclass
class RetryStats:
    retries: int = 0
    rate_limited: int = 0
    rate_limited_seconds: float = 0.0


class RetryLoop:
    """Executes one call under a policy. One instance per job invocation (shared by threads)."""

    def __init__(self, policy: tuple[dict[str, Any], ...] = DEFAULT_POLICY, *, deadline: float,
                 inline_wait_max: float, ceiling_seconds: float, already_limited_seconds: float = 0.0,
                 gate: Gate | None = None, rng: random.Random | None = None) -> None:
        self.retriers = [Retrier.from_asl(spec) for spec in policy]
        self.deadline, self.inline_wait_max = deadline, inline_wait_max
        self.ceiling_seconds, self.already_limited = ceiling_seconds, already_limited_seconds
        self.gate = gate or Gate()
        self.rng = rng or random.Random()
        self.stats = RetryStats()
        self._lock = threading.Lock()

    def run(self, call: Callable[[], T]) -> T:
        attempts: dict[int, int] = {}
        limited = 0
        while True:
            self.gate.wait()
            try:
                return call()
            except ProviderError as err:
                index, retrier = next(((i, r) for i, r in enumerate(self.retriers) if r.matches(err.name)),
                                      (None, None))
                if retrier is None or err.fatal:
                    raise
                if err.name == RATE_LIMITED:
                    limited += 1
                    wait = err.retry_after if err.retry_after is not None else retrier.delay(limited, self.rng)
                    self._rate_limited(wait)
                    continue
                attempts[index] = attempts.get(index, 0) + 1
                if attempts[index] > retrier.max_attempts:
                    raise RetriesExhausted(err) from err
                wait = retrier.delay(attempts[index], self.rng)
                if self.gate.clock() + wait > self.deadline:
                    raise LongWait(wait, err) from err
                with self._lock:
                    self.stats.retries += 1
                self.gate.sleep(wait)

    def _rate_limited(self, wait: float) -> None:
        with self._lock:
            self.stats.rate_limited += 1
            self.stats.retries += 1
            self.stats.rate_limited_seconds += wait
            total = self.already_limited + self.stats.rate_limited_seconds
        if total > self.ceiling_seconds:
            raise RateLimitCeiling(total)
        resume_at = self.gate.clock() + wait
        # Everybody in this process waits: the provider's window is shared.
        self.gate.hold_until(resume_at)
        if wait > self.inline_wait_max or resume_at > self.deadline:
            raise LongWait(wait)
