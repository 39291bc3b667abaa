"""Answers that are not the schema, through the real openai client and the worker: the job completes, the lines
they touched are flagged for review, and every count matches the imported lines and the report."""

from __future__ import annotations

import dataclasses

import pytest

from chalicelib.settings import get_settings
from tests.integration.test_worker import Api
from tests.support import drain, expense_lines, vendors


@pytest.fixture
def model_settings(sim):
    return dataclasses.replace(get_settings(), openai_api_key="sk-test", openai_base_url=sim.url,
                               line_batch_size=40, line_read_ahead=4, model_batch_size=10, model_concurrency=3,
                               inline_wait_max_seconds=3.0)


def assert_flagged_exactly(api: Api, job_id: str, lines: list[dict], flagged_vendors: set[str]) -> None:
    """Completed, every imported line once in the report, and exactly the lines of `flagged_vendors` flagged."""
    job = api.job(job_id)
    assert job["status"] == "Completed", job
    report = api.result(job_id)
    assert sorted(line["lineId"] for line in report["lines"]) == sorted(line["lineId"] for line in lines)
    expected = {line["lineId"] for line in lines if line["vendor"] in flagged_vendors}
    flagged = {line["lineId"] for line in report["lines"] if line["needsReview"]}
    assert flagged == expected
    assert all(line["category"] is None for line in report["lines"] if line["needsReview"])
    assert all(line["category"] for line in report["lines"] if not line["needsReview"])
    assert job["totalLines"] == job["processedLines"] == len(lines)
    assert job["failedLines"] == report["needsReview"] == len(expected)


def test_rows_whose_id_or_category_is_not_a_string_flag_their_lines_and_the_job_completes(api, sim,
                                                                                           model_settings):
    names = vendors(30)
    bad = set(names[::6])  # 5 vendors: their rows always come back as a list, an object, a number or null
    sim.configure(badrow_vendors=sorted(bad))
    lines = expense_lines(150, names)
    job_id = api.start(lines)
    drain({job_id}, model_settings)
    assert_flagged_exactly(api, job_id, lines, bad)
    asked = sim.stats()["requests_by_vendor"]
    assert all(asked[v.lower()] >= 2 for v in bad)  # each bad answer was asked again once before it was flagged


def test_a_refused_request_flags_its_lines_and_the_job_completes(api, sim, model_settings):
    sim.configure(prefusal=1.0)
    names = vendors(12)
    lines = expense_lines(40, names)
    job_id = api.start(lines)
    drain({job_id}, model_settings)
    assert_flagged_exactly(api, job_id, lines, set(names))
    assert sim.stats()["faults"]["refusal"] == sim.stats()["requests"] == 4  # 2 requests of 10 + 2, each twice


def test_refused_requests_flag_only_their_lines_and_count_each_line_once(api, sim, model_settings):
    """One vendor a request (model_batch_size=1): the requests about three vendors are always refused. Their
    lines, and only theirs, are flagged; a refusal is asked again once by the pipeline, never retried by the retry
    policy on top; the job's counts and the report agree, each line counted once."""
    settings = dataclasses.replace(model_settings, model_batch_size=1)
    names = vendors(12)
    refused = set(names[::4])
    sim.configure(refusal_vendors=sorted(refused))
    lines = expense_lines(60, names)
    job_id = api.start(lines)
    drain({job_id}, settings)
    assert_flagged_exactly(api, job_id, lines, refused)
    stats = sim.stats()
    asked, faults = stats["requests_by_vendor"], stats["faults"]
    assert all(asked[v.lower()] % 2 == 0 for v in refused)  # each time asked: once, then once again
    assert faults["refusal"] == sum(asked[v.lower()] for v in refused)
    assert api.job(job_id)["retryCount"] == 0  # a refusal is a bad answer, not a failed request
