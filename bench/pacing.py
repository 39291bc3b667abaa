"""Part `pacing`: 4 workers against a provider that enforces its limit over rolling one-second windows.

One simulator process (`python -m local.simulator`) per side, both alike: at most RPM/60 requests in any rolling
second (window mode) besides the per-minute buckets, TPM tokens a minute settled from usage, LATENCY s per answer.

- paced: one job of LINES lines (one distinct vendor each, cold cache) worked by 4 worker processes
  (`python -m local.stack` with COMPONENTS=worker), with no OPENAI_RPM / OPENAI_TPM: the limits are learned from the
  simulator's headers and paced through the shared limiter at the default OPENAI_LIMIT_MARGIN. Wall time is POST
  generate -> the first GET (every 0.25 s) showing Completed, so start-up and completion count against it.
- cookbook: the OpenAI cookbook's parallel processor (examples/api_request_parallel_processor.py) as 4 workers,
  each a thread with its own static quarter of the limits: one request per line, a full minute of capacity at the
  start, refilled continuously, and every request paused 15 s after a 429 (failed requests retried up to 5
  times). It runs for BASELINE_SECONDS (its lines would take far longer than the bench may).

Both sides ask through the same request (chalicelib.categorize.provider.ask); a side's request-rate bound is its
requests answered 200 at the limit's rate: ok / RPM minutes, against its wall time.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import requests

from bench.api import TERMINAL_STATES, InProcessApi, new_user, quiesce
from bench.common import heading, note, table, target
from bench.env import PREFIX, ROOT, STAGE, Run
from local.stack import ManagedProcess, free_port

WORKERS, MODEL_CONCURRENCY, MODEL_BATCH_SIZE = 4, 4, 25
# Tokens are not the binding limit here (a request is charged about 3,700: its cacheable prefix, the vendors and
# max_completion_tokens): the goal is about the request rate.
RPM, TPM, WINDOW_SECONDS, LATENCY = 240, 4_000_000, 1.0, 0.3
# One vendor each: LINES / MODEL_BATCH_SIZE requests (480: 120 s at RPM). A job has fixed costs the pace cannot
# touch (about 2.5 s from POST to its first request, learning the limits included, and about 2.5 s from the last
# answer to Completed, reading back and writing the report); two minutes of requests keep them to the share of a
# real long job.
LINES = 12_000
BASELINE_SECONDS = 40.0
COOKBOOK_PAUSE_SECONDS, COOKBOOK_ATTEMPTS, COOKBOOK_IN_FLIGHT = 15.0, 5, 16
IMPORT_MAX = 5_000
POLL = 0.25
SHARE_429_TARGET, BOUND_TARGET = 0.01, 0.90


# --- the simulator, in a process of its own (its arrival times are not the bench's GIL's) ------------------------


class SimProcess:
    def __init__(self, bench: Run, name: str) -> None:
        port = free_port()
        argv = [sys.executable, "-m", "local.simulator", "--port", str(port), "--rpm", str(RPM), "--tpm", str(TPM),
                "--window-seconds", str(WINDOW_SECONDS), "--latency", str(LATENCY), "--settle-tokens"]
        self.root = f"http://127.0.0.1:{port}"
        self.url = self.root + "/v1"
        self.process = ManagedProcess(f"simulator {name}", argv, env=dict(os.environ), cwd=ROOT,
                                      log_path=bench.log_path(f"pacing-sim-{name}"))
        bench.defer(self.process.stop, 3.0)
        self.process.start()
        deadline = time.monotonic() + 30.0
        while True:
            try:
                requests.get(self.root + "/_sim/stats?log=0", timeout=1).raise_for_status()
                return
            except requests.RequestException:
                if time.monotonic() > deadline or not self.process.alive():
                    raise RuntimeError(f"the simulator did not start{self.process.log_tail()}") from None
                time.sleep(0.1)

    def reset(self) -> None:
        requests.post(self.root + "/_sim/reset", timeout=5).raise_for_status()

    def stats(self) -> dict[str, Any]:
        answer = requests.get(self.root + "/_sim/stats", timeout=10)
        answer.raise_for_status()
        return dict(answer.json())

    def stop(self) -> None:
        self.process.stop(3.0)


def busiest_second(log: list[dict[str, Any]]) -> int:
    """The most requests (any answer) that arrived within one rolling window of WINDOW_SECONDS."""
    times = sorted(entry["t"] for entry in log)
    most, first = 0, 0
    for last, t in enumerate(times):
        while times[first] <= t - WINDOW_SECONDS:
            first += 1
        most = max(most, last - first + 1)
    return most


@dataclass
class Side:
    name: str
    lines: int  # lines categorized (paced: the job's; cookbook: lines answered 200)
    wall: float
    stats: dict[str, Any]
    detail: str = ""

    @property
    def requests(self) -> int:
        return int(self.stats["requests"])

    @property
    def rate_limited(self) -> int:
        return int(self.stats["rate_limited"])

    @property
    def share_429(self) -> float:
        return self.rate_limited / self.requests if self.requests else 0.0

    @property
    def bound_seconds(self) -> float:
        return int(self.stats["ok"]) / RPM * 60.0

    @property
    def of_bound(self) -> float:
        return self.bound_seconds / self.wall if self.wall > 0 else 0.0

    @property
    def phase(self) -> float:
        """Seconds from the first request's arrival to the last one's answer: the time the provider was asked."""
        log = self.stats["log"]
        return log[-1]["t"] - log[0]["t"] + LATENCY if log else 0.0

    @property
    def of_bound_in_phase(self) -> float:
        return self.bound_seconds / self.phase if self.phase > 0 else 0.0

    def row(self) -> list[str]:
        return [self.name, f"{self.wall:.1f}", str(self.requests), str(self.stats["ok"]), str(self.rate_limited),
                f"{self.share_429:.2%}", f"{int(self.stats['ok']) / self.wall * 60:.0f}", f"{self.of_bound:.1%}",
                f"{self.of_bound_in_phase:.1%}",
                f"{self.lines / self.wall * 60:,.0f}", f"{busiest_second(self.stats['log'])}",
                str(self.stats["early_retries"])]


# --- paced: the fleet ------------------------------------------------------------------------------------------


def start_workers(bench: Run, sim_url: str) -> list[ManagedProcess]:
    workers = []
    for i in range(WORKERS):
        env = {**os.environ, "COMPONENTS": "worker", "AWS_ENDPOINT_URL": bench.aws_url, "CHALICE_STAGE": STAGE,
               "APP_PREFIX": PREFIX, "WORKER_WAIT_SECONDS": "1", "OPENAI_API_KEY": "sk-bench-pacing",
               "OPENAI_BASE_URL": sim_url, "FANOUT_THRESHOLD_LINES": "1000", "CHUNK_LINES": "1000",
               "MODEL_CONCURRENCY": str(MODEL_CONCURRENCY), "MODEL_BATCH_SIZE": str(MODEL_BATCH_SIZE),
               "PYTHONUNBUFFERED": "1"}
        process = ManagedProcess(f"pacing worker {i}", [sys.executable, "-m", "local.stack"], env=env, cwd=ROOT,
                                 log_path=bench.log_path(f"pacing-worker-{i}"))
        bench.defer(process.stop, 3.0)
        workers.append(process.start())
    deadline = time.monotonic() + 90.0
    for worker in workers:
        log_path = worker.log_path
        while not (log_path and log_path.exists() and "Local stack ready" in log_path.read_text(errors="replace")):
            if not worker.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{worker.name} did not start{worker.log_tail()}")
            time.sleep(0.1)
    return workers


def paced(bench: Run) -> Side:
    from bench.scale_out import distinct_vendors
    from local import testkit

    quiesce()
    lines = testkit.expense_lines(LINES, distinct_vendors(LINES))
    api = InProcessApi()
    _, headers = new_user("pacing")
    report_id = api.create_report(headers)
    for start in range(0, LINES, IMPORT_MAX):
        api.import_lines(headers, lines[start:start + IMPORT_MAX])
    sim = SimProcess(bench, "paced")
    workers: list[ManagedProcess] = []
    try:
        workers = start_workers(bench, sim.url)
        sim.reset()
        started = time.perf_counter()
        job = api.generate(headers, report_id, "2026-01")
        while True:
            status, done = api.call("get", f"/api/v1/jobs/{job['jobId']}", headers)
            if status == 200 and done["status"] in TERMINAL_STATES:
                break
            if time.perf_counter() - started > 600:
                raise RuntimeError(f"job {job['jobId']} not terminal after 600 s")
            time.sleep(POLL)
        wall = time.perf_counter() - started
        stats = sim.stats()
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.stop(10.0)
        sim.stop()
    if done["status"] != "Completed":
        raise RuntimeError(f"job {job['jobId']} ended {done['status']}: {done.get('errorMessage')}")
    log = stats["log"]
    detail = (f"{done['processedLines']:,} lines, {done['failedLines']} flagged; model requests from "
              f"{log[0]['t']:.1f} s to {log[-1]['t']:.1f} s after POST (the rest of the wall time is the job's "
              "fan-out before them and its completion after)" if log else "no model requests")
    return Side("paced (this fleet)", int(done["processedLines"]), wall, stats, detail)


# --- cookbook: the baseline ------------------------------------------------------------------------------------


@dataclass
class Cookbook:
    """api_request_parallel_processor.py's loop, one line a request, on threads instead of asyncio."""

    url: str
    lines: deque[dict[str, str]]
    rpm: float
    tpm: float
    stop_at: float
    answered: list[int] = field(default_factory=lambda: [0])
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _last_429: float = -math.inf
    _retries: deque[tuple[dict[str, str], int]] = field(default_factory=deque)

    def run(self) -> None:
        from chalicelib.categorize import provider
        from chalicelib.categorize.types import Item
        from chalicelib.reports.service import DEFAULT_CATEGORIES

        api = provider.client("sk-cookbook", self.url)
        cats = list(DEFAULT_CATEGORIES)
        capacity_r, capacity_t, updated = self.rpm, self.tpm, time.monotonic()  # a full minute to start with
        in_flight = threading.Semaphore(COOKBOOK_IN_FLIGHT)

        def call(line: dict[str, str], attempt: int) -> None:
            try:
                provider.ask(api, "gpt-4o-mini", [Item("v0", line["vendor"], line["description"])], cats)
                with self._lock:
                    self.answered[0] += 1
            except provider.ProviderError as err:
                with self._lock:
                    if err.name == provider.RATE_LIMITED:
                        self._last_429 = time.monotonic()
                    if attempt + 1 < COOKBOOK_ATTEMPTS:
                        self._retries.append((line, attempt + 1))
            finally:
                in_flight.release()

        with ThreadPoolExecutor(max_workers=COOKBOOK_IN_FLIGHT) as pool:
            pending: tuple[dict[str, str], int] | None = None
            while time.monotonic() < self.stop_at:
                with self._lock:
                    if pending is None and self._retries:
                        pending = self._retries.popleft()
                    pause = self._last_429 + COOKBOOK_PAUSE_SECONDS - time.monotonic()
                if pending is None and self.lines:
                    pending = (self.lines.popleft(), 0)
                now = time.monotonic()
                capacity_r = min(self.rpm, capacity_r + self.rpm * (now - updated) / 60.0)
                capacity_t = min(self.tpm, capacity_t + self.tpm * (now - updated) / 60.0)
                updated = now
                if pause > 0:  # "pause to cool down" after a rate-limit error
                    time.sleep(min(pause, max(0.0, self.stop_at - now)))
                    continue
                tokens = 400  # the cookbook counts prompt + max_tokens; a one-line request is about this
                if pending is not None and capacity_r >= 1 and capacity_t >= tokens \
                        and in_flight.acquire(timeout=0.001):
                    capacity_r, capacity_t = capacity_r - 1, capacity_t - tokens
                    pool.submit(call, *pending)
                    pending = None
                else:
                    time.sleep(0.001)


def cookbook(bench: Run) -> Side:
    from bench.scale_out import distinct_vendors
    from local import testkit

    sim = SimProcess(bench, "cookbook")
    try:
        lines = testkit.expense_lines(2_000 * WORKERS, distinct_vendors(2_000 * WORKERS))
        sim.reset()
        started = time.monotonic()
        stop_at = started + BASELINE_SECONDS
        workers = [Cookbook(sim.url, deque(lines[i::WORKERS]), RPM / WORKERS, TPM / WORKERS, stop_at)
                   for i in range(WORKERS)]
        threads = [threading.Thread(target=w.run, name=f"cookbook-{i}", daemon=True) for i, w in enumerate(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(BASELINE_SECONDS + 60)
        stats = sim.stats()  # after the last answers came back (pool shutdown waits for them)
        wall = BASELINE_SECONDS
    finally:
        sim.stop()
    answered = sum(w.answered[0] for w in workers)
    pauses = f"paused {COOKBOOK_PAUSE_SECONDS:.0f} s after each 429"
    return Side("cookbook (per-line, 15 s pause)", answered, wall, stats,
                f"{answered:,} lines answered in {BASELINE_SECONDS:.0f} s; each worker {RPM / WORKERS:.0f} RPM with a "
                f"minute's capacity at the start, {pauses}")


def run(bench: Run) -> None:
    heading(f"Pacing: {WORKERS} workers, provider limit {RPM} requests/min enforced over rolling "
            f"{WINDOW_SECONDS:g} s windows (at most {RPM / 60 * WINDOW_SECONDS:g} requests in any), {TPM:,} tokens/min "
            f"settled from usage, {LATENCY:g} s latency")
    sides = [paced(bench)]
    print(f"  paced run done in {sides[0].wall:.1f} s", flush=True)
    sides.append(cookbook(bench))
    print(table(["side", "wall s", "requests", "answered 200", "429s", "429 share", "200s/min", "% of bound (wall)",
                 "% of bound (asking)", "lines/min", "most in any 1 s", "early retries"], [s.row() for s in sides]))
    ours, base = sides
    for side in sides:
        note(f"{side.name}: {side.detail}")
        tokens = side.stats["tokens"]
        note(f"{side.name}: tokens charged {tokens['charged']:,}, given back on settlement {tokens['settled']:,}, "
             f"used {tokens['prompt'] + tokens['completion']:,}")
    note(f"bound: requests answered 200 at {RPM} a minute (paced: {ours.bound_seconds:.1f} s for "
         f"{ours.stats['ok']} requests); % of bound (wall) = bound / wall time; % of bound (asking) = bound / the "
         "time from the first request's arrival to the last one's answer")
    note(f"load average when done: {', '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs "
         "(the workers, moto and the simulators share them)")
    note(f"the paced side's 429 share is {ours.share_429 / base.share_429:.3f}x the cookbook's and its 200s a minute "
         f"{ours.of_bound / base.of_bound:.2f}x" if base.share_429 and base.of_bound else "no cookbook figures")
    target(f"at most {SHARE_429_TARGET:.0%} of the paced fleet's requests answered 429",
           ours.share_429 <= SHARE_429_TARGET, f"{ours.rate_limited} / {ours.requests} = {ours.share_429:.2%}")
    target(f"at least {BOUND_TARGET:.0%} of the request-rate bound while asking",
           ours.of_bound_in_phase >= BOUND_TARGET,
           f"{ours.bound_seconds:.1f} s bound / {ours.phase:.1f} s from the first request to the last answer = "
           f"{ours.of_bound_in_phase:.1%}")
    target(f"at least {BOUND_TARGET:.0%} of the request-rate bound over the job's wall time",
           ours.of_bound >= BOUND_TARGET,
           f"{ours.bound_seconds:.1f} s bound / {ours.wall:.1f} s wall = {ours.of_bound:.1%}")
