"""Fan-out: a large job split into chunks, each its own message, lease and checkpoint."""

from __future__ import annotations

import dataclasses
import json

import pytest

from chalicelib import faults, reaper, worker
from chalicelib.categorize import cache
from chalicelib.categorize.normalize import normalize_vendor
from chalicelib.jobs import chunks
from chalicelib.reports.service import DEFAULT_CATEGORIES
from chalicelib.settings import get_settings
from chalicelib.tables import Job, LineResult
from local.simulator import Simulator
from tests.integration.test_worker import Api, assert_every_line_once
from tests.support import Ctx, deliver, drain, expense_lines, receive, vendors, wait_for

TENANT = "tenant-fanout"  # the vendor cache is a tenant's: the cache tests read and write this one's


@pytest.fixture
def api(client, token_for):
    token = token_for()
    api = Api(client, token)
    api.tenant = token.sub  # a token without a tenant claim: its sub is its tenant key
    return api


@pytest.fixture
def fanout():
    # These tests count the chunk messages a plan sends; with fair shares on, a tenant's chunks are sent a
    # window at a time (tests/fair covers that), so the count would be the window, not the plan.
    return dataclasses.replace(get_settings(), fanout_threshold_lines=100, chunk_lines=60, line_batch_size=25,
                               fair_shares=False)


def event_types(api: Api, job_id: str) -> list[str]:
    return [e["type"] for e in api.call("get", f"/jobs/{job_id}/events")[1]["items"]]


def test_large_job_fans_out_and_is_assembled_exactly_once(api, fanout):
    lines = expense_lines(300, vendors(40))
    job_id = api.start(lines)
    deliver(receive({job_id}), Ctx(), fanout)  # the start message plans the chunks and sends theirs
    assert int(Job.get(job_id).chunk_count) == 5
    messages = receive({job_id})
    assert len(messages) == 5
    deliver(messages, Ctx(), fanout, twice=True)  # every chunk message delivered twice
    assert_every_line_once(api, job_id, lines)
    assert event_types(api, job_id).count("completed") == 1
    assert all(c.status == chunks.DONE for c in chunks.of(job_id))


def test_a_period_exactly_on_a_chunk_boundary_has_no_empty_tail(api, fanout):
    lines = expense_lines(240, vendors(10))
    job_id = api.start(lines)
    drain({job_id}, fanout)
    assert int(Job.get(job_id).chunk_count) == 4
    assert_every_line_once(api, job_id, lines)


def test_cancel_mid_way_stops_every_chunk_and_keeps_done_lines(api, fanout):
    lines = expense_lines(300, vendors(40))
    job_id = api.start(lines)
    deliver(receive({job_id}), Ctx(), fanout)
    first = receive({job_id})[:1]
    deliver(first, Ctx(), dataclasses.replace(fanout, lambda_time_reserve_seconds=300))  # one batch, then hand over
    # No invocation holds the job or a chunk of it (they wait in the queue): the cancel is final at once.
    answer = api.call("delete", f"/jobs/{job_id}")[1]
    assert answer["status"] == "Cancelled"
    drain({job_id}, fanout)
    job = api.job(job_id)
    assert job["status"] == "Cancelled" and job["processedLines"] == answer["processedLines"]
    assert 0 < job["processedLines"] < 300
    assert job["processedLines"] == sum(int(c.processed) for c in chunks.of(job_id))
    stored = {r.line_id for r in LineResult.query(job_id, consistent_read=True)}
    assert len(stored) >= job["processedLines"]  # every counted line has its result; none counted twice


def test_a_chunk_whose_worker_dies_is_reaped_and_finished(api, fanout, monkeypatch):
    lines = expense_lines(300, vendors(40))
    job_id = api.start(lines)
    deliver(receive({job_id}), Ctx(), fanout)
    messages = receive({job_id})
    dying = messages[0]

    def die(name: str) -> None:
        if name == "after_checkpoint":
            raise SystemExit("worker died")

    monkeypatch.setattr(faults, "point", die)
    monkeypatch.setattr(chunks, "release", lambda chunk, lease: None)  # a killed process releases nothing
    with pytest.raises(SystemExit):
        worker.run_chunk(job_id, json.loads(dying["Body"])["chunk"], Ctx(), fanout)
    monkeypatch.undo()
    deliver([dying])  # ack: the dead invocation's message would stay hidden for the visibility timeout
    for m in messages[1:]:
        deliver([m], Ctx(), fanout)
    assert api.job(job_id)["status"] == "Processing"
    quick = dataclasses.replace(fanout, stale_after_seconds=1)
    # The sweep covers every live job on this moto server: wait for this job's chunk, not any requeue.
    wait_for(lambda: reaper.reap(quick) and "reaped" in event_types(api, job_id), 10, interval=0.3,
             what="the chunk to be reaped")
    drain({job_id}, fanout)
    assert_every_line_once(api, job_id, lines)
    assert "reaped" in event_types(api, job_id)


def test_retry_of_a_failed_fanned_out_job_redoes_only_unfinished_chunks(api, fanout):
    sim = Simulator().start()
    try:
        model = dataclasses.replace(fanout, openai_api_key="sk-test", openai_base_url=sim.url)
        lines = expense_lines(300, vendors(300))
        job_id = api.start(lines)
        deliver(receive({job_id}), Ctx(), model)
        messages = receive({job_id})
        for m in messages[:2]:
            deliver([m], Ctx(), model)
        sim.configure(quota_exhausted=True)
        deliver(messages[2:], Ctx(), model)
        failed = api.job(job_id)
        assert failed["status"] == "Failed" and "quota" in failed["errorMessage"]
        sim.configure(quota_exhausted=False)
        done_before = {int(c.chunk) for c in chunks.of(job_id) if c.status == chunks.DONE}
        assert len(done_before) == 2
        asked = sim.stats()["requests"]
        assert api.call("post", f"/jobs/{job_id}/retry")[0] == 202
        drain({job_id}, model)
        assert_every_line_once(api, job_id, lines)
        # 3 chunks of 60 distinct vendors left (180 vendors at 25 per request): no request for the 2 done chunks.
        assert sim.stats()["requests"] - asked <= 3 * 3 + 1
    finally:
        sim.stop()


def test_cancel_while_the_job_is_being_split_is_cancelled_at_once(api, fanout, monkeypatch):
    job_id = api.start(expense_lines(300, vendors(40)))
    real_plan = chunks.plan

    def cancel_first(*args):
        assert api.call("delete", f"/jobs/{job_id}")[1]["status"] == "CancellationRequested"
        return real_plan(*args)

    monkeypatch.setattr(chunks, "plan", cancel_first)
    deliver(receive({job_id}), Ctx(), fanout)
    assert api.job(job_id)["status"] == "Cancelled"


def test_a_vendor_under_the_confidence_bar_is_asked_once_per_job_not_once_per_chunk(api, fanout, sim):
    unsure = [v for v in vendors(200) if "ACME" in v]  # the simulator answers these at confidence 0.6
    settings = dataclasses.replace(fanout, openai_api_key="sk-test", openai_base_url=sim.url, model_batch_size=10)
    lines = expense_lines(240, unsure)  # 4 chunks of 60 lines, each with all 10 vendors
    first = api.start(lines)
    drain({first}, settings)
    result = assert_every_line_once(api, first, lines)
    assert {(line["source"], line["needsReview"]) for line in result["lines"]} == {("model", False)}
    assert {line["confidence"] for line in result["lines"]} == {0.6}
    asked = sim.stats()["requests_by_vendor"]
    assert sorted(asked[v.lower()] for v in unsure) == [1] * len(unsure)
    # The answers were kept for that job only: another job asks again, and the cache serves them to no one.
    second = api.start(expense_lines(240, unsure, "2026-02", prefix="ty"), "2026-02")
    drain({second}, settings)
    asked = sim.stats()["requests_by_vendor"]
    assert sorted(asked[v.lower()] for v in unsure) == [2] * len(unsure)
    normalized = [normalize_vendor(v) for v in unsure]
    assert cache.lookup(DEFAULT_CATEGORIES, normalized, settings.openai_model, tenant=api.tenant) == {}


def test_a_job_s_unsure_answer_never_replaces_an_answer_for_everyone():
    confident, manual = (normalize_vendor(v) for v in vendors(2))
    cache.remember(DEFAULT_CATEGORIES, confident, "Airfare", 0.95, "m", tenant=TENANT)
    cache.learn_manual(DEFAULT_CATEGORIES, manual, "Lodging", tenant=TENANT)
    for vendor in (confident, manual):
        assert not cache.remember(DEFAULT_CATEGORIES, vendor, "Other", 0.5, "m", job_id="j-1", tenant=TENANT)
    found = cache.lookup(DEFAULT_CATEGORIES, [confident, manual], "m", job_id="j-1", tenant=TENANT)
    assert {v: (a.category, a.source) for v, a in found.items()} == {
        confident: ("Airfare", "cache"), manual: ("Lodging", "cache")}


def test_write_through_in_one_transaction_keeps_a_person_s_answer_and_lands_the_rest():
    names = [normalize_vendor(v) for v in vendors(5)]
    cache.learn_manual(DEFAULT_CATEGORIES, names[2], "Lodging", tenant=TENANT)  # arrived while the model was asked
    cache.remember_many(DEFAULT_CATEGORIES, [(n, "Airfare", 0.9) for n in names], "m", tenant=TENANT)
    found = cache.lookup(DEFAULT_CATEGORIES, names, "m", tenant=TENANT)
    assert {n: a.category for n, a in found.items()} == {
        names[0]: "Airfare", names[1]: "Airfare", names[2]: "Lodging", names[3]: "Airfare", names[4]: "Airfare"}


@pytest.mark.parametrize(("n", "chunk_lines", "description_bytes"), [
    (0, 60, 10), (1, 60, 10), (59, 60, 10), (60, 60, 10), (61, 60, 10), (300, 60, 10),
    # 1,300 lines of ~2 KB: DynamoDB (and moto) stop a page at 1 MB read, short of the Limit of 1,000.
    (1_300, 1_000, 2_000)])
def test_the_plan_counts_its_bounds_exactly_even_when_pages_stop_at_one_megabyte(n, chunk_lines, description_bytes):
    """chunks.plan counts (Select=COUNT) up to each bound instead of reading the keys: every chunk but the last
    holds exactly chunk_lines lines, the last the rest (never empty unless the month is), and the ranges cover
    every line once."""
    import uuid

    from chalicelib.tables import ExpenseLine

    part = f"u-plan-{uuid.uuid4().hex[:8]}#2026-01"
    ids = sorted(f"line-{uuid.uuid4().hex}" for _ in range(n))
    with ExpenseLine.batch_write() as batch:
        for line_id in ids:
            batch.save(ExpenseLine(part, line_id, date="2026-01-02", vendor="V", amount="1.00", currency="USD",
                                   description="d" * description_bytes, imported_at="x"))
    bounds = chunks.plan(part, chunk_lines)
    sizes = []
    for after, upto in chunks.ranges(bounds):
        sizes.append(sum(1 for i in ids if i > after and (not upto or i <= upto)))
    assert sum(sizes) == n
    assert sizes[:-1] == [chunk_lines] * (len(sizes) - 1)
    assert 0 < sizes[-1] <= chunk_lines or n == 0
    assert len(bounds) == max(1, -(-n // chunk_lines))
