"""The retry policy's executor on tenacity: which errors are retried (ErrorEquals), how long each wait is (the
provider's hint or the retrier's backoff), when it stops (MaxAttempts, the deadline), and the counts the worker
records (tenacity's attempts). Driven with a fake clock: no real waiting, no moto, no network."""

from __future__ import annotations

import threading

import httpx2 as httpx
import openai
import pytest

from chalicelib.categorize import provider
from chalicelib.categorize.errors import LongWait, ProviderError, RetriesExhausted
from chalicelib.categorize.retry import RetryLoop
from tests.unit import retry_fakes as fakes
from tests.unit.retry_fakes import FakeClock, failing

SERVER_ERROR = ProviderError("Provider.ServerError", "500")


def make_loop(clock: FakeClock, policy=None, **kw) -> RetryLoop:
    return fakes.make_loop(clock, policy, seed=7, **{"inline_wait_max": 30, **kw})


def rate_limited(headers: dict[str, str]) -> ProviderError:
    """A 429 as the provider sends it, named by provider.classify (the hint comes from its headers)."""
    response = httpx.Response(429, headers=headers, request=httpx.Request("POST", "http://sim/v1/chat/completions"))
    return provider.classify(openai.RateLimitError("limited", response=response, body={"code": "rate_limit_exceeded"}))


SLOW_BACKOFF = ({"ErrorEquals": ["Provider.RateLimited"], "IntervalSeconds": 8, "BackoffRate": 2.0,
                 "MaxAttempts": 100, "JitterStrategy": "NONE"},)


@pytest.mark.parametrize("headers, wait", [
    ({"retry-after": "3"}, 3.0),
    ({"retry-after-ms": "2500"}, 2.5),
    ({"x-ratelimit-reset-requests": "1.5s", "x-ratelimit-reset-tokens": "4s"}, 4.0),
], ids=["retry-after", "retry-after-ms", "x-ratelimit-reset"])
def test_the_provider_s_hint_wins_over_a_longer_backoff(headers, wait):
    clock = FakeClock()
    call, _ = failing([rate_limited(headers), rate_limited(headers)])
    assert make_loop(clock, SLOW_BACKOFF).run(call) == "ok"
    assert clock.sleeps == [wait, wait]  # not 8 s then 16 s: the provider knows when its window reopens


def test_the_provider_s_hint_wins_over_a_shorter_backoff():
    clock = FakeClock()
    call, _ = failing([rate_limited({"retry-after": "20"})])
    loop = make_loop(clock)  # the default policy: a 429's backoff is at most 1 s on the first attempt
    assert loop.run(call) == "ok"
    assert clock.sleeps == [20.0]
    assert loop.stats.rate_limited_seconds == 20.0


def test_without_a_hint_the_retrier_s_backoff_is_the_wait():
    clock = FakeClock()
    call, _ = failing([rate_limited({}), rate_limited({})])
    make_loop(clock, SLOW_BACKOFF).run(call)
    assert clock.sleeps == [8.0, 16.0]


def test_retries_and_429s_are_counted_across_calls_and_error_kinds():
    clock = FakeClock()
    loop = make_loop(clock)
    first, _ = failing([rate_limited({"retry-after": "2"}), SERVER_ERROR, rate_limited({"retry-after": "2"})])
    second, _ = failing([SERVER_ERROR, SERVER_ERROR])
    assert loop.run(first) == loop.run(second) == "ok"
    assert (loop.stats.retries, loop.stats.rate_limited, loop.stats.rate_limited_seconds) == (5, 2, 4.0)


def test_a_call_whose_attempts_run_out_counts_the_retries_it_made():
    clock = FakeClock()
    loop = make_loop(clock)
    call, calls = failing([SERVER_ERROR] * 4)
    with pytest.raises(RetriesExhausted) as info:
        loop.run(call)
    assert info.value.cause is not None and info.value.cause.name == "Provider.ServerError"
    assert calls["n"] == 4 and loop.stats.retries == 3


def test_a_429_turned_into_a_long_wait_counts_as_a_retry_a_backoff_past_the_deadline_does_not():
    """The 429's request is made again after the requeue (counted now, with its 429); a 5xx whose backoff would
    end past the deadline gives up in this invocation (its chunk is asked again from its checkpoint)."""
    clock = FakeClock()
    loop = make_loop(clock, inline_wait_max=10)
    call, _ = failing([rate_limited({"retry-after": "45"})])
    with pytest.raises(LongWait) as waited:
        loop.run(call)
    assert waited.value.seconds == 45 and (loop.stats.retries, loop.stats.rate_limited) == (1, 1)

    clock = FakeClock()
    loop = make_loop(clock, deadline=clock.now + 1.5)
    call, calls = failing([SERVER_ERROR, SERVER_ERROR])
    with pytest.raises(LongWait) as waited:
        loop.run(call)
    assert waited.value.seconds == 2.0 and waited.value.cause is SERVER_ERROR  # 1 s slept, the next is 2 s
    assert calls["n"] == 2 and clock.sleeps == [1.0] and loop.stats.retries == 1


def test_calls_on_several_threads_add_up_their_retries():
    clock = FakeClock()
    loop = make_loop(clock, deadline=clock.now + 3600)
    threads = [threading.Thread(target=lambda: loop.run(failing([SERVER_ERROR, SERVER_ERROR])[0]))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert loop.stats.retries == 8


def test_states_all_retries_every_provider_error_but_nothing_else():
    policy = ({"ErrorEquals": ["States.ALL"], "IntervalSeconds": 1, "MaxAttempts": 2},)
    clock = FakeClock()
    call, calls = failing([ProviderError("Provider.Whatever", "?"), SERVER_ERROR])
    assert make_loop(clock, policy).run(call) == "ok" and calls["n"] == 3
    bug, calls = failing([KeyError("a bug of ours")])
    with pytest.raises(KeyError):
        make_loop(clock, policy).run(bug)
    assert calls["n"] == 1


def test_an_error_no_retrier_names_is_raised_at_once():
    clock = FakeClock()
    call, calls = failing([ProviderError("Provider.BadRequest", "400")])
    with pytest.raises(ProviderError, match="400"):
        make_loop(clock).run(call)
    assert calls["n"] == 1 and clock.sleeps == []


def test_the_first_retrier_that_names_the_error_applies():
    policy = ({"ErrorEquals": ["Provider.Timeout"], "IntervalSeconds": 1, "MaxAttempts": 1},
              {"ErrorEquals": ["States.ALL"], "IntervalSeconds": 5, "MaxAttempts": 5})
    clock = FakeClock()
    timeouts, calls = failing([ProviderError("Provider.Timeout", "t")] * 3)
    with pytest.raises(RetriesExhausted):
        make_loop(clock, policy).run(timeouts)
    assert calls["n"] == 2 and clock.sleeps == [1.0]


def test_max_attempts_zero_never_retries():
    policy = ({"ErrorEquals": ["Provider.ServerError"], "MaxAttempts": 0},)
    clock = FakeClock()
    call, calls = failing([SERVER_ERROR])
    with pytest.raises(RetriesExhausted):
        make_loop(clock, policy).run(call)
    assert calls["n"] == 1 and clock.sleeps == []


def test_each_retrier_counts_its_own_attempts_within_one_call():
    """Tenacity numbers every attempt of a call; the policy counts them per retrier, so 429s between 5xx answers
    neither use up the 5xx attempts nor reset their backoff."""
    clock = FakeClock()
    hint = {"retry-after": "3"}
    call, _ = failing([SERVER_ERROR, rate_limited(hint), SERVER_ERROR, rate_limited(hint), SERVER_ERROR])
    assert make_loop(clock).run(call) == "ok"
    assert clock.sleeps == [1.0, 3.0, 2.0, 3.0, 4.0]
