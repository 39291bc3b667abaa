"""Chaos soak: many jobs at once over worker processes that are SIGKILLed at random, against a provider that
answers with random 429s, 500s, timeouts and malformed JSON.

Every job must reach a terminal state, every line must be in its report exactly once (categorized or flagged),
and nothing may be left in the dead-letter queue unexplained. The work queue's visibility timeout is 1800 s, so a
killed worker's message only comes back through the reaper, which runs here in-process.

`make test` runs a short soak (10 jobs x 50 lines, 2 workers, 2 kills); `make soak` a long one. Knobs:
CHAOS_JOBS, CHAOS_LINES, CHAOS_WORKERS, CHAOS_KILLS, CHAOS_SEED (printed, to replay a run), CHAOS_DEADLINE,
CHAOS_STALE_AFTER, CHAOS_JOB_BOUND.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pynamodb.exceptions import PynamoDBException

from chalicelib import clock, deps, reaper
from chalicelib.api.routes import store_unavailable
from chalicelib.jobs.states import TERMINAL, JobStatus
from chalicelib.settings import get_settings
from chalicelib.tables import Job
from local.stack import free_port
from tests.integration.test_worker import Api, assert_every_line_once
from tests.support import drain, expense_lines, vendors

ROOT = Path(__file__).resolve().parents[2]
JOBS = int(os.environ.get("CHAOS_JOBS", "10"))
LINES = int(os.environ.get("CHAOS_LINES", "50"))
WORKERS = int(os.environ.get("CHAOS_WORKERS", "2"))
KILLS = int(os.environ.get("CHAOS_KILLS", "2"))
SEED = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(1 << 30))
DEADLINE = float(os.environ.get("CHAOS_DEADLINE", "150"))
# The reaper's threshold. Small enough that a killed worker's job comes back soon, large enough that a live but
# slow batch (2 cores, faults, timeouts) is never mistaken for a stall: the soak asserts that only jobs a kill
# touched needed the reaper, so a sweep that "rescued" live work would hide the stalls this test looks for.
STALE_AFTER = int(os.environ.get("CHAOS_STALE_AFTER", "10"))
# Every job must end this long after it was created, unless the reaper had to bring it back from a kill.
JOB_BOUND = float(os.environ.get("CHAOS_JOB_BOUND", "120"))
# Worker processes run this many pollers each: a kill can take down that many jobs at once.
POLLERS_PER_WORKER = 2
FAST_RETRIES = [
    {"ErrorEquals": ["Provider.RateLimited"], "IntervalSeconds": 0.1, "BackoffRate": 2.0, "MaxAttempts": 1000,
     "MaxDelaySeconds": 1, "JitterStrategy": "FULL"},
    {"ErrorEquals": ["Provider.ServerError", "Provider.Timeout", "Provider.Connection"], "IntervalSeconds": 0.05,
     "BackoffRate": 2.0, "MaxAttempts": 3},
]
FAULTS = {"p429": 0.08, "burst_retry_after": 0.2, "p500": 0.08, "ptimeout": 0.05, "timeout_seconds": 2.0,
          "pmalformed": 0.08, "pmissing": 0.05}


class Workers:
    """`python -m local.stack` worker processes (COMPONENTS=worker) against the test's moto and simulator."""

    def __init__(self, aws_endpoint: str, sim_url: str, log_dir: Path) -> None:
        self.env = {**os.environ, "COMPONENTS": "worker", "CHALICE_STAGE": "pytest", "AWS_ENDPOINT_URL": aws_endpoint,
                    "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": sim_url, "OPENAI_TIMEOUT_SECONDS": "0.5",
                    "MODEL_RETRY_POLICY": json.dumps(FAST_RETRIES), "WORKER_WAIT_SECONDS": "1",
                    "LINE_BATCH_SIZE": "10", "MODEL_BATCH_SIZE": "5", "MODEL_CONCURRENCY": "4",
                    "INLINE_WAIT_MAX_SECONDS": "5", "WORKER_CONCURRENCY": str(POLLERS_PER_WORKER)}
        self.log_dir = log_dir
        self.live: list[subprocess.Popen] = []
        self.killed: list[int] = []
        self.started = 0

    def start(self) -> subprocess.Popen:
        self.started += 1
        log = open(self.log_dir / f"worker-{self.started}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "local.stack"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env={**self.env, "PORT": str(free_port())})
        log.close()
        self.live.append(proc)
        return proc

    def kill_one(self, rng: random.Random) -> None:
        victim = rng.choice(self.live)
        victim.send_signal(signal.SIGKILL)
        self.killed.append(victim.wait(10))
        self.live.remove(victim)
        self.start()  # a fresh one takes its place, as Lambda would

    def stop(self) -> None:
        for proc in self.live:
            proc.terminate()
        for proc in self.live:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.live = []

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for path in sorted(self.log_dir.glob("worker-*.log")):
            out.append(f"--- {path.name} ---\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)


pytestmark = pytest.mark.sim(seed=SEED, **FAULTS)  # the `sim` fixture (tests/conftest.py) with these knobs


def _reap_every(interval: float, stop: threading.Event, errors: list[BaseException]) -> None:
    quick = dataclasses.replace(get_settings(), stale_after_seconds=STALE_AFTER)
    while not stop.wait(interval):
        try:
            reaper.reap(quick)
        except Exception as err:
            if not store_unavailable(err):  # a sweep that times out is simply done again by the next one
                errors.append(err)


def _states(job_ids: list[str]) -> dict[str, Job] | None:
    """Every job, in one batch read; None if the (overloaded) store did not answer this round."""
    try:
        return {job.job_id: job for job in Job.batch_get(job_ids, consistent_read=True)}
    except PynamoDBException as err:
        if store_unavailable(err):
            return None
        raise


def _dead_letters(job_ids: set[str]) -> list[dict]:
    sqs = deps.client("sqs")
    url = sqs.get_queue_url(QueueName=f"{get_settings().prefix}-work-dlq")["QueueUrl"]
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0).get("Messages", [])
    return [json.loads(m["Body"]) for m in got if json.loads(m["Body"]).get("jobId") in job_ids]


def test_chaos_soak_every_job_ends_terminal_with_every_line_once(client, token_for, aws_endpoint, sim, tmp_path):
    print(f"chaos seed {SEED}: {JOBS} jobs x {LINES} lines, {WORKERS} workers, {KILLS} kills")
    rng = random.Random(SEED)
    started: dict[str, tuple[Api, list[dict]]] = {}
    for i in range(JOBS):
        api = Api(client, token_for())
        lines = expense_lines(LINES, vendors(LINES), prefix=f"c{i}")  # every line its own vendor: no cache help
        started[api.start(lines)] = (api, lines)
    job_ids = list(started)
    total = JOBS * LINES
    # Kill when this share of all lines is done: random moments, but always while work is in flight.
    kill_at = sorted(rng.uniform(0.1, 0.8) for _ in range(KILLS))

    workers = Workers(aws_endpoint, sim.url, tmp_path)
    stop, reaper_errors = threading.Event(), []
    sweeper = threading.Thread(target=_reap_every, args=(min(2.0, STALE_AFTER / 4), stop, reaper_errors),
                               daemon=True)
    for _ in range(WORKERS):
        workers.start()
    sweeper.start()
    deadline = time.monotonic() + DEADLINE
    try:
        jobs: dict[str, Job] = {}
        report_at = time.monotonic() + 15
        while True:
            jobs = _states(job_ids) or jobs
            if len(jobs) == len(job_ids) and all(JobStatus(j.status) in TERMINAL for j in jobs.values()):
                break
            done = sum(int(j.processed_lines) for j in jobs.values())
            if time.monotonic() > report_at:  # progress, for the long soak's log
                report_at += 15
                print(f"  {DEADLINE - deadline + time.monotonic():.0f}s: {done}/{total} lines, "
                      f"{sum(JobStatus(j.status) in TERMINAL for j in jobs.values())}/{JOBS} jobs terminal")
            while kill_at and done >= kill_at[0] * total:
                kill_at.pop(0)
                workers.kill_one(rng)
            assert time.monotonic() < deadline, (
                f"seed {SEED}: not terminal after {DEADLINE}s: "
                f"{ {k: (j.status, int(j.processed_lines)) for k, j in jobs.items()} }\n{workers.log_tail()}")
            stop.wait(0.5)  # a polling interval, not synchronization: the loop reads the state each round
    finally:
        stop.set()
        sweeper.join(10)
        workers.stop()
    took = time.monotonic() - deadline + DEADLINE
    assert not reaper_errors, reaper_errors
    assert len(workers.killed) == KILLS and all(code == -signal.SIGKILL for code in workers.killed)
    stats = sim.stats(include_log=False)
    assert stats["status_counts"].get("429") and stats["status_counts"].get("500") and stats["faults"], stats

    # Every job is terminal: Completed with every line exactly once (categorized or flagged), or Failed with a
    # reason a user can act on. Failed ones are retried with a calm provider and must then complete.
    failed = []
    for job_id, (api, lines) in started.items():
        job = api.job(job_id)
        assert job["status"] in ("Completed", "Failed"), (SEED, job)
        if job["status"] == "Failed":
            assert job["errorMessage"], job
            failed.append(job_id)
            continue
        result = assert_every_line_once(api, job_id, lines)
        flagged = [line for line in result["lines"] if line["needsReview"]]
        assert all(line["category"] is None for line in flagged)
        assert sum(t["lines"] for t in result["totals"]) == LINES - len(flagged)
    sim.configure(p429=0, p500=0, ptimeout=0, pmalformed=0, pmissing=0)
    calm = dataclasses.replace(get_settings(), openai_api_key="sk-test", openai_base_url=sim.url,
                               line_batch_size=10, model_batch_size=5)
    for job_id in failed:
        api, lines = started[job_id]
        assert api.call("post", f"/jobs/{job_id}/retry")[0] == 202
        drain({job_id}, calm)
        assert_every_line_once(api, job_id, lines)

    # No stall went unnoticed behind the reaper: only jobs a killed worker held needed it (a Processing job whose
    # worker handed it over and lost the message, or a chunk never sent, would show up here as a reap too).
    reaped = {}
    for job_id, (api, _) in started.items():
        events = api.call("get", f"/jobs/{job_id}/events")[1]["items"]
        if any(e["type"] == "reaped" and e["detail"].get("status", "Processing") == "Processing" for e in events):
            reaped[job_id] = [e["detail"] for e in events if e["type"] == "reaped"]
    assert len(reaped) <= KILLS * POLLERS_PER_WORKER, (SEED, workers.killed, reaped)
    for job_id, job in jobs.items():
        if job_id not in reaped and job_id not in failed:
            took_job = (clock.parse(job.completed_at) - clock.parse(job.created_at)).total_seconds()
            assert took_job <= JOB_BOUND, (SEED, job_id, took_job)

    # Nothing in the dead-letter queue is unexplained: any message of ours names a job Failed for it.
    for body in _dead_letters(set(job_ids)):
        events = started[body["jobId"]][0].call("get", f"/jobs/{body['jobId']}/events")[1]["items"]
        assert any(e["type"] == "failed" and e["detail"].get("deadLetter") for e in events), body
    print(f"chaos seed {SEED}: terminal in {took:.1f}s, kills {workers.killed}, failed then retried {len(failed)}, "
          f"provider {stats['status_counts']} faults {stats['faults']}")


# --- a data store that stops answering ----------------------------------------------------------------------


def test_a_data_store_that_times_out_is_503_problem_json_with_retry_after_on_every_route(client, token_for,
                                                                                        monkeypatch):
    import botocore.client
    from botocore.exceptions import ReadTimeoutError

    from tests.hardening.common import assert_problem, protected_routes, request_for

    original = botocore.client.BaseClient._make_api_call

    def timing_out(client_, operation, params):
        if client_.meta.service_model.service_name == "dynamodb":
            raise ReadTimeoutError(endpoint_url="http://dynamodb.invalid/")
        return original(client_, operation, params)

    headers = {**token_for().headers, "Content-Type": "application/json"}
    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", timing_out)
    for method, template in protected_routes():
        path, body = request_for(method, template)
        response = client.http.request(method, path, headers=headers, body=(body or "").encode())
        assert_problem(response.status_code, response.headers, response.body, 503)
        assert int(response.headers["Retry-After"]) > 0, (method, template)
