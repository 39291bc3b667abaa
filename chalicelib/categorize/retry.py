"""Retry policy as data, with the fields of an Amazon States Language retrier, executed by tenacity.

The openai client is built with max_retries=0: this executor owns every retry. `RetryLoop.run` hands one call to a
`tenacity.Retrying` whose parts come from the policy: the retry predicate is each retrier's ErrorEquals, the stop
is the matched retrier's MaxAttempts (and the invocation's deadline), the wait is the retrier's backoff (or, for a
429, the provider's own wait), and tenacity's statistics give the retries the worker records. What stays ours:

- A 429 waits what the provider says (its hint wins over the computed backoff, longer or shorter), the backoff
  when it says nothing, and never less than RATE_LIMIT_FLOOR_SECONDS (a `Retry-After: 0` must not spin). 429s do
  not use up the attempts kept for real failures: they are bounded by the ceiling on time spent rate-limited.
- The process-wide hold (`Gate`): after a 429, no request of this process leaves before the provider allows.
- A wait too long to sit through inside a Lambda, or one that would end past the invocation's deadline, is not
  slept: it becomes a `LongWait`, which the worker turns into a checkpoint plus an SQS message delayed by it.

Time spent rate-limited is counted as wall-clock time: the union of the waits of every request of the
invocation, so four requests waiting out one 30 s window count 30 s.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

from tenacity import RetryCallState, Retrying, retry_any, retry_if_exception

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

    def catches(self, error: BaseException) -> bool:
        """The retry predicate of this retrier's ErrorEquals: a provider error it names that is not fatal.

        States.ALL names every provider error, never anything else (a bug in our own code is not retried).
        """
        return isinstance(error, ProviderError) and not error.fatal and self.matches(error.name)

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
        slept, waited_for = 0.0, None
        while True:
            # Looked at again after each sleep: a sibling's 429 during it may have moved the hold further out, and
            # a request leaving at the end of the shorter hold would reach the provider inside the new one.
            with self._lock:
                now = self.clock()
                target = self._not_before
                pause = target - now
            if pause <= 0 or (waited_for is not None and target <= waited_for):
                return slept
            if (deadline is not None and now + pause > deadline) or (longest is not None and pause > longest):
                raise LongWait(pause)
            self.sleep(pause)
            slept, waited_for = slept + pause, target


@dataclass
class RetryStats:
    retries: int = 0  # model requests made again (tenacity's attempts past the first, summed over calls)
    rate_limited: int = 0  # 429s met
    rate_limited_seconds: float = 0.0  # wall-clock time they made this invocation wait (the union of the waits)


@dataclass(frozen=True)
class _Failure:
    """What the policy says about one failed attempt of one call."""

    error: ProviderError
    retrier: Retrier
    seconds: float  # the wait before the next attempt
    exhausted: bool  # the retrier's MaxAttempts are spent: no next attempt

    @property
    def rate_limited(self) -> bool:
        return self.error.name == RATE_LIMITED


class _Call:
    """One call's run under the policy: the stop, wait, before-sleep and sleep that its `tenacity.Retrying` uses.

    Attempts are counted per retrier (a 5xx after five 429s is the 5xx retrier's first), which tenacity's single
    attempt number cannot tell apart. Each failed attempt is judged once (`_judge`), whichever hook asks first.
    """

    def __init__(self, loop: RetryLoop) -> None:
        self.loop = loop
        self.failures: dict[int, int] = {}  # failed attempts by retrier (its index in the policy)
        self.limited = 0
        self._judged: tuple[int, _Failure] | None = None

    def _judge(self, state: RetryCallState) -> _Failure:
        if self._judged is not None and self._judged[0] == state.attempt_number:
            return self._judged[1]
        error = state.outcome.exception() if state.outcome is not None else None
        if not isinstance(error, ProviderError):  # the retry predicate lets nothing else through
            raise TypeError(f"not a provider error: {error!r}")
        # ASL: the first retrier whose ErrorEquals names the error applies.
        index, retrier = next((i, r) for i, r in enumerate(self.loop.retriers) if r.catches(error))
        if error.name == RATE_LIMITED:
            self.limited += 1
            backoff = retrier.delay(self.limited, self.loop.rng)
            failure = _Failure(error, retrier, rate_limit_wait(error.retry_after, backoff), exhausted=False)
        else:
            self.failures[index] = self.failures.get(index, 0) + 1
            spent = self.failures[index] > retrier.max_attempts
            wait = 0.0 if spent else retrier.delay(self.failures[index], self.loop.rng)
            failure = _Failure(error, retrier, wait, exhausted=spent)
        self._judged = (state.attempt_number, failure)
        return failure

    def wait(self, state: RetryCallState) -> float:
        return self._judge(state).seconds

    def stop(self, state: RetryCallState) -> bool:
        """MaxAttempts spent, or a backoff that would end past the deadline. A 429 never stops here: the ceiling
        on rate-limited time bounds it (`RetryLoop._rate_limited`), so 429s spare the attempts of real failures."""
        failure = self._judge(state)
        if failure.rate_limited:
            return False
        return failure.exhausted or self.loop.gate.clock() + failure.seconds > self.loop.deadline

    def give_up(self, state: RetryCallState) -> NoReturn:
        """tenacity's retry_error_callback: say why there is no next attempt."""
        failure = self._judge(state)
        if failure.exhausted:
            raise RetriesExhausted(failure.error) from failure.error
        raise LongWait(failure.seconds, failure.error) from failure.error

    def before_sleep(self, state: RetryCallState) -> None:
        """A 429: count its wait, check the ceiling, hold the whole process; too long a wait is a LongWait."""
        failure = self._judge(state)
        if failure.rate_limited:
            self.loop._rate_limited(failure.seconds)

    def sleep(self, seconds: float) -> None:
        """A backoff is slept by this call alone; a 429's wait is sat out at the gate, with every request of this
        process (it holds at least until this one's wait ends). Either way, a hold that a sibling's 429 set
        meanwhile is waited out too, or raised as a LongWait when it does not fit."""
        if self._judged is None or not self._judged[1].rate_limited:
            self.loop.gate.sleep(seconds)
        self.loop.gate.wait(self.loop.deadline, self.loop.inline_wait_max)


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
        # One predicate per retrier's ErrorEquals: an error is retried when some retrier names it.
        self._retryable = retry_any(*(retry_if_exception(r.catches) for r in self.retriers))

    def _retrying(self) -> Retrying:
        """A `tenacity.Retrying` for one call (its per-retrier counts are the call's own)."""
        call = _Call(self)
        return Retrying(retry=self._retryable, stop=call.stop, wait=call.wait, before_sleep=call.before_sleep,
                        sleep=call.sleep, retry_error_callback=call.give_up)

    def run(self, call: Callable[[], T]) -> T:
        self.gate.wait(self.deadline, self.inline_wait_max)  # a hold another request of this process met
        retrying = self._retrying()
        try:
            return retrying(call)
        finally:
            # tenacity counts an attempt once it decided to make it, so a 429 turned into a LongWait (the retry
            # happens after the requeue) counts, and a give-up (no next attempt) does not.
            made = retrying.statistics.get("attempt_number", 1)
            with self._lock:
                self.stats.retries += made - 1

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
