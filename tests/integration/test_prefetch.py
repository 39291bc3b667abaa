"""A paced invocation asks the next batch's first request while its batch's are answered (worker/prefetch.py),
against a moto server and the provider simulator through the real openai client: the report is the input once,
every vendor is asked once, and a prefetch with no turn soon asks nothing."""

from __future__ import annotations

import dataclasses
import logging
import threading

import pytest

from chalicelib.settings import get_settings
from tests.integration.test_worker import assert_every_line_once
from tests.support import Ctx, deliver, drain, expense_lines, receive, vendors

LATENCY = 0.6


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
    lines = expense_lines(60, vendors(30))
    job_id = api.start(lines)
    drain({job_id}, paced(sim, openai_rpm=600, model_prefetch=prefetch))

    assert_every_line_once(api, job_id, lines)
    stats = sim.stats()
    # Every vendor asked once, in 30 / 5 requests: a prefetched vendor is not asked again by its batch.
    assert sorted(stats["requests_by_vendor"].values()) == [1] * 30
    assert stats["requests"] == 6
    # With one request per batch, two at once means the next batch's went out while this one's was answered.
    assert most_at_once(stats["log"], LATENCY) == (2 if prefetch else 1)
    assert api.job(job_id)["usage"]["modelRequests"] == 6  # the prefetches' usage is counted with the job's


@pytest.mark.sim(latency=0.05)
def test_a_prefetch_with_no_turn_soon_asks_nothing_and_the_batch_asks_itself(api, sim, caplog):
    """At 20 requests a minute the turn after a batch's is 3.2 s away, beyond the prefetch's 2 s: the prefetch
    gives up without asking, and the job goes on at the limiter's pace with no hand-back and no vendor asked
    twice."""
    lines = expense_lines(15, vendors(15))
    job_id = api.start(lines)
    with caplog.at_level(logging.INFO, logger="chalicelib.worker.prefetch"):
        drain({job_id}, paced(sim, openai_rpm=20))
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
