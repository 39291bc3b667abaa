"""Part 5: scale-out. One job of N lines (N/4 distinct vendors, cold cache) worked by 4 worker processes.

Each worker is `python -m local.stack` with COMPONENTS=worker against this run's moto server, behind a tiny
`python -c` wrapper that counts the process's AWS calls (botocore's client, which boto3 and PynamoDB share) and
writes the counts to a JSON file every 0.5 s and at exit; chalicelib and local/ are untouched. The simulator runs
in this process at 600 requests/min, 150,000 tokens/min and 0.5 s latency. Lines are imported before the clock
starts; wall = POST generate -> the first GET (every 0.25 s) showing Completed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.client

from bench.api import TERMINAL_STATES, InProcessApi, new_user, quiesce
from bench.common import heading, note, table, target
from bench.env import PREFIX, ROOT, STAGE, Run
from chalicelib import clock
from local import testkit as support
from local.simulator import Simulator
from local.stack import ManagedProcess

SIZES = (2_000, 20_000)
WORKERS, MODEL_CONCURRENCY, MODEL_BATCH_SIZE = 4, 4, 25
LATENCY, RPM, TPM = 0.5, 600, 150_000
IMPORT_MAX = 5_000  # lines per import request
POLL = 0.25
BOUND_TARGET, SHARE_429_TARGET, RSS_TARGET_MB = 0.90, 0.01, 200.0
DDB_WRITES = ("PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems")
SQS_SENDS = ("SendMessage", "SendMessageBatch")

# Counts by operation ("calls:Op") and by items written or messages sent ("items:Op"); see _weight().
WRAPPER = """
import atexit, collections, json, os, runpy, sys, threading
import botocore.client
counts, lock, path = collections.Counter(), threading.Lock(), os.environ["BENCH_CALLS_FILE"]
original = botocore.client.BaseClient._make_api_call
def weight(op, params):
    if op == "BatchWriteItem":
        return sum(len(v) for v in params.get("RequestItems", {}).values())
    if op == "TransactWriteItems":
        return len(params.get("TransactItems", []))
    if op == "SendMessageBatch":
        return len(params.get("Entries", []))
    return 1
def counting(self, op, params):
    with lock:
        counts["calls:" + op] += 1
        counts["items:" + op] += weight(op, params)
    return original(self, op, params)
botocore.client.BaseClient._make_api_call = counting
def dump():
    with lock:
        data = json.dumps(dict(counts))
    with open(path + ".tmp", "w") as out:
        out.write(data)
    os.replace(path + ".tmp", path)
def loop():
    while True:
        dump()
        threading.Event().wait(0.5)
threading.Thread(target=loop, daemon=True).start()
atexit.register(dump)
sys.argv = ["local.stack"]
runpy.run_module("local.stack", run_name="__main__", alter_sys=True)
"""


def _weight(op: str, params: dict[str, Any]) -> int:
    if op == "BatchWriteItem":
        return sum(len(v) for v in params.get("RequestItems", {}).values())
    if op == "TransactWriteItems":
        return len(params.get("TransactItems", []))
    if op == "SendMessageBatch":
        return len(params.get("Entries", []))
    return 1


@contextlib.contextmanager
def counted_calls() -> Iterator[Counter[str]]:
    """This process's AWS calls (the in-process API's generate and job reads), counted like the workers'."""
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    original = botocore.client.BaseClient._make_api_call

    def counting(self: Any, op: str, params: dict[str, Any]) -> Any:
        with lock:
            counts["calls:" + op] += 1
            counts["items:" + op] += _weight(op, params)
        return original(self, op, params)

    botocore.client.BaseClient._make_api_call = counting  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        botocore.client.BaseClient._make_api_call = original  # type: ignore[method-assign]


# --- workers ---------------------------------------------------------------------------------------------------


@dataclass
class Worker:
    process: ManagedProcess
    calls_file: Path

    def counts(self) -> Counter[str]:
        try:
            return Counter(json.loads(self.calls_file.read_text()))
        except (OSError, ValueError):
            return Counter()

    def peak_rss_mb(self) -> float:
        """VmHWM (peak resident set) from /proc, in MB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
        return math.nan


def start_workers(bench: Run, sim_url: str, tag: str) -> list[Worker]:
    workers = []
    for i in range(WORKERS):
        calls_file = bench.workdir / f"scale-{tag}-worker-{i}.json"
        env = {**os.environ, "COMPONENTS": "worker", "AWS_ENDPOINT_URL": bench.aws_url, "CHALICE_STAGE": STAGE,
               "APP_PREFIX": PREFIX, "WORKER_WAIT_SECONDS": "1", "OPENAI_API_KEY": "sk-bench",
               "OPENAI_BASE_URL": sim_url, "OPENAI_RPM": str(RPM), "OPENAI_TPM": str(TPM),
               "FANOUT_THRESHOLD_LINES": "1000", "CHUNK_LINES": "1000", "MODEL_CONCURRENCY": str(MODEL_CONCURRENCY),
               "MODEL_BATCH_SIZE": str(MODEL_BATCH_SIZE),
               "PYTHONUNBUFFERED": "1", "BENCH_CALLS_FILE": str(calls_file)}
        process = ManagedProcess(f"scale worker {i}", [sys.executable, "-c", WRAPPER], env=env, cwd=ROOT,
                                 log_path=bench.log_path(f"scale-{tag}-worker-{i}"))
        bench.defer(process.stop, 3.0)  # in case the finally below never runs
        workers.append(Worker(process.start(), calls_file))
    deadline = time.monotonic() + 90.0
    for worker in workers:
        log_path = worker.process.log_path
        while not (log_path and log_path.exists() and "Local stack ready" in log_path.read_text(errors="replace")):
            if not worker.process.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{worker.process.name} did not start{worker.process.log_tail()}")
            time.sleep(0.1)
    return workers


def stop_workers(workers: list[Worker]) -> None:
    for worker in workers:
        worker.process.terminate()
    for worker in workers:
        worker.process.stop(10.0)  # SIGTERM again, wait, then SIGKILL


def total(counts: Counter[str], ops: tuple[str, ...]) -> int:
    return sum(counts["items:" + op] for op in ops)


# --- one run ---------------------------------------------------------------------------------------------------


@dataclass
class Result:
    lines: int
    wall: float
    ok_requests: int
    requests: int
    rate_limited: int
    tokens: int
    rss_mb: list[float]
    counts: Counter[str]
    vendors: int  # distinct vendors in the job
    phases: str = ""

    def terms(self, requests: int) -> dict[str, float]:
        """The least wall time `requests` requests need under the limits, term by term. Tokens are what the
        provider charged against tokens-per-minute (prompt plus max_completion_tokens), per request on average."""
        tokens = self.tokens / self.ok_requests * requests if self.ok_requests else 0.0
        waves = math.ceil(requests / (WORKERS * MODEL_CONCURRENCY))
        return {"requests/rpm": requests / RPM * 60.0, "tokens/tpm": tokens / TPM * 60.0,
                "latency x waves": LATENCY * waves}

    @property
    def bound_terms(self) -> dict[str, float]:
        return self.terms(self.ok_requests)

    @property
    def bound_seconds(self) -> float:
        return max(self.bound_terms.values())

    @property
    def fewest_requests(self) -> int:
        """One request per MODEL_BATCH_SIZE distinct vendors: no vendor asked twice."""
        return math.ceil(self.vendors / MODEL_BATCH_SIZE)

    @property
    def fewest_bound_seconds(self) -> float:
        return max(self.terms(self.fewest_requests).values())

    @property
    def per_minute(self) -> float:
        return self.lines / self.wall * 60.0

    @property
    def bound_per_minute(self) -> float:
        return self.lines / self.bound_seconds * 60.0 if self.bound_seconds > 0 else math.inf

    @property
    def share_429(self) -> float:
        return self.rate_limited / self.requests if self.requests else 0.0

    def per_1k(self, value: float) -> float:
        return value / self.lines * 1000.0

    def row(self) -> list[str]:
        return [f"{self.lines:,}", f"{self.wall:.1f}", f"{self.per_minute:,.0f}", f"{self.bound_per_minute:,.0f}",
                f"{self.per_minute / self.bound_per_minute:.1%}",
                f"{self.fewest_bound_seconds / self.wall:.1%}",
                f"{self.share_429:.2%}", f"{max(self.rss_mb):.0f}",
                f"{self.per_1k(total(self.counts, DDB_WRITES)):.0f}",
                f"{self.per_1k(total(self.counts, SQS_SENDS)):.2f}",
                f"{self.per_1k(self.requests):.1f}"]


def wait_completed(api: InProcessApi, headers: dict[str, str], job_id: str, timeout: float = 900.0) -> dict[str, Any]:
    """Poll GET job every POLL s until terminal; a 500 (moto's server timing out under the workers' load) is
    polled again rather than ending the run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, job = api.call("get", f"/api/v1/jobs/{job_id}", headers)
        if status == 200 and job["status"] in TERMINAL_STATES:
            return job
        if status not in (200, 500):
            raise RuntimeError(f"GET job {job_id}: {status} {job}")
        time.sleep(POLL)
    raise RuntimeError(f"job {job_id} not terminal after {timeout:.0f} s")


def phases(job: dict[str, Any], log: list[dict[str, Any]], wall: float) -> str:
    """Where the wall time went: queue wait, the span of model requests, and the rest."""
    created, started, completed = (clock.parse(job[k]) for k in ("createdAt", "startedAt", "completedAt"))
    if not (created and started and completed) or not log:
        return "phases unknown"
    first, last = log[0]["t"], log[-1]["t"] + LATENCY
    return (f"created -> started {(started - created).total_seconds():.1f} s; model requests from {first:.1f} s to "
            f"{last:.1f} s after POST; started -> completed {(completed - started).total_seconds():.1f} s; "
            f"{wall - last:.1f} s from the last answer to Completed")


def distinct_vendors(k: int) -> list[str]:
    """`k` distinct vendors, cold in the cache: support.vendors() in blocks of 1,000, each with a fresh random salt.

    One support.vendors(k) call spells vendor i with i // 26 x's: past ~4,000 that is over the API's 200 characters.
    """
    out: list[str] = []
    while len(out) < k:
        out += support.vendors(min(1000, k - len(out)))
    return out


def one_run(bench: Run, n: int) -> Result:
    quiesce()
    lines = support.expense_lines(n, distinct_vendors(n // 4))
    api = InProcessApi()
    _, headers = new_user("scale")
    report_id = api.create_report(headers)
    for start in range(0, n, IMPORT_MAX):
        api.import_lines(headers, lines[start:start + IMPORT_MAX])
    sim = Simulator(latency=LATENCY, rpm=RPM, tpm=TPM).start()
    workers: list[Worker] = []
    try:
        workers = start_workers(bench, sim.url, str(n))
        time.sleep(0.6)  # a counts file written after start-up (the deploy attach) is the baseline
        before = sum((w.counts() for w in workers), Counter())
        sim.reset()
        with counted_calls() as api_counts:
            started = time.perf_counter()
            job = api.generate(headers, report_id, "2026-01")
            done = wait_completed(api, headers, job["jobId"])
            wall = time.perf_counter() - started
        if done["status"] != "Completed":
            raise RuntimeError(f"job {job['jobId']} ended {done['status']}: {done.get('errorMessage')}")
        stats = sim.stats(include_log=True)
        time.sleep(1.2)  # the workers' trailing calls (message deletes) and their next counts dump
        after = sum((w.counts() for w in workers), Counter())
        rss = [w.peak_rss_mb() for w in workers]
    finally:
        stop_workers(workers)
        sim.stop()
    after.subtract(before)
    api_counts.pop("calls:GetItem", None)  # the bench's own job polls are reads: leave them out
    api_counts.pop("items:GetItem", None)
    after.update(api_counts)
    return Result(n, wall, stats["ok"], stats["requests"], stats["rate_limited"], stats["tokens"]["charged"], rss,
                  after, n // 4, phases(done, stats["log"], wall))


def run(bench: Run) -> None:
    heading(f"Scale-out: {WORKERS} worker processes (MODEL_CONCURRENCY {MODEL_CONCURRENCY}, chunks of 1,000 lines), "
            f"simulator {RPM} requests/min, {TPM:,} tokens/min, {LATENCY:g} s latency; N/4 distinct vendors")
    results = []
    for n in SIZES:
        results.append(one_run(bench, n))
        print(f"  {n:,} lines done in {results[-1].wall:.1f} s", flush=True)
    print(table(["lines", "wall s", "lines/min", "bound lines/min", "% of bound", "% of fewest-requests bound",
                 "429 share",
                 "peak RSS MB (max worker)", "DDB writes/1k lines", "SQS msgs/1k lines", "model reqs/1k lines"],
                [r.row() for r in results]))
    for r in results:
        terms = "; ".join(f"{k} {v:.1f} s" for k, v in r.bound_terms.items())
        note(f"{r.lines:,} lines: bound = max({terms}) = {r.bound_seconds:.1f} s from {r.ok_requests} requests "
             f"answered 200 and the {r.tokens:,} tokens charged for them; {r.requests} requests in all, "
             f"{r.rate_limited} answered 429; peak RSS per worker {', '.join(f'{m:.0f}' for m in r.rss_mb)} MB")
        note(f"{r.lines:,} lines: fewest-requests bound {r.fewest_bound_seconds:.1f} s: {r.fewest_requests} requests "
             f"({r.vendors:,} distinct vendors / {MODEL_BATCH_SIZE}); {r.ok_requests - r.fewest_requests} more were "
             "sent (chunks running at once ask about the vendors they share)")
        note(f"{r.lines:,} lines: {r.phases}")
        ops = sorted(k[6:] for k in r.counts if k.startswith("items:") and r.counts[k] and
                     k[6:] in DDB_WRITES + SQS_SENDS)
        note(f"{r.lines:,} lines: writes and sends (calls / items): "
             + ", ".join(f"{op} {r.counts['calls:' + op]}/{r.counts['items:' + op]}" for op in ops))
    big = results[-1]
    pct = big.per_minute / big.bound_per_minute
    target(f"at least {BOUND_TARGET:.0%} of the bound at {big.lines:,} lines", pct >= BOUND_TARGET,
           f"{big.per_minute:,.0f} / {big.bound_per_minute:,.0f} lines/min = {pct:.1%}")
    target(f"at most {SHARE_429_TARGET:.0%} of requests answered 429 at {big.lines:,} lines",
           big.share_429 <= SHARE_429_TARGET, f"{big.rate_limited} / {big.requests} = {big.share_429:.2%}")
    target(f"peak RSS at most {RSS_TARGET_MB:.0f} MB per worker at {big.lines:,} lines",
           max(big.rss_mb) <= RSS_TARGET_MB, f"max {max(big.rss_mb):.0f} MB")
    note("DynamoDB writes count items written (PutItem, UpdateItem, DeleteItem, BatchWriteItem and "
         "TransactWriteItems items), SQS messages count messages sent (SendMessage, SendMessageBatch entries), "
         "both exact counts of the calls the 4 workers made from POST generate to Completed (plus the "
         "generate request's own); imports, start-up and the bench's job polls are left out")
    note("tokens are counted as the provider counts them against tokens-per-minute when a request arrives: the "
         "prompt plus max_completion_tokens (the simulator's `charged`), not the tokens the answers used")
    note("peak RSS is VmHWM of each worker process (whole lifetime: start-up and this one job)")
