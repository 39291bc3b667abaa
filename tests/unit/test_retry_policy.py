"""The ASL-style retry loop, driven with a fake clock: no real waiting."""

import random

import pytest

from chalicelib.categorize.errors import LongWait, ProviderError, RateLimitCeiling, RetriesExhausted
from chalicelib.categorize.retry import Gate, Retrier, RetryLoop


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make_loop(clock: FakeClock, **kw) -> RetryLoop:
    args = {"deadline": clock.now + 300, "inline_wait_max": 10, "ceiling_seconds": 600}
    args.update(kw)
    return RetryLoop(gate=Gate(clock, clock.sleep), rng=random.Random(1), **args)


def failing(errors: list[Exception], result: str = "ok"):
    calls = {"n": 0}

    def call() -> str:
        calls["n"] += 1
        if errors:
            raise errors.pop(0)
        return result

    return call, calls


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


def test_rate_limit_waits_exactly_what_the_provider_says_and_spares_the_attempts():
    clock = FakeClock()
    errors = [ProviderError("Provider.RateLimited", "429", retry_after=2.5)] * 5 + \
             [ProviderError("Provider.ServerError", "500")] * 3
    call, _ = failing(list(errors))
    loop = make_loop(clock)
    assert loop.run(call) == "ok"
    assert clock.sleeps[:5] == [2.5] * 5  # never less than the provider asked
    assert clock.sleeps[5:] == [1.0, 2.0, 4.0]  # 429s did not use up the 5xx attempts
    assert loop.stats.rate_limited == 5


def test_rate_limit_without_hint_uses_full_jitter_backoff_within_the_cap():
    clock = FakeClock()
    call, _ = failing([ProviderError("Provider.RateLimited", "429")] * 8)
    make_loop(clock, inline_wait_max=100).run(call)
    caps = [min(60, 2 ** n) for n in range(8)]
    assert all(0 <= s <= cap for s, cap in zip(clock.sleeps, caps, strict=True))


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
