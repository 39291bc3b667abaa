"""Retry policy as data, with the fields of an Amazon States Language retrier, and its one loop.

The openai client is built with max_retries=0: this loop owns every retry. A 429 waits
what the provider says (never less), but never less than the backoff for that attempt nor
RATE_LIMIT_FLOOR_SECONDS either (a `Retry-After: 0` must not spin), and never uses up the
attempts kept for real failures; a wait too long to sit through inside a Lambda, or one
that would end past the invocation's deadline, becomes a `LongWait`, which the worker
turns into a checkpoint plus an SQS message delayed by that wait.

Time spent rate-limited is counted as wall-clock time: the union of the waits of every
request of the invocation, so four requests waiting out one 30 s window count 30 s.
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
# The shortest wait after any 429, whatever the provider hints (0, negative, "0s" or none): a retry at once
# would spin (a 429 answered in microseconds, then asked again) and count no time toward the ceiling.
RATE_LIMIT_FLOOR_SECONDS = 1.0


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

    def wait(self, deadline: float | None = None, longest: float | None = None) -> float:
        """Sleep until the shared 'not before' time; returns the seconds slept.

        A wait that would end past `deadline` (the invocation's, on this clock) or last longer than `longest` is
        not slept: LongWait, which the worker turns into a checkpoint and a delayed message. A sibling's wait is
        sat through only when it fits, or Lambda kills the invocation mid-batch.
        """
        with self._lock:
            now = self.clock()
            pause = self._not_before - now
        if pause <= 0:
            return 0.0
        if (deadline is not None and now + pause > deadline) or (longest is not None and pause > longest):
            raise LongWait(pause)
        self.sleep(pause)
        return pause


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
        self._counted_until: float | None = None  # end of the rate-limited time counted so far (gate clock)

    def run(self, call: Callable[[], T]) -> T:
        attempts: dict[int, int] = {}
        limited = 0
        while True:
            self.gate.wait(self.deadline, self.inline_wait_max)
            try:
                return call()
            except ProviderError as err:
                index, retrier = next(((i, r) for i, r in enumerate(self.retriers) if r.matches(err.name)),
                                      (None, None))
                if retrier is None or err.fatal:
                    raise
                if err.name == RATE_LIMITED:
                    limited += 1
                    self._rate_limited(rate_limit_wait(err.retry_after, retrier.delay(limited, self.rng)))
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
            now = self.gate.clock()
            resume_at = now + wait
            # Wall-clock time: only the part of this wait past what is already counted adds time. Every wait
            # starts now, at or after the start of each counted one, so the union of the waits is one interval
            # per gap and "past the furthest counted end" is exactly the new part of the union.
            counted = self._counted_until if self._counted_until is not None else now
            self.stats.rate_limited_seconds += max(0.0, resume_at - max(now, counted))
            self._counted_until = max(counted, resume_at)
            self.stats.rate_limited += 1
            self.stats.retries += 1
            total = self.already_limited + self.stats.rate_limited_seconds
        if total > self.ceiling_seconds:
            raise RateLimitCeiling(total)
        # Everybody in this process waits: the provider's window is shared.
        self.gate.hold_until(resume_at)
        if wait > self.inline_wait_max or resume_at > self.deadline:
            raise LongWait(wait)


def rate_limit_wait(hint: float | None, backoff: float) -> float:
    """How long a 429 waits: the provider's hint when it gives one (its headers win over computed backoff: it
    knows when its window reopens), else the attempt's backoff; never less than RATE_LIMIT_FLOOR_SECONDS, so a
    hint of 0 (or a reset already past) cannot make the loop spin."""
    return max(hint if hint is not None else backoff, RATE_LIMIT_FLOOR_SECONDS)
