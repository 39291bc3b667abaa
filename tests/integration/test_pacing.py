"""Pacing against a provider that enforces its limit over rolling short windows: the simulator's window mode, the
fleet-wide 429 hold seen by turns already handed out, limits learned from headers, tokens reserved then settled.

Each limiter here is a worker's: its own SharedLimiter on one DynamoDB item (moto server), asking the simulator
through the real openai client. Time is a FrozenClock (it moves only when a test moves it), so turns are exact.
"""

from __future__ import annotations

import dataclasses
import uuid

import openai
import pytest

from chalicelib.categorize import provider
from chalicelib.categorize.errors import QuotaBusy
from chalicelib.categorize.limiter import SharedLimiter
from chalicelib.categorize.types import Item
from chalicelib.reports.service import DEFAULT_CATEGORIES
from chalicelib.tables import Control
from local.simulator import Limiter, Simulator
from tests.integration.test_shared_quota import FrozenClock

CATS = list(DEFAULT_CATEGORIES)
ITEMS = [Item("v0", "UBER *TRIP", "ride"), Item("v1", "MARRIOTT", "hotel")]


def worker(clock: FrozenClock, key: str, **kwargs) -> SharedLimiter:
    return SharedLimiter(**{"rpm": None, "tpm": None, **kwargs}, clock=clock, sleep=clock.sleep, key=key)


def new_key() -> str:
    return f"limiter#test-{uuid.uuid4().hex}"


def ask(sim: Simulator, limiter: SharedLimiter | None, key: str = "sk-test") -> None:
    provider.ask(provider.client(key, sim.url), "gpt-4o-mini", ITEMS, CATS, limiter)


# --- the simulator's rolling window -----------------------------------------------------------------------------


def test_a_rolling_window_counts_every_arrival_of_the_last_second_where_a_bucket_lets_a_burst_through():
    """120 a minute: two requests at once, then one half a second later. The bucket (one second of the limit)
    has refilled one request by then; the rolling window still holds both, so the third waits for the first to
    leave it."""
    bucket = Limiter("requests", 120, burst_seconds=1.0, now=0.0)
    window = Limiter("requests", 120, burst_seconds=1.0, now=0.0, window_seconds=1.0)
    for limit in (bucket, window):
        for now in (0.0, 0.0):
            assert limit.wait(1, now) == 0.0
            limit.take(1, now)
    assert bucket.wait(1, 0.5) == 0.0
    assert window.wait(1, 0.5) == pytest.approx(0.5)


def test_the_window_mode_answers_a_burst_with_429_through_the_client():
    with Simulator(rpm=120, window_seconds=1.0) as sim:
        api = provider.client("sk-burst", sim.url)
        for _ in range(2):
            provider.ask(api, "gpt-4o-mini", ITEMS, CATS)
        with pytest.raises(provider.ProviderError) as limited:
            provider.ask(api, "gpt-4o-mini", ITEMS, CATS)
        stats = sim.stats()
    assert limited.value.name == "Provider.RateLimited"
    assert 0 < limited.value.retry_after <= 1.0
    assert (stats["ok"], stats["rate_limited"], stats["faults"]) == (2, 1, {"limit_requests": 1})


def test_a_fleet_paced_by_the_limiter_meets_no_429_from_the_window_over_the_wire():
    """Two workers' limiters, real clocks, at the limiter's margin: six requests through a 2-a-second window."""
    with Simulator(rpm=120, window_seconds=1.0) as sim:
        key = new_key()
        workers = [SharedLimiter(120, None, margin=0.8, lead=0.05, key=key) for _ in range(2)]
        for n in range(6):
            ask(sim, workers[n % 2])
        stats = sim.stats()
    assert (stats["ok"], stats["rate_limited"]) == (6, 0)


# --- a 429 holds the fleet, queued turns included ---------------------------------------------------------------


def test_a_hold_recorded_while_a_turn_is_queued_sends_that_request_after_the_hold(sim):
    """Worker B holds a turn 1 s away and sleeps; meanwhile worker A's request meets a 429 saying 3 s. B looks
    at the item before its turn, sees the hold, and takes a new turn at its end instead of meeting the 429."""
    clock = FrozenClock()
    key = new_key()
    worker_a = dataclasses.replace(worker(clock, key, rpm=60), sleep=lambda seconds: None)
    worker_b = worker(clock, key, rpm=60, check_ahead=0.2)
    worker_a.acquire(100)  # the turn now: B's is 1 s away
    sim.configure(rate_limit_burst=1, burst_retry_after=3.0)
    real_sleep = clock.sleep

    def sleep_while_a_meets_a_429(seconds: float) -> None:
        if len(clock.slept) == 0:
            with pytest.raises(provider.ProviderError):
                ask(sim, worker_a)  # A's own next turn is 2 s away: it reserves it, sends, meets the 429
        real_sleep(seconds)

    clock.sleep = sleep_while_a_meets_a_429  # type: ignore[method-assign]
    worker_b.sleep = clock.sleep
    assert worker_b.acquire(100) == pytest.approx(3.0)  # the hold's end, not the turn 1 s away
    assert clock.slept[0] == pytest.approx(0.8)  # it slept until just before its first turn, then looked


def test_a_turn_missed_by_more_than_late_max_is_not_spent():
    """A worker that wakes late (a busy machine) does not send on a turn long past: its request would crowd the
    window of the requests paced after it. It takes the next turn instead."""
    clock = FrozenClock()
    key = new_key()
    sleepy = worker(clock, key, rpm=60, late_max=0.05)
    worker(clock, key, rpm=60).acquire(100)  # someone's turn now; the sleepy worker's is 1 s away

    def oversleep(seconds: float) -> None:
        clock.slept.append(seconds)
        clock.now += seconds + (0.3 if len(clock.slept) == 1 else 0.0)  # the first sleep overruns by 0.3 s

    sleepy.sleep = oversleep
    assert sleepy.acquire(100) == pytest.approx(2.0)  # its 1 s turn was missed; the next is 1 s after it


# --- limits learned from the provider's headers -----------------------------------------------------------------


@pytest.mark.sim(rpm=600, tpm=600_000)
def test_limits_are_learned_from_the_first_answer_while_the_others_wait_for_it(sim):
    clock = FrozenClock()
    key = new_key()
    probe, other = worker(clock, key, learn=True), worker(clock, key, learn=True, wait_max=0.0)
    assert probe.acquire(100) == 0.0  # nothing known: this request goes alone to learn the limits
    with pytest.raises(QuotaBusy):
        other.acquire(100)  # the probe is out: the others wait for its answer (here: none may wait)
    raw = provider.client("sk-test", sim.url).chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "[]"}])
    probe.answered(raw.headers)
    item = Control.get(key, consistent_read=True)
    assert (float(item.learned_rpm), float(item.learned_tpm), item.probe_until) == (600.0, 600_000.0, None)
    paced = dataclasses.replace(other, wait_max=None, margin=0.5)  # at half the learned 10 a second: 5 a second
    assert [paced.acquire(100) for _ in range(3)] == [0.0, pytest.approx(0.2), pytest.approx(0.4)]


def test_a_fleet_asking_through_the_real_client_learns_the_limit_on_its_own(sim):
    sim.configure(rpm=6000)
    clock = FrozenClock()
    key = new_key()
    fleet = worker(clock, key, learn=True)
    ask(sim, fleet)  # the probe: asks, and its answer teaches the limit
    assert float(Control.get(key, consistent_read=True).learned_rpm) == 6000.0
    assert [fleet.acquire(100) for _ in range(2)] == [0.0, pytest.approx(0.01)]


def test_a_provider_that_advertises_no_limit_is_not_paced(sim):
    clock = FrozenClock()
    key = new_key()
    fleet = worker(clock, key, learn=True)
    ask(sim, fleet)  # the simulator with no limits sends no x-ratelimit-* headers
    item = Control.get(key, consistent_read=True)
    assert (float(item.learned_rpm), float(item.learned_tpm)) == (0.0, 0.0)
    assert [fleet.acquire(100) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert clock.slept == []


def test_an_error_page_without_limits_teaches_nothing_and_frees_the_probe(sim):
    sim.configure(fail_first=1, fail_status=502)
    clock = FrozenClock()
    key = new_key()
    fleet = worker(clock, key, learn=True)
    with pytest.raises(provider.ProviderError):
        ask(sim, fleet)
    item = Control.get(key, consistent_read=True)
    assert item.learned_rpm is None and item.probe_until is None  # the next request probes at once
    assert worker(clock, key, learn=True, wait_max=0.0).acquire(100) == 0.0


def test_a_probe_that_gets_no_answer_at_all_frees_the_probe_for_the_next_request():
    """A timeout or a dropped connection brings no headers and no status: the probe is freed at once, not held
    for PROBE_SECONDS while every other worker's requests wait on it (the chaos test saw the fleet stall ~10 s,
    and the reaper take live jobs for dead)."""
    from local.stack import free_port

    clock = FrozenClock()
    key = new_key()
    fleet = worker(clock, key, learn=True)
    nowhere = provider.client("sk-test", f"http://127.0.0.1:{free_port()}/v1", 2.0)  # connection refused
    with pytest.raises(provider.ProviderError):
        provider.ask(nowhere, "gpt-4o-mini", ITEMS, CATS, fleet)
    item = Control.get(key, consistent_read=True)
    assert item.learned_rpm is None and item.probe_until is None  # the next request probes at once
    assert worker(clock, key, learn=True, wait_max=0.0).acquire(100) == 0.0


# --- tokens reserved, then settled ------------------------------------------------------------------------------


@pytest.mark.sim(tpm=600_000, settle_tokens=True)
def test_a_request_reserves_its_estimate_and_the_answer_gives_back_what_it_did_not_use(sim):
    clock = FrozenClock()
    key = new_key()
    fleet = worker(clock, key, tpm=600_000)  # 10,000 tokens a second: the level holds that much
    messages, budget = [{"role": "user", "content": "x" * 4000}], 50
    assert provider.estimate_tokens(messages, budget) == 1000 + 4 + 3 + 50
    ask(sim, fleet)
    stats = sim.stats()
    used = stats["tokens"]["prompt"] + stats["tokens"]["completion"]
    level = float(Control.get(key, consistent_read=True).level_tokens)
    assert level == pytest.approx(10_000 - used, abs=0.01)  # reserved, then settled down to the usage
    assert stats["tokens"]["settled"] > 0  # the provider gave its unused charge back too


def test_an_answer_that_used_more_than_its_reservation_takes_the_rest_from_the_level():
    clock = FrozenClock()
    key = new_key()
    fleet = worker(clock, key, tpm=60_000)  # 1,000 tokens a second
    assert fleet.acquire(400) == 0.0  # level 1,000 -> 600
    fleet.answered(None, reserved=400, used=900)  # settled up: 500 more than reserved -> 100
    assert float(Control.get(key, consistent_read=True).level_tokens) == pytest.approx(100)
    assert fleet.acquire(400) == pytest.approx(0.3)  # 300 tokens short at 1,000 a second


def test_settlement_never_fills_the_level_past_its_capacity():
    clock = FrozenClock()
    key = new_key()
    fleet = worker(clock, key, tpm=60_000)
    fleet.acquire(400)
    fleet.answered(None, reserved=5_000, used=0)  # a bogus reservation cannot bank a burst
    assert float(Control.get(key, consistent_read=True).level_tokens) == pytest.approx(1_000)


def test_the_estimate_counts_other_scripts_high_and_the_schema_too():
    ascii_only = provider.estimate_tokens([{"role": "user", "content": "abcd" * 100}], 0)
    cjk = provider.estimate_tokens([{"role": "user", "content": "東京" * 200}], 0)
    schema = provider.schema_text(tuple(CATS))
    assert (ascii_only, cjk) == (100 + 7, 400 + 7)
    with_schema = provider.estimate_tokens([{"role": "user", "content": "abcd" * 100}], 0, schema)
    assert with_schema - ascii_only == pytest.approx(len(schema) / 4, abs=1)


def test_an_openai_rate_limit_error_is_what_the_window_answers():
    """The window's 429 is the SDK's RateLimitError (code rate_limit_exceeded), so the retry policy applies."""
    with Simulator(rpm=60, window_seconds=1.0) as sim:
        api = openai.OpenAI(base_url=sim.url, api_key="k", max_retries=0)
        api.chat.completions.create(model="m", messages=[{"role": "user", "content": "[]"}])
        with pytest.raises(openai.RateLimitError) as caught:
            api.chat.completions.create(model="m", messages=[{"role": "user", "content": "[]"}])
    assert caught.value.code == "rate_limit_exceeded"
    assert "retry-after-ms" in caught.value.response.headers


def test_the_fleet_holds_for_the_window_s_exact_retry_after_ms_not_the_whole_second():
    """A rolling window reopens in a quarter second: the fleet waits that, where the rounded-up retry-after would
    idle every worker a second for each 429 (the request that met it still waits its own floor)."""
    from tests.integration.test_shared_quota import Refusing, _rate_limit_error

    clock = FrozenClock()
    key = new_key()
    worker_a, worker_b = worker(clock, key, rpm=600), worker(clock, key, rpm=600)
    with pytest.raises(provider.ProviderError) as limited:
        provider.ask(Refusing(_rate_limit_error({"retry-after-ms": "250", "retry-after": "1"})), "m", ITEMS, CATS,
                     worker_a)
    assert limited.value.retry_after == 1.0  # what the retry loop waits for this request
    assert worker_b.acquire(100) == pytest.approx(0.25)
