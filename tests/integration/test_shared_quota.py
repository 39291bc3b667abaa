"""One provider quota for the fleet: the DynamoDB limiter's turns, and chunks that ask about a vendor once."""

from __future__ import annotations

import dataclasses
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx2 as httpx
import openai
import pytest

from chalicelib.categorize import cache, claims, pipeline, provider
from chalicelib.categorize import limiter as limiter_module
from chalicelib.categorize.errors import ProviderError, QuotaBusy
from chalicelib.categorize.limiter import SharedLimiter, key_for
from chalicelib.categorize.normalize import normalize_vendor
from chalicelib.categorize.retry import DEFAULT_POLICY, RATE_LIMIT_FLOOR_SECONDS, RetryLoop
from chalicelib.categorize.types import Answer, Item
from chalicelib.reports.service import DEFAULT_CATEGORIES
from chalicelib.settings import get_settings
from chalicelib.tables import Control, Job
from tests.integration.test_worker import Api, assert_every_line_once
from tests.support import Ctx, deliver, expense_lines, receive, vendors, wait_for

CATS = DEFAULT_CATEGORIES
TENANT = "tenant-shared-quota"  # the cache is a tenant's: these tests read and write one tenant's answers


class FrozenClock:
    """Time stands still unless a sleep moves it: the turns a limiter hands out, without waiting for them."""

    def __init__(self) -> None:
        self.now = 1_000_000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def limiter(clock: FrozenClock, **kwargs) -> SharedLimiter:
    return SharedLimiter(clock=clock, sleep=clock.sleep, key=f"limiter#test-{uuid.uuid4().hex}", **kwargs)


def test_the_limiter_hands_out_turns_in_order_one_interval_apart():
    clock = FrozenClock()
    bucket = limiter(clock, rpm=60, tpm=None)  # one request a second, a burst of one
    assert [bucket.acquire(100) for _ in range(4)] == [0.0, 1.0, 2.0, 3.0]
    assert clock.slept == [1.0, 2.0, 3.0]  # each waits for its own turn, none competes again
    clock.now += 10  # the queue drains; the bucket refills to one second of the limit, no more
    assert [bucket.acquire(100) for _ in range(2)] == [0.0, 1.0]


def test_a_tenants_share_banks_one_more_turn_only_after_an_idle_spell():
    """A tenant's own bucket (`share`): back from idle, two turns at once (a small job's first two requests go
    out together); asking without pause, one turn per interval, however long it goes on; the shared bucket never
    banks more than one, idle or not."""
    clock = FrozenClock()
    shared = limiter(clock, rpm=60, tpm=None)
    own = dataclasses.replace(shared.share(0.5, f"{shared.key}#tenant#b"), wait_max=0.0)  # one turn per 2 s

    def turns_now() -> int:
        n = 0
        with pytest.raises(QuotaBusy):
            while True:
                own.acquire(100)
                n += 1
        return n

    assert turns_now() == 2  # a tenant never seen: idle
    for _ in range(12):  # 24 s asking as each turn comes: never more than one banked
        clock.now += 2.0
        assert turns_now() == 1
    clock.now += limiter_module.SHARE_IDLE_SECONDS
    assert turns_now() == 2
    clock.now += 1.0
    assert turns_now() == 0  # the credit spent, the pace is the share's again
    clock.now += limiter_module.SHARE_IDLE_SECONDS + 30
    assert [shared.acquire(100) for _ in range(2)] == [0.0, 1.0]  # the shared bucket: one at once, always


def test_a_turn_too_far_away_is_refused_and_reserves_nothing():
    clock = FrozenClock()
    bucket = limiter(clock, rpm=None, tpm=6000, wait_max=1.5)  # 100 tokens a second
    assert bucket.acquire(100) == 0.0
    assert bucket.acquire(100) == pytest.approx(1.0)
    with pytest.raises(QuotaBusy) as refused:
        bucket.acquire(100)  # its turn would be 2 s away
    assert refused.value.seconds == pytest.approx(2.0)
    clock.now += 1.0
    assert bucket.acquire(100) == pytest.approx(1.0)  # the refused request took no tokens


def test_a_429_seen_by_one_worker_makes_the_next_request_of_every_worker_wait_out_its_window(sim):
    """Worker A's request gets a 429 saying 2 s (through the real client); worker B, another limiter on the same
    bucket, asks right after: its turn is 2 s away, though the bucket had room (10 requests a second)."""
    clock = FrozenClock()
    key = f"limiter#test-{uuid.uuid4().hex}"
    worker_a = SharedLimiter(rpm=600, tpm=None, clock=clock, sleep=clock.sleep, key=key)
    worker_b = SharedLimiter(rpm=600, tpm=None, clock=clock, sleep=clock.sleep, key=key)
    sim.configure(rate_limit_burst=1, burst_retry_after=2.0)
    items = [Item("v0", "UBER *TRIP", "")]
    with pytest.raises(ProviderError) as limited:
        provider.ask(provider.client("sk-test", sim.url), "gpt-4o-mini", items, CATS, worker_a)
    assert limited.value.name == "Provider.RateLimited" and limited.value.retry_after == 2.0
    assert worker_b.acquire(100) == pytest.approx(2.0)
    assert worker_b.acquire(100) == pytest.approx(2.1)  # the requests after it are paced from there, no burst
    assert worker_a.acquire(100) == pytest.approx(2.2)


class Refusing:
    """The slice of the openai client provider.ask uses, answering every request with `error`."""

    def __init__(self, error: Exception) -> None:
        def parse(**kwargs):
            raise error

        self.chat = SimpleNamespace(completions=SimpleNamespace(with_raw_response=SimpleNamespace(parse=parse)))


def _rate_limit_error(headers: dict, code: str = "rate_limit_exceeded") -> openai.RateLimitError:
    request = httpx.Request("POST", "http://sim/v1/chat/completions")
    response = httpx.Response(429, headers=headers, request=request)
    return openai.RateLimitError("limited", response=response, body={"code": code, "message": "limited"})


@pytest.mark.parametrize("headers, wait", [
    ({}, RATE_LIMIT_FLOOR_SECONDS), ({"retry-after": "0"}, RATE_LIMIT_FLOOR_SECONDS),
    ({"retry-after-ms": "3500"}, 3.5),
], ids=["no hint", "zero", "3.5 s"])
def test_a_429_holds_the_fleet_for_its_hint_and_at_least_the_floor(headers, wait):
    clock = FrozenClock()
    worker_a = limiter(clock, rpm=600, tpm=None)
    worker_b = dataclasses.replace(worker_a)  # another worker's limiter on the same bucket
    with pytest.raises(ProviderError):
        provider.ask(Refusing(_rate_limit_error(headers)), "m", [Item("v0", "x", "")], CATS, worker_a)
    assert worker_b.acquire(100) == pytest.approx(wait)


def test_a_quota_error_is_not_a_window_and_holds_nobody():
    clock = FrozenClock()
    worker_a = limiter(clock, rpm=600, tpm=None)
    with pytest.raises(ProviderError) as failed:
        provider.ask(Refusing(_rate_limit_error({}, code="insufficient_quota")), "m", [Item("v0", "x", "")], CATS,
                     worker_a)
    assert failed.value.fatal
    # The next turn is the one after the refused request's own (one interval at 10 a second), not a window later.
    assert dataclasses.replace(worker_a).acquire(100) == pytest.approx(0.1)


def test_a_hold_on_the_token_bucket_gives_the_refused_request_its_turn_at_the_end_of_the_window():
    clock = FrozenClock()
    bucket = limiter(clock, rpm=None, tpm=60_000)  # 1000 tokens a second
    bucket.hold(3.0, tokens=500)
    assert bucket.acquire(500) == pytest.approx(3.0)
    assert bucket.acquire(500) == pytest.approx(3.5)


def test_a_hold_only_ever_lengthens_the_wait():
    clock = FrozenClock()
    bucket = limiter(clock, rpm=60, tpm=None)
    bucket.hold(5.0)
    bucket.hold(1.0)  # a shorter window seen later by another worker does not let anyone out early
    assert bucket.acquire(100) == pytest.approx(5.0)
    assert bucket.acquire(100) == pytest.approx(6.0)


def test_a_hold_is_at_most_the_longest_re_enqueue_delay():
    clock = FrozenClock()
    bucket = limiter(clock, rpm=60, tpm=None)
    bucket.hold(1e9)  # a bogus hint must not freeze the fleet for 31 years
    assert bucket.acquire(100) == pytest.approx(limiter_module.HOLD_MAX_SECONDS)


def test_a_hold_that_loses_a_race_with_an_acquire_reads_again_and_keeps_both(monkeypatch):
    """Another worker reserves a turn between the hold's read and its write: the hold's conditional write fails
    and it reads again, so neither the reservation nor the hold is lost."""
    clock = FrozenClock()
    holder = limiter(clock, rpm=60, tpm=None)
    other = dataclasses.replace(holder)
    other.acquire(100)  # level 0: the next turn is 1 s away
    real_read, raced = limiter_module._read, []

    def read_then_race(key):
        item = real_read(key)
        if not raced:
            raced.append(None)  # once: the racing acquire reads through this too
            raced[0] = other.acquire(100)  # reserved at level 0 -> -1, a turn 1 s away
        return item

    monkeypatch.setattr(limiter_module, "_read", read_then_race)
    holder.hold(4.0)
    monkeypatch.undo()
    assert raced == [pytest.approx(1.0)]
    assert other.acquire(100) == pytest.approx(4.0)  # the hold stands: nothing before 4 s
    assert float(Control.get(holder.key, consistent_read=True).version) == 4  # acquire, acquire, hold, acquire


def test_a_claimed_vendor_is_asked_by_its_holder_and_waited_for_by_the_others():
    job = f"j-{uuid.uuid4().hex[:8]}"
    a, b, c, d = (normalize_vendor(v) for v in vendors(4))
    mine, theirs = claims.take(job, CATS, [a, b, c], "chunk-1", hold_seconds=60)
    assert (mine, theirs) == ([a, b, c], [])
    mine, theirs = claims.take(job, CATS, [b, c, d], "chunk-2", hold_seconds=60)
    assert (mine, theirs) == ([d], [b, c])
    # Another job's chunks are not held up by this job's claims.
    assert claims.take(f"{job}-other", CATS, [b], "chunk-9", hold_seconds=60) == ([b], [])
    # chunk-1 answers b (under the bar: kept for this job only) and gives c back (its request was not made).
    cache.remember_many(CATS, [(b, "Airfare", 0.6)], "m", job_id=job, tenant=TENANT)
    claims.give_back(job, CATS, [c])
    asked: list[list[str]] = []

    def ask(vs: list[str]) -> dict[str, Answer]:
        asked.append(vs)
        return {v: Answer("", "Lodging", 0.9, "model", False) for v in vs}

    got = claims.wait_for(job, CATS, [b, c], "m", "chunk-2", 60, ask, deadline=time.monotonic() + 10,
                          tenant=TENANT)
    assert asked == [[c]]  # b came from chunk-1's answer; only the given-back claim was asked about again
    assert {v: a.category for v, a in got.items()} == {b: "Airfare", c: "Lodging"}


def test_a_claim_caught_in_a_transaction_conflict_is_waited_for_and_a_failed_take_keeps_nothing(monkeypatch):
    """Real DynamoDB cancels one of two transactions writing the same claims at once (TransactionConflict);
    moto serializes them, so the conflict is injected. A take that fails gives back what it had won."""
    from pynamodb.exceptions import CancellationReason, TransactWriteError, VerboseClientError

    job = f"j-{uuid.uuid4().hex[:8]}"
    names = [normalize_vendor(v) for v in vendors(101)]  # two transactions: 100 and 1
    real = claims.TransactWrite
    attempts: list[int] = []

    def refused(code: str, n: int) -> TransactWriteError:
        reasons = [CancellationReason(code) if i == 0 else None for i in range(n)]
        cause = VerboseClientError({"Error": {"Code": "TransactionCanceledException", "Message": code}},
                                   "TransactWriteItems", cancellation_reasons=reasons)
        return TransactWriteError("refused", cause=cause)

    class Flaky(real):
        def __exit__(self, *exc):
            attempts.append(len(self._put_items))
            if len(attempts) == 1:
                raise refused("TransactionConflict", len(self._put_items))  # the first vendor's claim raced
            if len(attempts) == 3:
                raise refused("ThrottlingError", len(self._put_items))  # the second transaction fails outright
            return super().__exit__(*exc)

    monkeypatch.setattr(claims, "TransactWrite", Flaky)
    with pytest.raises(TransactWriteError):
        claims.take(job, CATS, names, "chunk-1", hold_seconds=60)
    assert attempts == [100, 99, 1]
    monkeypatch.undo()
    # Nothing stays claimed by the failed take: another chunk gets every vendor.
    assert claims.take(job, CATS, names, "chunk-2", hold_seconds=60) == (names, [])
    # And a conflict alone leaves the vendor to wait for, not an error.
    monkeypatch.setattr(claims, "TransactWrite", Flaky)
    attempts.clear()
    other = [normalize_vendor(v) for v in vendors(3)]
    assert claims.take(job, CATS, other, "chunk-3", hold_seconds=60) == (other[1:], other[:1])


def test_a_lapsed_claim_is_taken_over():
    job = f"j-{uuid.uuid4().hex[:8]}"
    vendor = normalize_vendor(vendors(1)[0])
    # A holder whose time is up (a worker that died holding it): hold_seconds < 0 stands for a clock past it.
    assert claims.take(job, CATS, [vendor], "dead-worker", hold_seconds=-1.0) == ([vendor], [])
    assert claims.take(job, CATS, [vendor], "chunk-2", hold_seconds=60) == ([vendor], [])
    assert claims.take(job, CATS, [vendor], "chunk-3", hold_seconds=60) == ([], [vendor])


pytestmark = pytest.mark.sim(latency=0.3)  # the `sim` fixture (tests/conftest.py) with these knobs


def test_chunks_working_at_once_ask_the_model_about_each_vendor_once(sim):
    """Three chunks of one job, at the same moment, over lines that share their 60 vendors."""
    job = f"j-{uuid.uuid4().hex[:8]}"
    names = vendors(60)
    settings = get_settings()
    backend = pipeline.ModelBackend(provider.client("sk-test", sim.url), settings.openai_model,
                                    RetryLoop(DEFAULT_POLICY, deadline=time.monotonic() + 60, inline_wait_max=10,
                                              ceiling_seconds=3600),
                                    batch_size=10, concurrency=2)

    class Line:
        def __init__(self, n: int, vendor: str) -> None:
            self.line_id, self.vendor, self.description = f"l{n:03d}", vendor, "expense"

    def chunk(k: int) -> dict[str, Answer]:
        lines = [Line(i, names[(i + 20 * k) % 60]) for i in range(60)]  # each starts at a different vendor
        background = pipeline.Background()
        try:
            return pipeline.categorize(lines, CATS, settings, backend, {}, job, background, claim_owner=f"c{k}",
                                       tenant=TENANT)
        finally:
            background.wait()

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(chunk, range(3)))
    for answers in results:
        assert len(answers) == 60 and not any(a.needs_review for a in answers.values())
    asked = sim.stats()["requests_by_vendor"]
    assert sorted(asked.get(v.lower(), 0) for v in names) == [1] * 60


def test_a_chunk_with_no_turn_soon_hands_its_worker_back_and_finishes_later(client, token_for, sim):
    """The fleet's quota is spoken for (4 s of requests queued): the chunk asks nothing, is re-enqueued with a
    delay, counts no rate-limited time against the job, and finishes with every line once when it returns."""
    settings = dataclasses.replace(get_settings(), openai_api_key="sk-busy", openai_base_url=sim.url,
                                   openai_rpm=60.0, limiter_wait_max_seconds=1.0, fanout_threshold_lines=50,
                                   chunk_lines=40, line_batch_size=20, model_batch_size=10)
    api = Api(client, token_for())
    lines = expense_lines(80, vendors(20))
    job_id = api.start(lines)
    deliver(receive({job_id}), Ctx(), settings)  # the start: split into 2 chunks, a message each
    # Other workers hold the next 4 s of turns (one request a second).
    Control(key_for(sim.url, "sk-busy"), version=1, level_requests=-4.0, level_tokens=0.0, level_at=time.time()).save()
    deliver(receive({job_id}), Ctx(), settings)
    assert sim.stats()["requests"] == 0
    job = api.job(job_id)
    assert job["processedLines"] == 0 and job["status"] == "Processing"
    assert float(Job.get(job_id).rate_limited_seconds) == 0.0
    yields = [e for e in api.call("get", f"/jobs/{job_id}/events")[1]["items"] if e["type"] == "rate_limited"]
    assert yields and all(e["detail"]["by"] == "shared limiter" for e in yields), yields
    assert all(4 <= e["detail"]["requeuedWithDelaySeconds"] <= 6 for e in yields), yields
    assert receive({job_id}) == []  # delayed: no worker is handed the chunk before its turn
    # Back after their delay; from here on a worker may wait for its turn (no second hand-back to wait out).
    patient = dataclasses.replace(settings, limiter_wait_max_seconds=60.0)

    def finished() -> bool:
        messages = receive({job_id})
        if messages:
            deliver(messages, Ctx(), patient)
        return api.job(job_id)["status"] == "Completed"

    wait_for(finished, 30, interval=0.2, what="both chunks back and done")
    assert_every_line_once(api, job_id, lines)
    assert sim.stats()["rate_limited"] == 0
