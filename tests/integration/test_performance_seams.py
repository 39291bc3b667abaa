"""The worker's performance shortcuts (chalicelib/worker/seams.py): each one is used when its seam is on, not used
when it is off, and the job's report is the same either way."""

from __future__ import annotations

import dataclasses

import pytest

from chalicelib import results
from chalicelib.categorize import claims
from chalicelib.jobs import runner
from chalicelib.settings import get_settings
from chalicelib.worker import seams
from tests.integration.test_worker import assert_every_line_once
from tests.support import drain, expense_lines, vendors


@pytest.fixture
def model_settings(sim):
    # 40-line batches read 4 ahead: 120 lines over 20 vendors are read whole and worked as one batch.
    return dataclasses.replace(get_settings(), openai_api_key="sk-test", openai_base_url=sim.url,
                               line_batch_size=40, line_read_ahead=4, model_batch_size=10, model_concurrency=3)


def _spy(monkeypatch, module, name: str) -> list:
    calls, real = [], getattr(module, name)

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls


@pytest.mark.parametrize("memory, last_batch", [(True, True), (False, True), (True, False), (False, False)])
def test_a_whole_job_uses_memory_assembly_and_completes_with_its_last_batch_only_when_their_seams_are_on(
        api, model_settings, monkeypatch, memory, last_batch):
    settings = seams.with_seams(model_settings, seam_memory_assembly=memory, seam_complete_with_last_batch=last_batch)
    lines = expense_lines(120, vendors(20))
    job_id = api.start(lines)
    reports = _spy(monkeypatch, results, "assemble_counted")
    checkpoints = _spy(monkeypatch, runner, "checkpoint")
    drain({job_id}, settings)
    monkeypatch.undo()
    # Memory assembly: the report is built from the rows the invocation held (`written`), not read back.
    assert [r.get("written") is not None for r in reports] == [memory]
    # Completing with the last batch: its checkpoint is the Completed write, so no checkpoint of its own.
    assert len(checkpoints) == (0 if last_batch else 1)
    assert_every_line_once(api, job_id, lines)


@pytest.mark.parametrize("on", [True, False])
def test_the_chunks_of_a_job_claim_vendors_between_them_only_when_the_seam_is_on(api, sim, monkeypatch, on):
    fanout = dataclasses.replace(get_settings(), openai_api_key="sk-test", openai_base_url=sim.url,
                                 fanout_threshold_lines=100, chunk_lines=60, line_batch_size=25, model_batch_size=10)
    settings = seams.with_seams(fanout, seam_vendor_claims=on)
    lines = expense_lines(240, vendors(30))
    job_id = api.start(lines)
    taken = _spy(monkeypatch, claims, "take")
    drain({job_id}, settings)
    monkeypatch.undo()
    assert bool(taken) is on
    assert_every_line_once(api, job_id, lines)


def test_with_seams_switches_only_seams():
    settings = get_settings()
    off = seams.with_seams(settings, seam_vendor_claims=False)
    assert not seams.on(off, seams.VENDOR_CLAIMS)
    assert seams.on(off, seams.MEMORY_ASSEMBLY) and seams.on(off, seams.COMPLETE_WITH_LAST_BATCH)
    assert seams.on(settings, seams.VENDOR_CLAIMS)  # a copy: the original is untouched
    with pytest.raises(ValueError):
        seams.with_seams(settings, seam_unknown=False)
