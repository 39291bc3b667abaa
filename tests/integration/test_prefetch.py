"""A paced invocation asks the next batch's first request while its batch's are answered (worker/prefetch.py),
against a moto server and the provider simulator through the real openai client: the report is the input once,
every vendor is asked once, and a prefetch with no turn soon asks nothing."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from types import SimpleNamespace

import pytest

from chalicelib.categorize import claims, pipeline
from chalicelib.categorize.limiter import SharedLimiter
from chalicelib.categorize.normalize import normalize_vendor
from chalicelib.categorize.usage import Meter
from chalicelib.fair import demand
from chalicelib.fair.budget import GiveWay, TenantGate
from chalicelib.reports.service import DEFAULT_CATEGORIES
from chalicelib.settings import get_settings
from chalicelib.worker import fairness, invocation, prefetch
from tests.integration.test_worker import assert_every_line_once
from tests.support import Ctx, deliver, drain, expense_lines, receive, vendors

CATEGORIES = list(DEFAULT_CATEGORIES)
LATENCY = 1.2  # the prefetch leaves >= 0.25 s (the limiter's lead) after its batch's request: room on a slow CI


def paced(sim, **changes):
    """One request at a time per batch (MODEL_CONCURRENCY 1), five vendors each, batches of five new vendors read
    four batches ahead: without a prefetch, never two requests of the invocation at once."""
    return dataclasses.replace(get_settings(), openai_api_key="sk-test", openai_base_url=sim.url,
                               model_batch_size=5, model_concurrency=1, line_batch_size=5, line_read_ahead=4,
                               **changes)


def most_at_once(log: list[dict], latency: float) -> int:
    """The most answered requests the simulator held at one moment (each is held `latency` from its arrival)."""
    arrivals = sorted(entry["t"] for entry in log if entry["status"] == 200)
    return max((sum(1 for t in arrivals if a - latency < t <= a) for a in arrivals), default=0)


@pytest.mark.sim(latency=LATENCY)
@pytest.mark.parametrize("prefetch", [True, False])
def test_a_paced_invocation_asks_the_next_batch_while_its_batch_is_answered(api, sim, prefetch):
    lines = expense_lines(40, vendors(20))
    job_id = api.start(lines)
    drain({job_id}, paced(sim, openai_rpm=600, model_prefetch=prefetch))

    assert_every_line_once(api, job_id, lines)
    stats = sim.stats()
    # Every vendor asked once, in 20 / 5 requests: a prefetched vendor is not asked again by its batch.
    assert sorted(stats["requests_by_vendor"].values()) == [1] * 20
    assert stats["requests"] == 4
    # With one request per batch, two at once means the next batch's went out while this one's was answered.
    at_once = most_at_once(stats["log"], LATENCY)
    assert at_once >= 2 if prefetch else at_once == 1
    assert api.job(job_id)["usage"]["modelRequests"] == 4  # the prefetches' usage is counted with the job's


@pytest.mark.sim(latency=0.05)
def test_a_prefetch_with_no_turn_soon_asks_nothing_and_the_batch_asks_itself(api, sim, caplog):
    """At 15 requests a minute the turn after a batch's is 4.2 s away, beyond the prefetch's 2 s: the prefetch
    gives up without asking, and the job goes on at the limiter's pace with no hand-back and no vendor asked
    twice."""
    lines = expense_lines(15, vendors(15))
    job_id = api.start(lines)
    with caplog.at_level(logging.INFO, logger="chalicelib.worker.prefetch"):
        drain({job_id}, paced(sim, openai_rpm=15))
    gave_up = [r.getMessage() for r in caplog.records if r.name == "chalicelib.worker.prefetch"]
    # Batch 1 (vendors 1-5) prefetches 6-10 and it gives up; batch 2 is 6-15, with nothing left to prefetch.
    assert gave_up == ["prefetch gave up (QuotaBusy); the next batch asks for its vendors"]

    assert_every_line_once(api, job_id, lines)
    stats = sim.stats()
    assert sorted(stats["requests_by_vendor"].values()) == [1] * 15
    assert (stats["requests"], stats["rate_limited"]) == (3, 0)
    events = api.call("get", f"/jobs/{job_id}/events?pageSize=1000")[1]["items"]
    assert [e for e in events if e["type"] == "rate_limited"] == []  # the prefetch's "no turn" is no wait
    assert api.job(job_id)["usage"]["modelRequests"] == 3


@pytest.mark.sim(latency=0.2)
def test_chunks_prefetching_at_once_ask_each_vendor_once_and_count_each_line_once(api, sim):
    """Two workers at once on the chunks of one job whose chunks share every vendor: the prefetches claim their
    vendors like any request, leave the ones another chunk holds to their batch (which waits for them), and the
    job's report is its lines once, each vendor asked once across all of them."""
    settings = paced(sim, openai_rpm=1200, fanout_threshold_lines=100, chunk_lines=60, fair_shares=False)
    lines = expense_lines(240, vendors(60))  # 4 chunks of 60 lines, each asking about the same 60 vendors
    job_id = api.start(lines)
    deliver(receive({job_id}), Ctx(), settings)  # the start message plans the chunks and sends theirs
    messages = receive({job_id})
    assert len(messages) == 4
    workers = [threading.Thread(target=deliver, args=(messages[i::2], Ctx(), settings)) for i in range(2)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(60)
    drain({job_id}, settings)  # anything handed back meanwhile

    assert_every_line_once(api, job_id, lines)
    assert sorted(sim.stats()["requests_by_vendor"].values()) == [1] * 60


def test_a_prefetch_leaves_out_the_vendors_another_chunk_holds_without_waiting_for_them(sim):
    """pipeline.categorize(others=False), as the prefetch calls it: the vendors another chunk of the job has
    claimed are neither asked about nor waited for (their lines get no answer: the batch asks for them itself)."""
    settings = dataclasses.replace(get_settings(), openai_api_key="sk-test", openai_base_url=sim.url,
                                   model_batch_size=5, model_concurrency=1)
    backend = invocation.backend(settings, invocation.retry_loop(settings, 60.0))
    job_id, tenant = f"job-{uuid.uuid4().hex[:8]}", f"tenant-{uuid.uuid4().hex[:8]}"
    names = vendors(4)
    lines = [SimpleNamespace(line_id=f"l{n}", vendor=name, description="expense") for n, name in enumerate(names)]
    held = [normalize_vendor(names[0]), normalize_vendor(names[1])]
    assert claims.take(job_id, CATEGORIES, held, "other-chunk", 600.0) == (held, [])

    started = time.monotonic()
    got = pipeline.categorize(lines, CATEGORIES, settings, backend, {}, job_id, None, claim_owner="prefetching-chunk",
                              tenant=tenant, others=False)
    assert set(got) == {"l2", "l3"}
    assert time.monotonic() - started < claims.POLL_SECONDS * 4  # answered at once, not after the holder's claim
    assert sorted(sim.stats()["requests_by_vendor"]) == sorted(n.lower() for n in names[2:])


def test_a_rescue_claimed_by_a_prefetch_makes_its_invocation_give_way_at_the_checkpoint(fair_settings):
    """The prefetch's request may be the one of its invocation that claims a waiting tenant's rescue; its GiveWay
    ends only the prefetch. The invocation must still give its worker up, at its next checkpoint: must_yield alone
    would find the rescue claimed (by this invocation itself) and say no."""
    holder, waiter = f"holder-{uuid.uuid4().hex[:8]}", f"waiter-{uuid.uuid4().hex[:8]}"
    for n in (1, 2):
        demand.take(holder, f"job-h{n}", f"inv-h{n}", time.time() + 60)
    demand.waiting(waiter, "job-w", time.time() - 1)
    try:
        gate = TenantGate(SharedLimiter(120, None, key=f"limiter#test-{uuid.uuid4().hex}"), holder,
                          fairness.rules(fair_settings), snapshot=demand.read)
        run = SimpleNamespace(backend=SimpleNamespace(limiter=gate, meter=Meter()), settings=fair_settings,
                              job=SimpleNamespace(tenant=holder, owner_id=holder), done=50, started=time.time())
        fairness.give_way_between_requests(run)
        assert not fairness.yielding(run)
        with pytest.raises(GiveWay):  # the prefetch's request, through its copy of the gate
            prefetch._soon(gate, prefetch.PREFETCH_WAIT_SECONDS).acquire(100)
        assert fairness.yielding(run)  # the loop's checkpoint gives the worker up (loop._work)
        assert not fairness.must_yield(fair_settings, holder, run.started)  # what it would have relied on
    finally:
        demand.take(waiter, "job-w", "inv-w", time.time() + 60)  # removes its waiting entry and the claim
        for name in ("inv-h1", "inv-h2"):
            demand.done(holder, name)
        demand.done(waiter, "inv-w")


@pytest.fixture
def fair_settings():
    return dataclasses.replace(get_settings(), fair_shares=True)
