"""Part 1 (issue 2): create-job latency through the API next to the floor a create cannot go below.

The floor is what any create must do, timed as raw boto3 calls against the same moto server: one
TransactWriteItems of four puts shaped like a create's (job, active lock, rate window, event) and one
SendMessage to the work queue. A second raw row adds the two consistent reads a create makes first (report,
rate window), to show what they cost. The paths are interleaved round by round, so they see the same server
state, and what they wrote is deleted between rounds (see Tidy).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import boto3

from bench.api import Api, HttpApi, InProcessApi, new_user
from bench.common import aws_calls, heading, ms, note, percentile, ratio, table, target, times
from bench.env import Run
from chalicelib import clock
from chalicelib.jobs.states import JobStatus, event_item, lock_key, rate_key
from chalicelib.reports.service import DEFAULT_CATEGORIES
from chalicelib.settings import get_settings
from chalicelib.tables import Control, Job
from local.testkit import seed_body

SAMPLES = 300
WARMUP = 20
TIDY_EVERY = 1  # rounds between two (untimed) deletions of what the creates wrote
TIDIED_TABLES = ("jobs", "control", "events")  # the tables a create's transaction writes
KEPT_WINDOWS = "rate#bench-create"  # rate windows of the API users (new_user("create...")), kept by Tidy
JOBS_PER_USER = 20  # the API's limit per user and rolling hour: one job per period, 20 periods per user
PERIODS = [f"{2000 + k // 12}-{k % 12 + 1:02d}" for k in range(JOBS_PER_USER)]
HTTP_P95_TARGET = 0.100
IN_PROCESS_RATIO_TARGET = 1.5


class Slot(NamedTuple):
    """One create the API will accept: a (user, report, period) with no active job, under the user's limit."""

    owner: str
    headers: dict[str, str]
    report_id: str
    period: str


# --- the floor ----------------------------------------------------------------------------------------------


def _put(model: Any, key_attribute: str) -> dict[str, Any]:
    return {"Put": {"TableName": model.Meta.table_name, "Item": model.serialize(),
                    "ConditionExpression": "attribute_not_exists(#k)",
                    "ExpressionAttributeNames": {"#k": key_attribute}}}


def floor_items() -> list[dict[str, Any]]:
    """Four puts the size of a create's, on fresh keys (built with the app's models, outside the timing)."""
    settings = get_settings()
    owner, report_id, period = f"bench-floor-{uuid.uuid4().hex[:10]}", "bench-floor", "2026-01"
    stamp = clock.iso(clock.now())
    job = Job(str(uuid.uuid4()), owner_id=owner, report_id=report_id, period=period, status=JobStatus.QUEUED.value,
              active_status=JobStatus.QUEUED.value, trigger="api", categories=list(DEFAULT_CATEGORIES),
              created_at=stamp, updated_at=stamp, heartbeat_at=stamp, status_message="Waiting for a worker",
              lock_key=lock_key(owner, report_id, period), expires_at=clock.expiry(settings.retention_days))
    lock = Control(job.lock_key, job_id=job.job_id, expires_at=job.expires_at)
    # A rate window holds 0-19 earlier stamps when a create writes it: take the middle, ten.
    stamps = {str(uuid.uuid4()): time.time() for _ in range(10)}
    window = Control(rate_key(owner, "expense_report"), stamps=stamps, version=1,
                     expires_at=clock.expiry(seconds=7200))
    event = event_item(job.job_id, "created", {"trigger": "api", "period": period})
    return [_put(job, "jobId"), _put(lock, "pk"), _put(window, "pk"), _put(event, "jobId")]


class Floor:
    """The raw boto3 calls of one create, with clients built once."""

    def __init__(self) -> None:
        settings = get_settings()
        self.ddb = boto3.client("dynamodb", region_name=settings.region, endpoint_url=settings.aws_endpoint_url)
        self.sqs = boto3.client("sqs", region_name=settings.region, endpoint_url=settings.aws_endpoint_url)
        self.queue_url = settings.work_queue_url

    def once(self, reads: list[dict[str, Any]] | None = None) -> float:
        """The floor; with `reads` ((table, key) GetItems), the floor plus the reads a create makes first."""
        items = floor_items()
        body = json.dumps({"jobId": items[0]["Put"]["Item"]["jobId"]["S"], "reason": "start"})
        started = time.perf_counter()
        for read in reads or []:
            self.ddb.get_item(ConsistentRead=True, **read)
        self.ddb.transact_write_items(TransactItems=items)
        self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=body, DelaySeconds=0)
        return time.perf_counter() - started


def create_reads(slot: Slot) -> list[dict[str, Any]]:
    """Two consistent reads a create makes before its transaction: the report (keyed by its tenant: a token
    without a tenant claim is a tenant of its own, its sub) and the user's rate window. Not here: the one-key Query
    that refuses a month without lines (422 `no-lines`); its cost shows in the API paths' ratio to these."""
    settings = get_settings()
    return [{"TableName": settings.table("reports"),
             "Key": {"tenant": {"S": slot.owner}, "reportId": {"S": slot.report_id}}},
            {"TableName": settings.table("control"), "Key": {"pk": {"S": rate_key(slot.owner, "expense_report")}}}]


class Tidy:
    """Delete what the creates wrote, and purge the work queue (between rounds, untimed).

    Stock moto's TransactWriteItems deep-copies every table it touches (its rollback snapshot), so its latency
    grew with the tables' size - 11 ms at 40 jobs, 50 ms at 120 - where DynamoDB's does not. local/moto_server.py
    now backs up only the touched items; tidying still keeps each round's tables the same size, so rounds
    compare. The API users' rate windows stay: a create reads and rewrites its user's window, which holds 0 to
    19 earlier stamps.
    """

    def __init__(self, ddb: Any, sqs: Any, queue_url: str) -> None:
        self.ddb, self.sqs, self.queue_url = ddb, sqs, queue_url
        settings = get_settings()
        self.keys = {settings.table(name): [k["AttributeName"] for k in
                                            ddb.describe_table(TableName=settings.table(name))["Table"]["KeySchema"]]
                     for name in TIDIED_TABLES}

    def __call__(self) -> None:
        for table_name, key_names in self.keys.items():
            keys = self._keys(table_name, key_names)
            for start in range(0, len(keys), 25):
                self.ddb.batch_write_item(RequestItems={table_name: [{"DeleteRequest": {"Key": k}}
                                                                     for k in keys[start:start + 25]]})
        self.sqs.purge_queue(QueueUrl=self.queue_url)

    def _keys(self, table_name: str, key_names: list[str]) -> list[dict[str, Any]]:
        names = {f"#k{n}": name for n, name in enumerate(key_names)}
        pages = self.ddb.get_paginator("scan").paginate(TableName=table_name, ProjectionExpression=", ".join(names),
                                                         ExpressionAttributeNames=names)
        return [item for page in pages for item in page["Items"]
                if not item.get("pk", {}).get("S", "").startswith(KEPT_WINDOWS)]


# --- the API paths -------------------------------------------------------------------------------------------


def slots(api: Api, count: int) -> list[Slot]:
    """`count` creates the API will accept: fresh users with one report each (created now, before any timing)
    and 20 periods per report."""
    out: list[Slot] = []
    while len(out) < count:
        owner, headers = new_user(f"create{len(out) // JOBS_PER_USER}")
        report_id = api.create_report(headers)
        # One line in each period (untimed): a period without lines is refused before any job write (422).
        api.import_lines(headers, [seed_body(period, f"seed-{period}")["lines"][0] for period in PERIODS])
        out += [Slot(owner, headers, report_id, period) for period in PERIODS]
    return out[:count]


def timed_create(api: Api, slot: Slot) -> float:
    started = time.perf_counter()
    status, body = api.call("post", f"/api/v1/reports/{slot.report_id}/generate", slot.headers,
                            {"period": slot.period})
    elapsed = time.perf_counter() - started
    if status != 202:
        raise RuntimeError(f"{api.name} create answered {status}: {body}")
    return elapsed


# --- the run -------------------------------------------------------------------------------------------------


def measure(paths: dict[str, Callable[[], float]], rounds: int, warmup: int,
            tidy: Callable[[], None]) -> dict[str, list[float]]:
    """Interleave the paths round by round; the warm-up rounds are not kept; `tidy` runs every TIDY_EVERY."""
    samples: dict[str, list[float]] = {name: [] for name in paths}
    for n in range(warmup + rounds):
        if n % TIDY_EVERY == 0:
            tidy()
        for name, once in paths.items():
            elapsed = once()
            if n >= warmup:
                samples[name].append(elapsed)
    return samples


def report(samples: dict[str, list[float]], floor_name: str) -> dict[str, tuple[float, float]]:
    floor = samples[floor_name]
    floor50, floor95 = percentile(floor, 50), percentile(floor, 95)
    rows, out = [], {}
    for name, values in samples.items():
        p50, p95 = percentile(values, 50), percentile(values, 95)
        out[name] = (p50, p95)
        rows.append([name, str(len(values)), ms(p50), ms(p95), times(ratio(p50, floor50)), times(ratio(p95, floor95))])
    print(table(["path", "n", "p50 ms", "p95 ms", "p50 ratio to floor", "p95 ratio to floor"], rows))
    return out


def run(bench: Run, rounds: int = SAMPLES, warmup: int = WARMUP) -> None:
    heading(f"Create-job latency (issue 2): {rounds} creates per path after {warmup} warm-up, interleaved")
    in_process, http = InProcessApi(), HttpApi(bench.api_url())
    bench.defer(http.close)
    floor = Floor()
    accepted = slots(in_process, 2 * (rounds + warmup) + 1)  # +1: the untimed create of _explain_calls
    reads = create_reads(accepted[0])  # the first user's report and rate window (0-20 stamps as it goes)
    feed = iter(accepted)
    names = {"floor": "floor (raw boto3: TransactWriteItems + SendMessage)",
             "reads": "  the same + 2 consistent GetItem (report, rate window)",
             "in-process": "in-process (chalice.test.Client)", "http": "HTTP (chalice local, keep-alive session)"}
    samples = measure({names["floor"]: floor.once,
                       names["reads"]: lambda: floor.once(reads),
                       names["in-process"]: lambda: timed_create(in_process, next(feed)),
                       names["http"]: lambda: timed_create(http, next(feed))}, rounds, warmup,
                      Tidy(floor.ddb, floor.sqs, floor.queue_url))
    figures = report(samples, names["floor"])
    floor50, floor95 = figures[names["floor"]]
    in50, in95 = figures[names["in-process"]]
    target(f"HTTP p95 under {HTTP_P95_TARGET * 1000:.0f} ms", figures[names["http"]][1] < HTTP_P95_TARGET,
           f"p95 {ms(figures[names['http']][1])} ms")
    target(f"in-process ratio to the floor at most {IN_PROCESS_RATIO_TARGET}",
           max(ratio(in50, floor50), ratio(in95, floor95)) <= IN_PROCESS_RATIO_TARGET,
           f"p50 {times(ratio(in50, floor50))}, p95 {times(ratio(in95, floor95))}")
    note(f"what the creates wrote (but the users' rate windows) is deleted every {TIDY_EVERY} round(s), untimed, "
         "so every round runs against tables of the same size (see Tidy)")
    _explain_calls(in_process, feed)


def _explain_calls(api: Api, feed: Iterator[Slot]) -> None:
    """The AWS calls one create makes, next to the floor's two (one more create, untimed)."""
    with aws_calls() as calls:
        timed_create(api, next(feed))
    note(f"AWS calls of one in-process create: {calls.summary()} (the floor makes 2)")
