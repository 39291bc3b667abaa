"""Part `seams`: the worker's throughput with all its performance seams on, then with each one off
(chalicelib/worker/seams.py), as ratios to all-on.

Two workloads, each run in this process against the provider simulator (latency LATENCY s, no rate limit), every
message handled as its own Lambda invocation with up to CONCURRENCY of them at once:

- whole: WHOLE_JOBS jobs of WHOLE_LINES lines, one after the other; each fits one read-ahead, so one invocation
  works it whole (memory assembly and completing with the last batch apply).
- fanned out: one job of FANOUT_LINES lines in chunks of CHUNK_LINES that run at once over shared vendors
  (vendor claims apply).

Each job meets vendors the cache has never seen (a fresh salt per run). Throughput is lines per second from the
generate call to Completed, the best of ROUNDS rounds; a ratio under 1.00x means the seam's shortcut was worth
that much. Short-running: under a minute with the stack already up.
"""

from __future__ import annotations

import dataclasses
import logging
import string
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.api import InProcessApi, new_user
from bench.common import heading, note, ratio, secs, table, times
from bench.env import Run
from chalicelib import deps, worker
from chalicelib.jobs.states import TERMINAL, JobStatus
from chalicelib.settings import Settings, get_settings
from chalicelib.tables import Job
from chalicelib.worker import seams
from local.simulator import Simulator

LATENCY = 0.2
CONCURRENCY = 4
ROUNDS = 2  # every configuration once per round, the best round shown: a busy machine only ever slows a run
WHOLE_JOBS, WHOLE_LINES, WHOLE_VENDORS = 2, 300, 60
FANOUT_LINES, CHUNK_LINES, FANOUT_VENDORS = 1200, 300, 120
CONFIGS = [("all seams on", {}), *((f"{name} off", {name: False}) for name in seams.ALL)]


class _Ctx:
    """A Lambda context: 5 minutes left, its own request id (the lease owner)."""

    function_name = "process_work"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:process_work"

    def __init__(self) -> None:
        self.aws_request_id = str(uuid.uuid4())

    def get_remaining_time_in_millis(self) -> int:
        return 300_000


def _event(message: dict[str, Any]) -> dict[str, Any]:
    return {"Records": [{"messageId": message["MessageId"], "receiptHandle": message["ReceiptHandle"],
                         "body": message["Body"], "attributes": {"ApproximateReceiveCount": "1"},
                         "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
                         "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:work", "awsRegion": "us-east-1"}]}


def _invoke(message: dict[str, Any], settings: Settings) -> None:
    sqs, url = deps.client("sqs"), deps.work_queue_url()
    out = worker.handle_batch(_event(message), _Ctx(), settings)
    if out["batchItemFailures"]:
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0)
    else:
        sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def run_until_done(job_id: str, settings: Settings, timeout: float = 120.0,
                   each_round: Callable[[Job], None] | None = None) -> None:
    """Hand every work message to the worker, each its own invocation, until the job is terminal.

    `each_round` sees the job after every round that left it running (the cost part polls the provider's batches).
    """
    sqs, url = deps.client("sqs"), deps.work_queue_url()
    deadline = time.monotonic() + timeout
    with ThreadPoolExecutor(max_workers=CONCURRENCY, thread_name_prefix="invocation") as pool:
        while True:
            got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
            if got:
                list(pool.map(lambda m: _invoke(m, settings), got))
            job = Job.get(job_id, consistent_read=True)
            if JobStatus(job.status) in TERMINAL:
                if job.status != JobStatus.COMPLETED.value:
                    raise RuntimeError(f"job {job_id} ended {job.status}: {job.error_message}")
                return
            if each_round:
                each_round(job)
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} still {job.status} after {timeout:.0f} s")
            if not got:
                time.sleep(0.02)


def letters(n: int) -> str:
    """`n` in letters: vendor normalization drops every word with a digit in it."""
    out = ""
    while True:
        n, digit = divmod(n, 26)
        out = string.ascii_uppercase[digit] + out
        if not n:
            return out


def _lines(n: int, vendors: int, period: str) -> list[dict[str, str]]:
    salt = letters(uuid.uuid4().int % 26 ** 8)  # vendors the cache has never seen
    return [{"lineId": f"s-{i:06d}", "date": f"{period}-{1 + i % 28:02d}",
             "vendor": f"Vendor {salt} {letters(i % vendors)}", "amount": f"{1 + i % 500}.{i % 100:02d}",
             "currency": "USD", "description": "expense"} for i in range(n)]


def _timed_job(api: InProcessApi, headers: dict[str, str], report_id: str, lines: list[dict[str, str]],
               period: str, settings: Settings) -> float:
    for start in range(0, len(lines), 5000):
        api.import_lines(headers, lines[start:start + 5000])
    started = time.perf_counter()
    job = api.generate(headers, report_id, period)
    run_until_done(job["jobId"], settings)
    return time.perf_counter() - started


def _measure(sim: Simulator, base: Settings, flags: dict[str, bool], api: InProcessApi) -> dict[str, Any]:
    settings = seams.with_seams(base, **flags)
    _, headers = new_user("seams")
    report_id = api.create_report(headers)
    sim.reset()
    whole = sum(_timed_job(api, headers, report_id, _lines(WHOLE_LINES, WHOLE_VENDORS, f"2025-{1 + n:02d}"),
                           f"2025-{1 + n:02d}", settings) for n in range(WHOLE_JOBS))
    # with_seams last: a seam Settings does not declare yet would not survive dataclasses.replace.
    fanned_settings = seams.with_seams(dataclasses.replace(base, fanout_threshold_lines=FANOUT_LINES - 1,
                                                           chunk_lines=CHUNK_LINES), **flags)
    sim.reset()
    fanned = _timed_job(api, headers, report_id, _lines(FANOUT_LINES, FANOUT_VENDORS, "2025-12"), "2025-12",
                        fanned_settings)
    return {"whole": WHOLE_JOBS * WHOLE_LINES / whole, "fanned": FANOUT_LINES / fanned,
            "fanned_requests": sim.stats(include_log=False)["requests"]}


def run(bench: Run) -> None:
    heading(f"Worker seams: throughput with each performance shortcut off ({WHOLE_JOBS} whole jobs of {WHOLE_LINES} "
            f"lines; one job of {FANOUT_LINES} lines in chunks of {CHUNK_LINES}; simulator latency {LATENCY:g} s)")
    # The invocations share this process's boto clients (10 connections each): a few more threads than that
    # only means a connection is made again now and then, not worth a warning line each time.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    sim = Simulator(latency=LATENCY).start()
    try:
        base = dataclasses.replace(get_settings(), openai_api_key="sk-bench", openai_base_url=sim.url)
        api = InProcessApi()
        _, headers = new_user("seams-warm-up")  # clients, connections and bytecode made before any clock starts
        _timed_job(api, headers, api.create_report(headers), _lines(WHOLE_LINES, WHOLE_VENDORS, "2024-01"),
                   "2024-01", base)
        rounds = [[_measure(sim, base, flags, api) for _, flags in CONFIGS] for _ in range(ROUNDS)]  # interleaved
    finally:
        sim.stop()
    figures = [(name, {"whole": max(r[n]["whole"] for r in rounds), "fanned": max(r[n]["fanned"] for r in rounds),
                       "fanned_requests": rounds[-1][n]["fanned_requests"]}) for n, (name, _) in enumerate(CONFIGS)]
    on = figures[0][1]
    rows = [[name, f"{f['whole']:.0f}", times(ratio(f["whole"], on["whole"])), f"{f['fanned']:.0f}",
             times(ratio(f["fanned"], on["fanned"])), str(f["fanned_requests"])] for name, f in figures]
    print(table(["configuration", "whole lines/s", "vs all on", "fanned-out lines/s", "vs all on",
                 "fanned-out model requests"], rows))
    note("ratios are throughput against all seams on: under 1.00x, switching the seam off made the worker slower")
    note(f"best of {ROUNDS} rounds; differences within ~10% are noise on a shared machine (whole jobs took "
         f"{secs(WHOLE_JOBS * WHOLE_LINES / on['whole'])} s in all with every seam on)")
