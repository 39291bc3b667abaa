"""The two state machines (a job's, a chunk's), `allowedActions` derived from the job's, and the rule that the
terminal and active status sets are defined once (chalicelib/jobs/states.py) and imported everywhere else."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from chalicelib.jobs.states import (
    ACTIVE,
    CHUNK_TERMINAL,
    CHUNK_TRANSITIONS,
    TERMINAL,
    TRANSITIONS,
    WORKED,
    ChunkStatus,
    JobAction,
    JobStatus,
    allowed_actions,
    chunk_may_become,
)

ROOT = Path(__file__).resolve().parents[2]
S, C = JobStatus, ChunkStatus


# --- the chunk state machine ------------------------------------------------------------------------------


def test_chunk_statuses_keep_their_stored_values():
    assert [s.value for s in ChunkStatus] == ["Pending", "Running", "Done"]
    assert ChunkStatus("Done") is C.DONE and C.RUNNING == "Running"


def test_chunk_transitions():
    assert set(CHUNK_TRANSITIONS) == set(ChunkStatus)
    assert CHUNK_TERMINAL == {C.DONE} and CHUNK_TRANSITIONS[C.DONE] == frozenset()
    # Only a chunk some invocation holds can be finished; a claim takes a Pending one, or an expired lease.
    assert chunk_may_become(C.PENDING, C.RUNNING) and chunk_may_become("Running", "Running")
    assert not chunk_may_become(C.PENDING, C.DONE)
    # Hand-back, release, reap and a retry's reset all put a chunk back to Pending; nothing leaves Done.
    assert chunk_may_become(C.RUNNING, C.PENDING) and chunk_may_become(C.PENDING, C.PENDING)
    assert chunk_may_become(C.RUNNING, C.DONE)
    assert not any(chunk_may_become(C.DONE, to) for to in ChunkStatus)


# --- allowedActions ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "expected"), [
    (S.QUEUED, ["cancel"]), (S.PROCESSING, ["cancel"]), (S.CANCELLATION_REQUESTED, []),
    (S.COMPLETED, ["result", "settle"]), (S.FAILED, ["retry"]), (S.CANCELLED, ["retry"]),
])
def test_allowed_actions_of_each_status(status, expected):
    assert [a.value for a in allowed_actions(status)] == expected == [a.value for a in allowed_actions(status.value)]


def test_allowed_actions_agree_with_the_transitions():
    for status in JobStatus:
        allowed = allowed_actions(status)
        assert (JobAction.RETRY in allowed) == (status in TERMINAL and S.QUEUED in TRANSITIONS[status])
        assert (JobAction.CANCEL in allowed) <= (S.CANCELLED in TRANSITIONS[status])
    assert {a.value for a in JobAction} == {"cancel", "retry", "result", "settle"}  # the documented closed set


# --- one definition of the status sets --------------------------------------------------------------------


STATES_MODULE = ROOT / "chalicelib" / "jobs" / "states.py"
SCANNED = ("chalicelib", "local", "bench", "reports_cli")
_BY_VALUE = {s.value: s for s in JobStatus}


def _status_of(node: ast.AST) -> JobStatus | None:
    """The job status a literal spells: "Queued", JobStatus.QUEUED, S.QUEUED (or their `.value`)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return _BY_VALUE.get(node.value)
    if isinstance(node, ast.Attribute) and node.attr == "value":
        node = node.value
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in {"JobStatus", "S"}:
        return JobStatus.__members__.get(node.attr)
    return None


def _spelled_sets(text: str, name: str) -> list[str]:
    """Collections literally listing two or more job statuses, other than the whole list of statuses."""
    found = []
    for node in ast.walk(ast.parse(text, name)):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) >= 2:
            statuses = [_status_of(e) for e in node.elts]
            if all(statuses) and set(statuses) != set(JobStatus):
                found.append(f"{name}:{node.lineno}: {sorted(s.value for s in statuses)}")
    return found


def test_the_scan_finds_what_it_is_meant_to_find():
    sample = ('A = ("Queued", "Processing", "CancellationRequested")\n'
              "B = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)\n"
              "C = frozenset({S.PROCESSING.value, S.CANCELLATION_REQUESTED.value})\n"
              'D = ("Queued", "Processing", "CancellationRequested", "Completed", "Failed", "Cancelled")\n'
              'E = ("Queued", "something else")\n')
    assert [hit.split(":")[1] for hit in _spelled_sets(sample, "sample.py")] == ["1", "2", "3"]


def test_no_module_outside_states_spells_the_terminal_or_active_statuses():
    offenders = []
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            if path != STATES_MODULE and "__pycache__" not in path.parts:
                offenders += _spelled_sets(path.read_text(), str(path.relative_to(ROOT)))
    assert offenders == [], "import TERMINAL / ACTIVE / WORKED from chalicelib.jobs.states instead:\n" + \
        "\n".join(offenders)


def test_no_module_outside_states_spells_a_chunk_status():
    from chalicelib.tables import JobChunk

    # tables.py cannot import states.py (states.py imports it): its model's default is checked here instead.
    assert JobChunk.status.default == ChunkStatus.PENDING.value
    chunk_values = {s.value for s in ChunkStatus}
    offenders = []
    for path in (ROOT / "chalicelib").rglob("*.py"):
        if path in (STATES_MODULE, ROOT / "chalicelib" / "tables.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and node.value in chunk_values:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert offenders == []


def test_the_sets_are_derived_from_one_another():
    assert ACTIVE == set(JobStatus) - TERMINAL and WORKED == ACTIVE - {S.QUEUED}
    assert all(not TRANSITIONS[s] or s in ACTIVE or S.QUEUED in TRANSITIONS[s] for s in JobStatus)
