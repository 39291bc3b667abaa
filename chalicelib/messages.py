"""Work messages: the one place that writes and reads the bodies of the work queue's messages.

Four kinds travel on the queue: start (or continue) a job, run one chunk of a fanned-out job, warm the vendor
cache, and deliver a finished job to one target. The results bucket's ObjectCreated notifications arrive there
too, in S3's format: an import's file arrived, read as a start of its job. Their JSON keys are the wire format: a
message sent by the code before a deploy is read by the code after it, so a key is never renamed (`jobId`,
`chunk`, `reason`, `tenant`, `deferrals`, `deferredSince`; `kind: warm`, `after`; `kind: deliver`, `n`, `id`,
`attempt`).

A job's and a chunk's message name the job's tenant (`tenant`, absent in messages from before fair shares): it is
the message's group on the queue (SQS fair queues: `MessageGroupId`), and what the worker's fair shares go by
(chalicelib/fair). Such a message is registered as its tenant's demand before it is sent (fair/queue.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from chalicelib import deps

MAX_DELAY_SECONDS = 900  # SQS's cap on DelaySeconds: a longer wait is sat out in more than one message
BATCH_MAX = 10  # SQS's cap on the entries of one SendMessageBatch


class NotAWorkMessage(ValueError):
    """A body that is none of the work messages (not JSON, not an object, a key missing or of the wrong kind)."""


class SendFailed(RuntimeError):
    """The queue refused some messages of a batch (their ids)."""

    def __init__(self, ids: list[str]) -> None:
        super().__init__(f"the work queue refused messages {ids}")
        self.ids = ids


@dataclass(frozen=True)
class StartJob:
    """Take up a job: start it, continue it after a hand-back, or resume it after a retry or a reap."""

    job_id: str
    reason: str = "start"  # start | continuation | rate_limited | retried | reaped | fan-out | fair_share...
    tenant: str = ""  # "" in a message from before fair shares
    deferrals: int = 0  # times a worker sent it back for a waiting tenant (fair/queue.defer); 0 is not written
    deferred_since: float = 0.0  # epoch second of the first of those deferrals; 0 is not written

    def to_body(self) -> str:
        return json.dumps({"jobId": self.job_id, "reason": self.reason,
                           **({"tenant": self.tenant} if self.tenant else {}), **_deferred(self)})


@dataclass(frozen=True)
class RunChunk:
    """Work one chunk of a fanned-out job."""

    job_id: str
    chunk: int
    reason: str
    tenant: str = ""
    deferrals: int = 0
    deferred_since: float = 0.0

    def to_body(self) -> str:
        return json.dumps({"jobId": self.job_id, "chunk": self.chunk, "reason": self.reason,
                           **({"tenant": self.tenant} if self.tenant else {}), **_deferred(self)})


def _deferred(message: StartJob | RunChunk) -> dict[str, Any]:
    return {**({"deferrals": message.deferrals} if message.deferrals else {}),
            **({"deferredSince": round(message.deferred_since, 3)} if message.deferred_since else {})}


@dataclass(frozen=True)
class WarmCache:
    """Go on warming the vendor cache after the vendor key `after` ("" from the start)."""

    after: str = ""

    def to_body(self) -> str:
        return json.dumps({"kind": "warm", "after": self.after})


@dataclass(frozen=True)
class Deliver:
    """Make attempt `attempt` of the job's delivery `n` (the `id` it had when this was sent), or, for
    `event == "job.progress"`, send one progress webhook to report target `n` (never retried)."""

    job_id: str
    n: int
    id: str
    attempt: int = 1
    event: str = ""

    def to_body(self) -> str:
        body = {"kind": "deliver", "jobId": self.job_id, "n": self.n, "id": self.id, "attempt": self.attempt}
        return json.dumps({**body, "event": self.event} if self.event else body)


Message = StartJob | RunChunk | WarmCache | Deliver


def parse(body: str) -> Message:
    """The message `body` holds; NotAWorkMessage for anything else.

    Reads what every earlier producer wrote: a start without `reason` is a "start"; a warm message without
    `after` starts from the beginning.
    """
    try:
        data: Any = json.loads(body)
        if data.get("kind") == "warm":
            return WarmCache(after=str(data.get("after") or ""))
        if data.get("kind") == "deliver":
            return Deliver(str(data["jobId"]), int(data["n"]), str(data["id"]), int(data.get("attempt", 1)),
                           str(data.get("event") or ""))
        if "Records" in data:
            return _uploaded(data["Records"])
        job_id, reason, tenant = str(data["jobId"]), str(data.get("reason", "start")), str(data.get("tenant") or "")
        deferrals = max(0, int(data.get("deferrals") or 0))
        since = max(0.0, float(data.get("deferredSince") or 0))
        if "chunk" in data:
            return RunChunk(job_id, int(data["chunk"]), reason, tenant, deferrals, since)
        return StartJob(job_id, reason, tenant, deferrals, since)
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise NotAWorkMessage(f"not a work message: {body[:80]!r}") from err


def _uploaded(records: Any) -> StartJob:
    """The results bucket's ObjectCreated notification (S3's own format): an import's file arrived, so its job
    starts (chalicelib/lines/uploads.py names the key). Any other object, or S3's test event, is no work."""
    from urllib.parse import unquote_plus

    from chalicelib.lines.uploads import job_of

    for record in records:
        if str(record.get("eventName", "")).startswith("ObjectCreated:"):
            job_id = job_of(unquote_plus(str(record["s3"]["object"]["key"])))
            if job_id:
                return StartJob(job_id, "uploaded")
    raise NotAWorkMessage("an S3 notification that names no import's file")


def capped(delay_seconds: float) -> int:
    """A delay SQS accepts: 0 to MAX_DELAY_SECONDS whole seconds."""
    return max(0, min(MAX_DELAY_SECONDS, int(delay_seconds)))


def group(message: Message) -> dict[str, str]:
    """The message's fair-queue group as send arguments: its tenant (SQS serves the groups of a standard queue
    fairly, so one tenant's backlog does not hold another's messages back); none for a message without one."""
    tenant = getattr(message, "tenant", "")
    return {"MessageGroupId": tenant} if tenant else {}


def send(message: Message, delay_seconds: float = 0) -> None:
    """Put one message on the work queue, visible after `delay_seconds` (capped at MAX_DELAY_SECONDS)."""
    from chalicelib.fair import queue  # registers a job's or chunk's message as its tenant's demand

    queue.sending([message], capped(delay_seconds))
    deps.client("sqs").send_message(QueueUrl=deps.work_queue_url(), MessageBody=message.to_body(),
                                    DelaySeconds=capped(delay_seconds), **group(message))


def send_batch(messages: Sequence[Message], delay_seconds: float = 0, ids: Sequence[str] | None = None) -> None:
    """Put `messages` on the work queue, BATCH_MAX to a request. `ids` name them in a failure (default: position).

    Raises SendFailed naming every message the queue refused.
    """
    from chalicelib.fair import queue

    names = [str(i) for i in range(len(messages))] if ids is None else [str(i) for i in ids]
    sqs, url, delay = deps.client("sqs"), deps.work_queue_url(), capped(delay_seconds)
    queue.sending(messages, delay)
    for start in range(0, len(messages), BATCH_MAX):
        entries = [{"Id": name, "DelaySeconds": delay, "MessageBody": message.to_body(), **group(message)}
                   for name, message in zip(names[start:start + BATCH_MAX], messages[start:start + BATCH_MAX],
                                            strict=True)]
        failed = sqs.send_message_batch(QueueUrl=url, Entries=entries).get("Failed")
        if failed:
            raise SendFailed([f["Id"] for f in failed])
