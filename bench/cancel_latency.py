"""Part `cancel` (issue 17, item 11): how long a cancel takes to be final, in each state a job can be in.

For each state, a job is brought there and cancelled through the API; the figure is the time from the DELETE
to the first GET that shows `Cancelled` (polled every 50 ms). The worker is the app's real SQS poller on a
thread of this process, against the provider simulator. Target: every cancel final within 3 s.

- queued: no worker has taken the job yet.
- running: a batch waits on a slow provider (each request takes BLOCKED s).
- 429 inline: the worker sits out a provider 429 of BLOCKED s inside the invocation.
- 429 in queue: the job was handed back to the queue with a 120 s delay (no lease held).
- fanned out: three chunks each wait on a slow provider.
- no worker: the job waits for a continuation and no worker is polling.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from bench.api import InProcessApi, in_process_worker, new_user, wait_idle
from bench.common import heading, percentile, secs, table, target
from bench.env import Run
from chalicelib.settings import get_settings
from local import testkit as support
from local.simulator import Simulator

REPEATS = 3
BLOCKED = 4.0
TARGET_SECONDS = 3.0
PERIOD = "2026-01"


def _until(check: Callable[[], Any], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError("the job never reached the state to cancel it in")
        time.sleep(0.02)


def _cancel(api: InProcessApi, headers: dict[str, str], job_id: str) -> float:
    started = time.monotonic()
    api.expect(200, "delete", f"/api/v1/jobs/{job_id}", headers)
    while api.job(headers, job_id)["status"] != "Cancelled":
        if time.monotonic() - started > 60:
            raise RuntimeError(f"job {job_id} was not Cancelled within 60 s")
        time.sleep(0.05)
    return time.monotonic() - started


def _job(api: InProcessApi, lines: int, vendors: int) -> tuple[dict[str, str], str]:
    _, headers = new_user("cancel")
    report_id = api.create_report(headers)
    api.import_lines(headers, support.expense_lines(lines, support.vendors(vendors), PERIOD))
    return headers, api.generate(headers, report_id, PERIOD)["jobId"]


def _events(api: InProcessApi, headers: dict[str, str], job_id: str) -> list[dict]:
    return api.expect(200, "get", f"/api/v1/jobs/{job_id}/events", headers)["items"]


def run(_: Run) -> None:
    heading("Cancel: from DELETE to Cancelled, in every state (target: within 3 s)")
    api = InProcessApi()
    sim = Simulator(latency=0.0).start()
    model = dataclasses.replace(get_settings(), openai_api_key="sk-test", openai_base_url=sim.url,
                                line_batch_size=20, line_read_ahead=1, model_batch_size=20, model_concurrency=1)
    fanout = dataclasses.replace(model, fanout_threshold_lines=50, chunk_lines=40)
    spent = dataclasses.replace(get_settings(), line_batch_size=20, line_read_ahead=1,
                                lambda_time_reserve_seconds=300)
    figures: dict[str, list[float]] = {}

    def measure(state: str, prepare: Callable[[], tuple[dict[str, str], str]], settings: Any = None,
                worker: bool = True) -> None:
        for _ in range(REPEATS):
            sim.reset()
            sim.configure(latency=0.0, rate_limit_burst=0)
            if worker:
                with in_process_worker(settings) as pollers:
                    headers, job_id = prepare()
                    figures.setdefault(state, []).append(_cancel(api, headers, job_id))
                    wait_idle(pollers, timeout=60)
            else:
                headers, job_id = prepare()
                figures.setdefault(state, []).append(_cancel(api, headers, job_id))

    def queued() -> tuple[dict[str, str], str]:
        return _job(api, 40, 40)

    def running() -> tuple[dict[str, str], str]:
        sim.configure(latency=BLOCKED)
        headers, job_id = _job(api, 60, 60)
        _until(lambda: sim.stats(include_log=False)["requests"] >= 1)
        return headers, job_id

    def inline_429() -> tuple[dict[str, str], str]:
        sim.configure(rate_limit_burst=1, burst_retry_after=BLOCKED)
        headers, job_id = _job(api, 60, 60)
        _until(lambda: sim.stats(include_log=False)["rate_limited"] >= 1)
        return headers, job_id

    def queued_429() -> tuple[dict[str, str], str]:
        sim.configure(rate_limit_burst=1, burst_retry_after=120)
        headers, job_id = _job(api, 60, 60)
        _until(lambda: any(e["type"] == "rate_limited" and "requeuedWithDelaySeconds" in e["detail"]
                           for e in _events(api, headers, job_id)))
        return headers, job_id

    def fanned_out() -> tuple[dict[str, str], str]:
        headers, job_id = _job(api, 120, 120)
        _until(lambda: api.job(headers, job_id)["statusMessage"].endswith("parallel chunks"))
        sim.configure(latency=BLOCKED)
        _until(lambda: sim.stats(include_log=False)["requests"] >= 3)
        return headers, job_id

    def no_worker() -> tuple[dict[str, str], str]:
        headers, job_id = _job(api, 60, 20)
        support.deliver(support.receive({job_id}), support.Ctx(), spent)  # one batch, then a continuation
        return headers, job_id

    measure("queued", queued, worker=False)
    measure("running (slow provider)", running, model)
    measure("429, waited inline", inline_429, dataclasses.replace(model, inline_wait_max_seconds=30))
    measure("429, waiting in the queue", queued_429, dataclasses.replace(model, inline_wait_max_seconds=1))
    measure("fanned out, chunks running", fanned_out, fanout)
    measure("no live worker", no_worker, worker=False)
    sim.stop()

    rows = [[state, str(len(v)), secs(percentile(v, 50)), secs(max(v))] for state, v in figures.items()]
    print(table(["state", "cancels", "p50 s", "max s"], rows))
    every = [x for v in figures.values() for x in v]
    target("every cancel final within 3 s", max(every) <= TARGET_SECONDS,
           f"p50 {secs(percentile(every, 50))} s, max {secs(max(every))} s over {len(every)} cancels "
           f"(the blocked workers stayed blocked {BLOCKED:.0f} s)")
