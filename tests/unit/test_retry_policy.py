"""The ASL-style retry loop, driven with a fake clock: no real waiting."""

import random
import threading

import httpx2 as httpx
import openai
import pytest

from chalicelib.categorize import provider
from chalicelib.categorize.errors import LongWait, ProviderError, RateLimitCeiling, RetriesExhausted
from chalicelib.categorize.retry import RATE_LIMIT_FLOOR_SECONDS, Gate, Retrier
from tests.unit.retry_fakes import FakeClock, failing, make_loop


def test_server_errors_retry_three_times_with_1_2_4_second_waits():
    clock = FakeClock()
    call, calls = failing([ProviderError("Provider.ServerError", "500")] * 3)
    assert make_loop(clock).run(call) == "ok"
    assert clock.sleeps == [1.0, 2.0, 4.0]
    assert calls["n"] == 4


def test_fourth_server_error_exhausts_the_attempts():
    clock = FakeClock()
    call, _ = failing([ProviderError("Provider.Timeout", "t")] * 4)
    with pytest.raises(RetriesExhausted):
        make_loop(clock).run(call)


def test_rate_limit_waits_at_least_what_the_provider_says_and_spares_the_attempts():
    clock = FakeClock()
    errors = [ProviderError("Provider.RateLimited", "429", retry_after=2.5)] * 5 + \
             [ProviderError("Provider.ServerError", "500")] * 3
    call, _ = failing(list(errors))
    loop = make_loop(clock, inline_wait_max=100)
    assert loop.run(call) == "ok"
    assert clock.sleeps[:2] == [2.5, 2.5]  # what the provider asked, while the backoff (1 s, 2 s caps) is below it
    assert all(s >= 2.5 for s in clock.sleeps[:5])  # never less than the provider asked
    assert clock.sleeps[5:] == [1.0, 2.0, 4.0]  # 429s did not use up the 5xx attempts
    assert loop.stats.rate_limited == 5


def test_rate_limit_without_hint_uses_full_jitter_backoff_within_the_cap_and_above_the_floor():
    clock = FakeClock()
    call, _ = failing([ProviderError("Provider.RateLimited", "429")] * 8)
    make_loop(clock, inline_wait_max=100).run(call)
    caps = [min(60, 2 ** n) for n in range(8)]
    assert all(RATE_LIMIT_FLOOR_SECONDS <= s <= max(cap, RATE_LIMIT_FLOOR_SECONDS)
               for s, cap in zip(clock.sleeps, caps, strict=True))


class Spinning(Exception):
    """The fake provider was called far more often than any wait allows: the loop does not wait."""


def _rate_limit_error(headers: dict) -> openai.RateLimitError:
    request = httpx.Request("POST", "http://sim/v1/chat/completions")
    response = httpx.Response(429, headers=headers, request=request)
    return openai.RateLimitError("limited", response=response, body={"code": "rate_limit_exceeded"})


@pytest.mark.parametrize("headers", [
    {"retry-after": "0"}, {"retry-after-ms": "0"}, {"retry-after": "-3"}, {"retry-after-ms": "-250"},
    {"retry-after": "0.0001"}, {"x-ratelimit-reset-requests": "0s"}, {"x-ratelimit-reset-tokens": "0ms"},
    {"retry-after": "nan"}, {},
], ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()) or "no hint")
def test_a_429_that_says_wait_zero_waits_at_least_the_floor_and_reaches_the_ceiling(headers):
    """A 429 with a zero (or negative, or missing) wait, again and again, over 60 s of fake time with a 60 s ceiling:
    at most one call per floor interval, every sleep at least the floor, and the job ends on the ceiling."""
    clock = FakeClock()
    error = provider.classify(_rate_limit_error(headers))
    assert error.name == "Provider.RateLimited" and (error.retry_after or 0) < RATE_LIMIT_FLOOR_SECONDS
    calls = {"n": 0}

    def call() -> str:
        calls["n"] += 1
        if calls["n"] > 1000:
            raise Spinning(f"{calls['n']} calls in {clock.now - 1000:.6f} fake seconds")
        raise error

    started = clock.now
    with pytest.raises(RateLimitCeiling):
        make_loop(clock, inline_wait_max=100, ceiling_seconds=60, deadline=clock.now + 3600).run(call)
    assert min(clock.sleeps) >= RATE_LIMIT_FLOOR_SECONDS
    assert calls["n"] <= 60 / RATE_LIMIT_FLOOR_SECONDS + 1
    assert clock.now - started <= 60


@pytest.mark.parametrize("hint, sleeps", [(0.5, [1.0, 1.0, 1.0]), (5.0, [5.0, 5.0, 5.0]), (0.0, [1.0, 1.0, 1.0]),
                                         (None, [2.0, 4.0, 8.0])])
def test_the_provider_s_wait_wins_over_backoff_but_never_below_the_floor(hint, sleeps):
    policy = ({"ErrorEquals": ["Provider.RateLimited"], "IntervalSeconds": 2, "BackoffRate": 2.0,
               "MaxAttempts": 100, "JitterStrategy": "NONE"},)
    clock = FakeClock()
    call, _ = failing([ProviderError("Provider.RateLimited", "429", retry_after=hint)] * 3)
    assert make_loop(clock, policy=policy, inline_wait_max=100).run(call) == "ok"
    assert clock.sleeps == sleeps


def test_long_provider_wait_becomes_a_long_wait_instead_of_idling():
    clock = FakeClock()
    call, _ = failing([ProviderError("Provider.RateLimited", "429", retry_after=45)])
    with pytest.raises(LongWait) as info:
        make_loop(clock).run(call)
    assert info.value.seconds == 45
    assert clock.sleeps == []


def test_wait_past_the_invocation_deadline_is_a_long_wait():
    clock = FakeClock()
    call, _ = failing([ProviderError("Provider.RateLimited", "429", retry_after=5)])
    with pytest.raises(LongWait):
        make_loop(clock, deadline=clock.now + 3).run(call)


def test_rate_limited_past_the_ceiling_fails_the_job_with_a_clear_message():
    clock = FakeClock()
    call, _ = failing([ProviderError("Provider.RateLimited", "429", retry_after=8)] * 3)
    with pytest.raises(RateLimitCeiling, match="rate-limiting this job"):
        make_loop(clock, ceiling_seconds=20).run(call)


def test_fatal_errors_are_not_retried():
    clock = FakeClock()
    call, calls = failing([ProviderError("Provider.QuotaExhausted", "no quota", fatal=True)])
    with pytest.raises(ProviderError):
        make_loop(clock).run(call)
    assert calls["n"] == 1 and clock.sleeps == []


def test_gate_holds_every_request_until_the_provider_allows():
    clock = FakeClock()
    gate = Gate(clock, clock.sleep)
    gate.hold_until(clock.now + 3)
    assert gate.wait() == 3
    assert gate.wait() == 0


class FrozenClock(FakeClock):
    """Time moves only when the test moves it: sleeps are recorded, so threads' waits can overlap in fake time."""

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.sleeps.append(seconds)

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()


def test_four_requests_waiting_out_the_same_window_count_its_wall_clock_time_once():
    clock = FrozenClock()
    loop = make_loop(clock, inline_wait_max=60)
    together = threading.Barrier(4, timeout=10)  # all four requests are out when the provider answers 429

    def request() -> str:
        errors = [ProviderError("Provider.RateLimited", "429", retry_after=30)]

        def call() -> str:
            if errors:
                together.wait()
                raise errors.pop()
            return "ok"

        return loop.run(call)

    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(request())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == ["ok"] * 4
    assert loop.stats.rate_limited == 4  # four 429s
    assert loop.stats.rate_limited_seconds == 30  # one 30 s window of wall-clock time, not 4 x 30


def test_overlapping_waits_count_their_union_and_separate_ones_their_sum():
    clock = FrozenClock()
    loop = make_loop(clock, inline_wait_max=60, deadline=clock.now + 3600)

    def limited_once(seconds: float):
        call, _ = failing([ProviderError("Provider.RateLimited", "429", retry_after=seconds)])
        return call

    loop.run(limited_once(30))  # [0, 30]
    clock.now += 10
    loop.run(limited_once(30))  # [10, 40]: only 10 s past what is counted
    assert loop.stats.rate_limited_seconds == 40
    clock.now += 100
    loop.run(limited_once(5))  # [110, 115]: apart from the rest
    assert loop.stats.rate_limited_seconds == 45
    clock.now += 1
    loop.run(limited_once(2))  # [111, 113]: within what is counted
    assert loop.stats.rate_limited_seconds == 45
    assert loop.stats.rate_limited == 4


def test_eight_waits_of_one_window_stay_under_a_ceiling_their_sum_would_pass():
    clock = FrozenClock()
    loop = make_loop(clock, inline_wait_max=60, ceiling_seconds=100)
    for _ in range(8):  # eight requests of one invocation waiting out one 30 s window: 30 s, not 240 s
        call, _ = failing([ProviderError("Provider.RateLimited", "429", retry_after=30)])
        assert loop.run(call) == "ok"
    assert loop.stats.rate_limited_seconds == 30


def test_a_sibling_wait_that_ends_past_the_deadline_is_a_long_wait_not_a_sleep():
    clock = FakeClock()
    loop = make_loop(clock, deadline=clock.now + 10, inline_wait_max=60)
    loop.gate.hold_until(clock.now + 30)  # another request of this invocation was told to wait 30 s
    call, calls = failing([])
    with pytest.raises(LongWait) as info:
        loop.run(call)
    assert info.value.seconds == 30  # the worker re-enqueues for when the provider allows
    assert clock.sleeps == [] and calls["n"] == 0


def test_a_sibling_wait_longer_than_the_inline_maximum_is_a_long_wait_not_a_sleep():
    clock = FakeClock()
    loop = make_loop(clock, deadline=clock.now + 900, inline_wait_max=10)
    loop.gate.hold_until(clock.now + 45)
    call, calls = failing([])
    with pytest.raises(LongWait):
        loop.run(call)
    assert clock.sleeps == [] and calls["n"] == 0


def test_a_sibling_wait_that_ends_before_the_deadline_is_slept():
    clock = FakeClock()
    loop = make_loop(clock, deadline=clock.now + 10, inline_wait_max=10)
    loop.gate.hold_until(clock.now + 4)
    call, calls = failing([])
    assert loop.run(call) == "ok"
    assert clock.sleeps == [4] and calls["n"] == 1


def test_gate_wait_checks_the_deadline_before_sleeping():
    clock = FakeClock()
    gate = Gate(clock, clock.sleep)
    gate.hold_until(clock.now + 5)
    with pytest.raises(LongWait):
        gate.wait(deadline=clock.now + 4)
    assert clock.sleeps == []
    assert gate.wait(deadline=clock.now + 5) == 5  # ending right at the deadline is still in time


@pytest.mark.parametrize("spec", [
    {"ErrorEquals": []},
    {"ErrorEquals": ["X"], "IntervalSeconds": 0},
    {"ErrorEquals": ["X"], "BackoffRate": 0.5},
    {"ErrorEquals": ["X"], "MaxAttempts": -1},
    {"ErrorEquals": ["X"], "JitterStrategy": "HALF"},
])
def test_retrier_rejects_invalid_specs(spec):
    with pytest.raises(ValueError):
        Retrier.from_asl(spec)


def test_retrier_delay_respects_max_delay():
    r = Retrier.from_asl({"ErrorEquals": ["X"], "IntervalSeconds": 1, "BackoffRate": 3, "MaxDelaySeconds": 5})
    assert [r.delay(n, random.Random()) for n in (1, 2, 3)] == [1, 3, 5]


def test_a_hold_moved_further_out_while_a_request_sleeps_is_waited_out_too():
    """A sibling's 429 during the sleep moves the process's hold: leaving at the end of the shorter one would
    reach the provider inside the window it has just announced."""
    clock = FakeClock()
    gate = Gate(clock, clock.sleep)

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if len(clock.sleeps) == 1:
            gate.hold_until(clock.now + 5)  # another thread's 429, answered while this one slept

    gate.sleep = sleep
    gate.hold_until(clock.now + 2)
    start = clock.now
    assert gate.wait() == 7
    assert (clock.now - start, clock.sleeps) == (7, [2, 5])
