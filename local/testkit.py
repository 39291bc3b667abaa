"""Helpers shared by the tests and the benchmarks (bench/ must not import tests/): a Lambda context, the real SQS
handler fed as Lambda would (receive, deliver, drain, HandOff), test data (expense_lines, vendors, seed_jobs) and a
webhook receiver. tests/support.py re-exports all of it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from chalicelib import deps
from chalicelib import messages as work_messages
from chalicelib.settings import Settings, get_settings


@dataclass
class Ctx:
    """A Lambda context with a fixed time budget."""

    remaining_ms: int = 300_000
    aws_request_id: str = ""
    function_name: str = "process_work"
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:process_work"

    def __post_init__(self) -> None:
        self.aws_request_id = self.aws_request_id or str(uuid.uuid4())
        self._start = time.monotonic()

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int(self.remaining_ms - (time.monotonic() - self._start) * 1000))


def wait_for(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll until `check()` is truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def lambda_event(messages: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {"Records": [{
        "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
        "attributes": {"ApproximateReceiveCount": m.get("Attributes", {}).get("ApproximateReceiveCount", "1")},
        "messageAttributes": {}, "md5OfBody": m.get("MD5OfBody", ""), "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:work", "awsRegion": "us-east-1",
    } for m in messages]}


def receive(job_ids: set[str] | None = None, wait: int = 0) -> list[dict[str, Any]]:
    """Visible work messages for `job_ids` (strays of earlier tests are deleted on the way)."""
    sqs, url = deps.client("sqs"), deps.work_queue_url()
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=wait,
                                  AttributeNames=["ApproximateReceiveCount"]).get("Messages", [])
        mine = []
        for m in got:
            if job_ids is None or job_of(m["Body"]) in job_ids:
                mine.append(m)
            else:
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        if mine or not got:
            return mine


def job_of(body: str) -> str | None:
    """The job a work message is for; None for a cache warm run or a body that is no work message."""
    try:
        message = work_messages.parse(body)
    except work_messages.NotAWorkMessage:
        return None
    return None if isinstance(message, work_messages.WarmCache) else message.job_id


def deliver(messages: list[dict[str, Any]], ctx: Ctx | None = None, settings: Settings | None = None,
            twice: bool = False) -> dict[str, Any]:
    """Hand messages to the real handler as Lambda would; delete what succeeded, make failures visible again."""
    from chalicelib import worker

    sqs, url = deps.client("sqs"), deps.work_queue_url()
    event = lambda_event(messages)
    out = worker.handle_batch(event, ctx or Ctx(), settings)
    if twice:
        out = worker.handle_batch(event, ctx or Ctx(), settings)
    failed = {f["itemIdentifier"] for f in out["batchItemFailures"]}
    for m in messages:
        if m["MessageId"] in failed:
            sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0)
        else:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    return out


def drain(job_ids: set[str], settings: Settings | None = None, ctx_factory: Callable[[], Ctx] = Ctx,
          rounds: int = 200, twice: bool = False) -> int:
    """Deliver every message for `job_ids` until none is visible; returns the deliveries made."""
    count = 0
    for _ in range(rounds):
        messages = receive(job_ids)
        if not messages:
            return count
        deliver(messages, ctx_factory(), settings, twice=twice)
        count += 1
    raise AssertionError("work queue never drained")


def expense_lines(n: int, vendors: list[str], period: str = "2026-01", prefix: str = "tx") -> list[dict[str, str]]:
    return [{"lineId": f"{prefix}-{i:06d}", "date": f"{period}-{1 + i % 28:02d}", "vendor": vendors[i % len(vendors)],
             "amount": f"{1 + i % 500}.{i % 100:02d}", "currency": "USD" if i % 7 else "EUR",
             "description": "expense"} for i in range(n)]


def seed_body(period: str = "2026-01", line_id: str = "seed-1") -> dict[str, list[dict[str, str]]]:
    """A `POST /api/v1/expenses` body of one line in `period`: what a test that generates needs first (a period
    without lines is refused, 422 `no-lines`) when the lines themselves do not matter to it."""
    return {"lines": [{"lineId": line_id, "date": f"{period}-15", "vendor": "Staples Store", "amount": "12.50",
                       "currency": "USD", "description": "seeded so the period has a line"}]}


VENDOR_STEMS = ["Uber Trip", "Marriott Hotel", "Delta Air", "Starbucks", "Staples", "GitHub", "Verizon Wireless",
                "Udemy Course", "FedEx Shipping", "Blue Bottle Coffee", "Hilton Garden Inn", "Lyft Ride",
                "United Airlines", "Slack Technologies", "Office Depot", "Comcast Internet", "Coursera",
                "UPS Store", "Chipotle Grill", "Acme Consulting"]


def vendors(n: int, salt: str | None = None) -> list[str]:
    """`n` distinct vendors (after normalization), spelled as card statements spell them.

    A random letters-only salt keeps tests apart in the shared vendor cache.
    """
    import random
    import string

    if salt is None:
        salt = "".join(random.choices(string.ascii_uppercase, k=6))
    out = []
    for i in range(n):
        stem = VENDOR_STEMS[i % len(VENDOR_STEMS)]
        branch = "" if i < len(VENDOR_STEMS) else f" {chr(65 + i // len(VENDOR_STEMS))}{'x' * (i // 26)}"
        out.append(f"{stem.upper()}{branch}{' ' + salt if salt else ''} *{1000 + i}")
    return out


class HandOff:
    """While active, a message a handler sends without a delay is handed to the real handler on another thread
    at once, before the send returns to its sender (which waits, up to `wait` seconds, for that delivery to end).

    This is the interleaving a busy queue produces: a receiver that starts while the sender is still in its
    invocation (holding whatever it has not given up yet). A message whose delivery fails is then really sent,
    so the queue keeps it as SQS would; delayed messages are always really sent.
    """

    def __init__(self, settings: Settings | None = None, ctx_factory: Callable[[], Ctx] = Ctx,
                 wait: float = 30.0) -> None:
        self.settings, self.ctx_factory, self.wait = settings, ctx_factory, wait
        self.handed = 0
        self._sqs: Any = None
        self._real: dict[str, Any] = {}

    def __enter__(self) -> HandOff:
        self._sqs = deps.client("sqs")
        self._real = {"send_message": self._sqs.send_message, "send_message_batch": self._sqs.send_message_batch}
        self._sqs.send_message = self._send_message
        self._sqs.send_message_batch = self._send_message_batch
        return self

    def __exit__(self, *exc: object) -> None:
        self._sqs.send_message = self._real["send_message"]
        self._sqs.send_message_batch = self._real["send_message_batch"]

    def _deliver_now(self, bodies: list[str], url: str) -> None:
        import threading

        from chalicelib import worker

        def run(body: str) -> None:
            message = {"MessageId": str(uuid.uuid4()), "ReceiptHandle": "handed-over", "Body": body}
            try:
                out = worker.handle_batch(lambda_event([message]), self.ctx_factory(), self.settings)
                failed = bool(out["batchItemFailures"])
            except Exception:  # a crashed delivery leaves the message on the queue
                failed = True
            if failed:
                self._real["send_message"](QueueUrl=url, MessageBody=body)

        threads = [threading.Thread(target=run, args=(body,), name="handed-over") for body in bodies]
        self.handed += len(threads)
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(self.wait)

    def _send_message(self, **kwargs: Any) -> dict[str, Any]:
        if int(kwargs.get("DelaySeconds", 0) or 0) > 0:
            return self._real["send_message"](**kwargs)
        self._deliver_now([kwargs["MessageBody"]], kwargs["QueueUrl"])
        return {"MessageId": str(uuid.uuid4())}

    def _send_message_batch(self, **kwargs: Any) -> dict[str, Any]:
        now = [e for e in kwargs["Entries"] if not int(e.get("DelaySeconds", 0) or 0)]
        later = [e for e in kwargs["Entries"] if int(e.get("DelaySeconds", 0) or 0)]
        if later:
            self._real["send_message_batch"](QueueUrl=kwargs["QueueUrl"], Entries=later)
        self._deliver_now([e["MessageBody"] for e in now], kwargs["QueueUrl"])
        return {"Successful": [{"Id": e["Id"], "MessageId": str(uuid.uuid4())} for e in kwargs["Entries"]],
                "Failed": []}


def deliver_until(job_ids: set[str], done: Callable[[], bool], settings: Settings | None = None,
                  timeout: float = 60.0) -> None:
    """Deliver the jobs' messages as they become visible (delayed ones included) until `done()`."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s delivering messages of {sorted(job_ids)}")
        messages = receive(job_ids, wait=1)
        if messages:
            deliver(messages, Ctx(), settings)


def seed_jobs(owner_id: str, n: int, every: int = 4, start: Any = None) -> list[str]:
    """`n` jobs of `owner_id` written straight to the table, one a second from `start` (default: `n` s ago),
    every `every`th Processing and the rest Completed, with the per-day counts a create and its transitions
    would have left (chalicelib.jobs.counts). Returns their ids, oldest first.

    They are listed, never worked: none is in the live-jobs index, so no reaper of any test sweeps them.
    """
    from collections import Counter
    from datetime import timedelta

    from chalicelib import clock
    from chalicelib.jobs import counts
    from chalicelib.jobs.states import JobStatus, lock_key
    from chalicelib.tables import Control, Job

    start = start or clock.now() - timedelta(seconds=n)
    expires = start + timedelta(days=get_settings().retention_days)
    per_day: Counter = Counter()
    ids = []
    with Job.batch_write() as batch:
        for i in range(n):
            status = JobStatus.PROCESSING if i % every == 0 else JobStatus.COMPLETED
            stamp = clock.iso(start + timedelta(seconds=i))
            job_id = str(uuid.uuid4())
            ids.append(job_id)
            per_day[(stamp[:10], status)] += 1
            batch.save(Job(job_id, owner_id=owner_id, report_id="seeded", period="2026-01", status=status.value,
                           created_at=stamp, updated_at=stamp, heartbeat_at=stamp, trigger="api",
                           lock_key=lock_key(owner_id, "seeded", f"x{i}"), total_lines=10, processed_lines=10,
                           status_message="seeded", expires_at=expires + timedelta(seconds=i)))
    with Control.batch_write() as batch:
        for day in {day for day, _ in per_day}:
            item = Control(counts.key(owner_id, day), expires_at=clock.expiry(get_settings().retention_days + 2))
            for status in JobStatus:
                setattr(item, counts.attribute_name(status), per_day[(day, status)])
            batch.save(item)
    return ids


class Receiver:
    """A webhook receiver on 127.0.0.1: records every request, answers from a script.

    `answers` are (status, headers) used one per request, then `default`; `hang` makes every request wait until
    `release()` (a receiver that never answers in time). Use as a context manager.
    """

    def __init__(self, answers: Iterable[tuple[int, dict[str, str]]] = (), default: int = 200,
                 hang: bool = False) -> None:
        import threading

        self.answers = list(answers)
        self.default, self.hang = default, hang
        self.requests: list[dict[str, Any]] = []
        self._lock, self._released = threading.Lock(), threading.Event()
        self._server: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks"

    def __enter__(self) -> Receiver:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with outer._lock:
                    outer.requests.append({"path": self.path, "headers": dict(self.headers.items()),
                                           "body": body, "at": time.time()})
                    status, headers = outer.answers.pop(0) if outer.answers else (outer.default, {})
                if outer.hang:
                    outer._released.wait(30)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True).start()
        return self

    def release(self) -> None:
        self._released.set()

    def __exit__(self, *exc: object) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()

    def events(self) -> list[str]:
        import json

        with self._lock:
            return [json.loads(r["body"])["type"] for r in self.requests]
