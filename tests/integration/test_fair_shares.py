"""Fair shares between tenants against the moto server and the simulator: two tenants' jobs at once on two workers
(the real SQS handler, one message per invocation as Lambda's batch size 1), and tenants' requests through their
gates over one shared limiter."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from chalicelib import deps
from chalicelib.auth import tenant_key
from chalicelib.categorize.limiter import SharedLimiter
from chalicelib.fair import demand
from chalicelib.fair import queue as fair_queue
from chalicelib.fair.budget import TenantGate
from chalicelib.fair.shares import Rules, Snapshot, Weights
from chalicelib.messages import NotAWorkMessage
from chalicelib.messages import parse as parse_message
from chalicelib.settings import get_settings
from chalicelib.worker import fairness
from tests.driver import Driver
from tests.integration.test_worker import assert_every_line_once
from tests.support import Ctx, deliver, expense_lines, receive, vendors, wait_for

pytestmark = pytest.mark.sim(latency=0.2)


@pytest.fixture
def fair(sim, monkeypatch):
    """Settings with fair shares on, small chunks (a 1,200-line job is 12 chunks of 2 batches), for the workers
    here and for every message sent (the API's included)."""
    settings = dataclasses.replace(get_settings(), openai_api_key="sk-test", openai_base_url=sim.url,
                                   fair_shares=True, fanout_threshold_lines=100, chunk_lines=100, line_batch_size=50,
                                   line_read_ahead=1, model_batch_size=10, model_concurrency=2)
    monkeypatch.setattr(fair_queue, "get_settings", lambda: settings)
    return settings


class Admissions:
    """Every message an invocation took (demand.take), in order: (tenant, message key)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.taken: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        real = demand.take

        def take(tenant: str, message: str, invocation: str, lapses_at: float) -> None:
            with self._lock:
                self.taken.append((tenant, message))
            real(tenant, message, invocation, lapses_at)

        monkeypatch.setattr(fairness.demand, "take", take)

    def snapshot(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self.taken)


@pytest.fixture
def workers(fair) -> Iterator[set[str]]:
    """Two workers taking one message at a time for the tenants (keys) in the yielded set; other tests' strays
    are deleted. By tenant, not job: a job's first message may arrive before the test knows the job's id."""
    tenants: set[str] = set()
    stop = threading.Event()
    sqs, url = deps.client("sqs"), deps.work_queue_url()

    def loop() -> None:
        while not stop.is_set():
            got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, WaitTimeSeconds=1,
                                      AttributeNames=["ApproximateReceiveCount"]).get("Messages", [])
            for m in got:
                if getattr(_parsed(m["Body"]), "tenant", None) in tenants:
                    deliver([m], Ctx(), fair)
                else:
                    sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    yield tenants
    stop.set()
    for t in threads:
        t.join(timeout=30)


def _parsed(body: str) -> object:
    try:
        return parse_message(body)
    except NotAWorkMessage:
        return None


def _driver(client, token_for, workers: set[str]) -> Driver:
    """A user of a new tenant whose messages the workers take."""
    claim = f"tenant-{uuid.uuid4().hex[:8]}"
    workers.add(tenant_key(claim, ""))
    return Driver(client, token_for(tenant=claim))


def test_a_small_job_of_another_tenant_is_not_held_behind_a_large_jobs_chunks(client, token_for, workers,
                                                                              monkeypatch):
    taken = Admissions(monkeypatch)
    a, b = _driver(client, token_for, workers), _driver(client, token_for, workers)
    a_lines, b_lines = expense_lines(1200, vendors(300)), expense_lines(40, vendors(12), prefix="b")
    report = f"r-{uuid.uuid4().hex[:12]}"
    assert b.call("post", "/reports", {"reportId": report, "name": "B",
                                       "deliveryTargets": [{"type": "api", "mode": "async"}]})[0] == 201
    assert b.call("post", "/expenses", {"lines": b_lines})[0] == 201
    a_job = a.start(a_lines)
    # A has fanned out: its 12 chunk messages are on the queue, and the workers have begun taking them.
    wait_for(lambda: any("#" in key for _, key in taken.snapshot()), timeout=30, what="A's first chunk taken")
    before_b = taken.snapshot()
    status, body = b.call("post", f"/reports/{report}/generate", {"period": "2026-01"})
    assert status == 202, body
    b_job = body["jobId"]
    wait_for(lambda: b.job(b_job)["status"] == "Completed", timeout=60, what="B's job Completed")
    a_at_b_done = a.job(a_job)

    order = taken.snapshot()
    b_at = order.index(next(t for t in order if t[1] == b_job))
    a_chunks_before = {key for _, key in before_b if key.startswith(a_job + "#")}
    jumped = 12 - len(a_chunks_before)  # A's chunks whose messages were ahead of B's in the queue
    first_taken_meanwhile = {key for _, key in order[len(before_b):b_at]
                             if key.startswith(a_job + "#")} - a_chunks_before
    assert jumped >= 6, f"the test needs A's chunks queued ahead of B's message: {order}"
    # Without fair shares, B's message waits for the workers to take all `jumped` of them; with them, a worker
    # defers A's messages (A holds the other worker) and takes B's, or a worker hands A's chunk back for it.
    assert len(first_taken_meanwhile) <= 2, order
    assert a_at_b_done["status"] == "Processing" and a_at_b_done["processedLines"] < 1200

    wait_for(lambda: a.job(a_job)["status"] == "Completed", timeout=120, what="A's job Completed")
    assert_every_line_once(a, a_job, a_lines)  # deferred and handed-back chunks lost and doubled nothing
    assert_every_line_once(b, b_job, b_lines)


# --- the budget: tenants' gates over one shared limiter ------------------------------------------------------


def _turns(gates: dict[str, TenantGate], threads: dict[str, int], seconds: float) -> Counter[str]:
    """Each tenant's `threads[t]` threads ask for turns back to back for `seconds`; the turns each tenant got."""
    got: Counter[str] = Counter()
    lock = threading.Lock()
    until = time.monotonic() + seconds

    def ask(tenant: str) -> None:
        while time.monotonic() < until:
            gates[tenant].acquire(100)
            with lock:
                got[tenant] += 1

    pool = [threading.Thread(target=ask, args=(t,)) for t, n in threads.items() for _ in range(n)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return got


def _gates(weights: dict[str, float], running: Callable[[], Snapshot], rpm: float = 300
           ) -> dict[str, TenantGate]:
    shared = SharedLimiter(rpm=rpm, tpm=None, wait_max=None, key=f"limiter#test-{uuid.uuid4().hex}")
    rules = Rules(Weights(weights))
    return {t: TenantGate(shared, t, rules, snapshot=running) for t in ("a", "b")}


@pytest.mark.parametrize("weights, low, high", [({}, 0.38, 0.65), ({"b": 3.0}, 0.5, 0.95)],
                         ids=["equal", "b weighs 3"])
def test_each_tenant_gets_its_weighted_share_of_the_budget_whatever_its_number_of_threads(weights, low, high):
    """A asks from 6 threads, B from 3: first come first served would give B about a third of the turns. The
    bounds are loose (B's threads spend part of each turn on DynamoDB round trips, in which A takes spare turns):
    with weights 1:1 B gets about half (never its third), with 1:3 more (under load, at least half)."""
    both = Snapshot(running={"a": 1, "b": 1})
    got = _turns(_gates(weights, lambda: both), {"a": 6, "b": 3}, seconds=6.0)
    total = got["a"] + got["b"]
    assert total >= 25, got  # the shared bucket's 5 a second for 6 s, less start-up: the gates lost no budget
    assert low <= got["b"] / total <= high, got


def test_an_idle_tenants_share_is_lent_to_the_tenant_that_asks():
    """B has a worker (its share stands) but asks for nothing: A, over its half, takes B's unused turns too."""
    both = Snapshot(running={"a": 1, "b": 1})
    got = _turns(_gates({}, lambda: both), {"a": 4}, seconds=3.0)
    assert got["a"] >= 14, got  # the whole bucket (5 a second, a burst of 5 at first: 20), not half of it (10)


def test_a_tenant_back_from_idle_has_its_first_wave_take_the_fleets_next_turns():
    """A asks without pause from 4 threads (long enough for its own first burst to be over); then B, idle until
    now, asks 3 requests at once, as a small job's first wave does. At equal shares the tenants would take turns
    (B's third request behind two of A's); B's banked turn makes its wave queue ahead of A's requests within A's
    share for a moment (fair/budget.BURST_SECONDS), so at most one of A's turns falls among B's."""
    both = Snapshot(running={"a": 1, "b": 1})
    gates = _gates({}, lambda: both, rpm=120)
    turns: list[tuple[float, str]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def ask(tenant: str, once: bool = False) -> None:
        while not stop.is_set():
            gates[tenant].acquire(100)
            with lock:
                turns.append((time.monotonic(), tenant))
            if once:
                return

    a_threads = [threading.Thread(target=ask, args=("a",)) for _ in range(4)]
    for t in a_threads:
        t.start()
    wait_for(lambda: sum(who == "a" for _, who in turns) >= 6, 30, what="A's turns past its first burst")
    b_threads = [threading.Thread(target=ask, args=("b", True)) for _ in range(3)]
    for t in b_threads:
        t.start()
    for t in b_threads:
        t.join(30)
    stop.set()
    for t in a_threads:
        t.join(30)
    order = [who for _, who in sorted(turns)]
    first, last = order.index("b"), len(order) - 1 - order[::-1].index("b")
    assert order.count("b") == 3
    assert order[first:last + 1].count("a") <= 1, order


def test_of_a_tenants_invocations_racing_to_free_a_worker_for_a_waiting_tenant_exactly_one_does():
    """Both see the same picture (the waiting tenant's claim is better): without the rescue claim both would
    hand their work back and leave their own tenant no worker."""
    waiting = f"tenant-{uuid.uuid4().hex[:8]}"
    start = threading.Barrier(8)
    results: list[bool] = []

    def race() -> None:
        start.wait()
        results.append(demand.rescue(waiting))

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert not demand.rescue(waiting)  # until the waiting tenant takes a message...
    demand.take(waiting, "job-x", "inv-1", time.time() + 60)
    assert demand.rescue(waiting)  # ...after which it may be rescued again (if it still waits)
    demand.done(waiting, "inv-1")


def test_an_invocation_that_sees_the_rescue_claimed_does_not_try_to_claim_it_again(fair):
    """While the waiting tenant's message stays untaken, every look of every thread of the tenant holding the
    workers would try the claim's conditional write again, and fail: the picture carries the claim instead."""
    from tests.hardening.common import count_store_calls

    holder, waiter = f"holder-{uuid.uuid4().hex[:8]}", f"waiter-{uuid.uuid4().hex[:8]}"
    for n in (1, 2):
        demand.take(holder, f"job-h{n}", f"inv-h{n}", time.time() + 60)
    demand.waiting(waiter, "job-w", time.time() - 1)
    try:
        def picture() -> Snapshot:  # ours only: other tests' tenants may share this moto server's demand item
            snap = demand.read()
            return Snapshot(running={holder: snap.r(holder)}, waiting={waiter: snap.waiting.get(waiter, 0)},
                            rescued={t: v for t, v in snap.rescued.items() if t == waiter})

        assert picture().rescued == {}
        assert fairness.must_yield(fair, holder, started=0.0, snap=picture())  # the first claims it, and yields
        seen = picture()
        assert seen.rescued[waiter] == pytest.approx(time.time() + demand.RESCUE_SECONDS, abs=2.0)
        with count_store_calls() as calls:
            assert not fairness.must_yield(fair, holder, started=0.0, snap=seen)
        assert calls.calls == []
        with count_store_calls() as control:  # without the claim in the picture, the write is tried (and fails)
            assert not fairness.must_yield(fair, holder, started=0.0,
                                           snap=dataclasses.replace(seen, rescued={}))
        assert ("dynamodb", "UpdateItem") in control.calls
    finally:
        demand.take(waiter, "job-w", "inv-w", time.time() + 60)  # removes its waiting entry and the claim
        for name in ("inv-h1", "inv-h2"):
            demand.done(holder, name)
        demand.done(waiter, "inv-w")


def test_a_waiting_entry_whose_message_is_gone_holds_another_tenants_job_back_only_a_few_deferrals(
        client, token_for, workers, monkeypatch):
    """A tenant's waiting entry with no message on the queue (purged, moved to the DLQ, or registered by a process
    that died before the send) and another tenant holding a worker on paper (a killed invocation's running entry,
    as the chaos soak leaves them): that tenant's job is deferred for the phantom, but at most MAX_DEFERRALS
    times; then it runs, and the phantom entry goes, so the job's next batches are not handed back to it either.
    Before the bound its message went round the queue until the phantom lapsed (2 minutes)."""
    x = _driver(client, token_for, workers)
    x_tenant = next(iter(workers))
    phantom = f"tenant-gone-{uuid.uuid4().hex[:8]}"
    deferred: list[int] = []
    real_defer = fair_queue.defer

    def defer(message):
        deferred.append(fair_queue.deferrals(message))
        real_defer(message)

    monkeypatch.setattr(fair_queue, "defer", defer)
    try:
        demand.waiting(phantom, "job-lost-to-a-purge", time.time())
        demand.take(x_tenant, "job-of-a-killed-worker", "killed-invocation", time.time() + 600)
        assert demand.read().waiting[phantom] == 1 and demand.read().running[x_tenant] == 1
        lines = expense_lines(90, vendors(45))  # two batches of 50 and 40: a checkpoint between them
        job_id = x.start(lines)
        wait_for(lambda: x.job(job_id)["status"] == "Completed", timeout=45,
                 what="the job Completed, past the phantom waiting tenant")
        assert deferred == list(range(fair_queue.MAX_DEFERRALS))  # deferred (fairness on), bounded, handed back never
        assert phantom not in demand.read().waiting  # the message at the bound removed the phantom
        assert_every_line_once(x, job_id, lines)
    finally:
        _forget(phantom, x_tenant)


def _forget(*tenants: str) -> None:
    """Every entry of `tenants` out of the demand item, which the later tests on this moto server read."""
    from chalicelib.tables import Control

    item = Control.get(demand.KEY, consistent_read=True)
    keys = [(Control.fair_waiting, k) for k in (item.fair_waiting.as_dict() if item.fair_waiting else {})]
    keys += [(Control.fair_running, k) for k in (item.fair_running.as_dict() if item.fair_running else {})]
    actions = [attr[k].remove() for attr, k in keys if demand.tenant_of(k) in tenants]
    actions += [Control.fair_rescue[t].remove() for t in tenants]
    Control(demand.KEY).update(actions=actions)


def running_lapses(tenant: str) -> dict[str, float]:
    """The tenant's running entries as stored: invocation id -> the epoch second it lapses."""
    from chalicelib.tables import Control

    item = Control.get(demand.KEY, consistent_read=True)
    runs = item.fair_running.as_dict() if item.fair_running else {}
    return {k.rsplit(demand.SEP, 1)[1]: float(v) for k, v in runs.items() if demand.tenant_of(k) == tenant}


def test_a_running_invocation_keeps_its_entry_past_the_ttl_and_no_renewal_outlives_it(fair, monkeypatch):
    # A short TTL renewed often: 1.6 s of room for a renewal to be late on a busy 2-core machine.
    ttl = 2.0
    monkeypatch.setattr(fairness, "RENEWALS_PER_TTL", 10)
    settings = dataclasses.replace(fair, fair_running_ttl_seconds=ttl)
    tenant = f"tenant-live-{uuid.uuid4().hex[:8]}"
    message = parse_message(f'{{"jobId": "job-{uuid.uuid4().hex[:8]}", "tenant": "{tenant}"}}')
    with fairness.turn(message, Ctx(), settings) as runs:
        assert runs  # a fresh tenant holds nothing: it is never deferred
        [(invocation, first)] = running_lapses(tenant).items()
        assert first <= time.time() + ttl + 0.5  # its own TTL, not the Lambda's 15 minutes
        # The invocation outlives its TTL twice over (a chunk waiting on a slow provider): every read of the
        # fleet, which prunes lapsed entries, still counts it, and its lapse moves on.
        until = time.monotonic() + 2 * ttl
        while time.monotonic() < until:
            assert demand.read().running.get(tenant) == 1
            time.sleep(0.2)  # the reads' rhythm over the scenario's 4 s, not a synchronization
        assert running_lapses(tenant)[invocation] > first + ttl
    assert tenant not in demand.read().running and running_lapses(tenant) == {}
    # The renewing thread ended with the invocation (joined), so nothing renews between invocations ...
    assert not [t for t in threading.enumerate() if t.name == f"fair-renewal-{invocation}"]
    # ... and a renewal that lands after the end anyway (a write slower than the join) finds no entry, makes none.
    assert demand.renew(tenant, invocation, time.time() + 60) is False
    assert running_lapses(tenant) == {}


@pytest.mark.parametrize("first_deferred, took, deferred_again", [
    (20, 10, True),  # took a message since the first deferral: being served, its backlog kept
    (20, 25, False),  # took none since: its entries older than the first deferral are gone from the queue
    (40, 10, False),  # served, but deferring for longer than SERVED_MAX_SECONDS: a phantom beside a running job
], ids=["served", "not-served", "served-too-long"])
def test_at_the_deferral_bound_a_waiting_tenant_being_served_keeps_its_backlog(fair, first_deferred, took,
                                                                               deferred_again):
    """The bound goes by evidence: a waiting tenant that took a message since the message's first deferral is
    being served (the deferrals were fair: deferred again, counted afresh, its backlog kept), for
    SERVED_MAX_SECONDS at most; otherwise its old entries are removed as gone from the queue, and the message
    runs. (Seconds ago, each.)"""
    from chalicelib.messages import StartJob
    from chalicelib.tables import Control

    now = time.time()
    holder, waiter = (f"tenant-{name}-{uuid.uuid4().hex[:8]}" for name in ("holder", "waiter"))
    job_id = f"job-{uuid.uuid4().hex[:8]}"
    try:
        for n in range(2):  # the holder has two workers, the waiter none: the holder's messages defer to it
            demand.take(holder, f"job-h{n}", f"inv-h{n}", now + 60)
        demand.waiting(waiter, "job-w-backlog", now - 35)  # visible 35 s: older than the 5 s of deferrals
        # The holder's message was first deferred a while ago (deferrals far apart happen on a busy fleet).
        Control(demand.KEY).update(actions=[Control.fair_taken[waiter].set(now - took)])
        since = round(now - first_deferred, 3)
        message = StartJob(job_id, "fan-out", holder, deferrals=fair_queue.MAX_DEFERRALS, deferred_since=since)
        with fairness.turn(message, Ctx(), fair) as runs:
            assert runs is not deferred_again
        if deferred_again:
            assert demand.read().waiting.get(waiter) == 1  # its backlog still counts
            [sent] = wait_for(lambda: receive({job_id}), timeout=10, what="the message sent again (1 s delay)")
            again = parse_message(sent["Body"])
            # Counted afresh; the first deferral's time kept, so that the restarts end.
            assert (again.deferrals, again.tenant, again.deferred_since) == (1, holder, since)
            deps.client("sqs").delete_message(QueueUrl=deps.work_queue_url(), ReceiptHandle=sent["ReceiptHandle"])
        else:
            assert waiter not in demand.read().waiting  # gone from the queue: it holds nothing back any more
            assert receive({job_id}, wait=2) == []  # the message ran, nothing sent again (a deferral shows in 1 s)
    finally:
        _forget(holder, waiter)
