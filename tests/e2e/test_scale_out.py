"""Scale out: a 5,000-line job over 3 worker processes sharing one moto server and one provider quota."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from chalicelib import reaper
from chalicelib.jobs import chunks
from chalicelib.settings import get_settings
from local.simulator import Simulator
from local.stack import free_port
from tests.integration.test_worker import Api, assert_every_line_once
from tests.support import expense_lines, vendors, wait_for

ROOT = Path(__file__).resolve().parents[2]
RPM = 600


pytestmark = pytest.mark.sim(latency=0.2, rpm=RPM)  # the `sim` fixture (tests/conftest.py) with these knobs


def start_workers(aws_endpoint: str, sim: Simulator, n: int, crash_first: bool = False) -> list[subprocess.Popen]:
    procs = []
    for i in range(n):
        env = {**os.environ, "COMPONENTS": "worker", "CHALICE_STAGE": "pytest", "AWS_ENDPOINT_URL": aws_endpoint,
               "PORT": str(free_port()), "WORKER_WAIT_SECONDS": "1", "OPENAI_API_KEY": "sk-test",
               "OPENAI_BASE_URL": sim.url, "OPENAI_RPM": str(RPM), "FANOUT_THRESHOLD_LINES": "1000",
               "CHUNK_LINES": "500", "LINE_BATCH_SIZE": "100", "MODEL_CONCURRENCY": "4"}
        if crash_first and i == 0:
            env["WORKER_CRASH_AT"] = "after_checkpoint"
        procs.append(subprocess.Popen([sys.executable, "-m", "local.stack"], cwd=ROOT, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()


def test_5000_lines_over_3_workers_complete_exactly_once_under_the_shared_quota(client, token_for, aws_endpoint,
                                                                                 sim):
    api = Api(client, token_for())
    lines = expense_lines(5000, vendors(400))
    job_id = api.start(lines)
    procs = start_workers(aws_endpoint, sim, 3, crash_first=True)
    quick = dataclasses.replace(get_settings(), stale_after_seconds=5)
    done = threading.Event()

    def reap_until_done() -> None:  # the scheduler's job, on a shortened schedule
        while not done.wait(0.5):
            reaper.reap(quick)

    sweeper = threading.Thread(target=reap_until_done, daemon=True)
    sweeper.start()
    try:
        wait_for(lambda: api.job(job_id)["status"] in ("Completed", "Failed"), 120, interval=0.5,
                 what="the job to finish")
        assert procs[0].wait(timeout=10) == 137  # one worker died mid-chunk, holding its lease
    finally:
        done.set()
        stop(procs)
    assert_every_line_once(api, job_id, lines)
    assert int(api.job(job_id)["totalLines"]) == 5000
    assert len(chunks.of(job_id)) == 10
    events = [e["type"] for e in api.call("get", f"/jobs/{job_id}/events")[1]["items"]]
    assert "reaped" in events and events.count("completed") == 1
    stats = sim.stats()
    # The fleet kept under the provider's limit: 12 request slots, paced by one DynamoDB bucket.
    assert stats["rate_limited"] <= max(1, stats["requests"] // 100), stats["status_counts"]
    assert stats["max_requests_in_any_60s_window"] <= RPM + RPM // 60


def test_cancel_mid_way_stops_all_chunks(client, token_for, aws_endpoint, sim):
    sim.configure(latency=0.4)
    api = Api(client, token_for())
    job_id = api.start(expense_lines(5000, vendors(1000)))
    procs = start_workers(aws_endpoint, sim, 3)
    try:
        wait_for(lambda: api.job(job_id)["processedLines"] >= 100, 60, interval=0.3, what="progress")
        assert api.call("delete", f"/jobs/{job_id}")[0] == 200
        wait_for(lambda: api.job(job_id)["status"] == "Cancelled", 10, interval=0.2, what="Cancelled within 10 s")
        stopped_at = api.job(job_id)["processedLines"]
        wait_for(lambda: not any(c.status == chunks.RUNNING and c.lease_owner for c in chunks.of(job_id)), 15,
                 interval=0.3, what="every chunk to stop")
        assert api.job(job_id)["processedLines"] <= stopped_at + 100 * 3  # at most the batches in flight
        assert 0 < api.job(job_id)["processedLines"] < 5000
    finally:
        stop(procs)

