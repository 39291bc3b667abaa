"""A local stand-in for Lambda's SQS event source mapping.

Long-polls a queue, hands the messages to the Chalice SQS handler exactly as Lambda would (a Lambda-shaped
`{"Records": [...]}` event and a context object), and applies partial-batch semantics to the answer:

- the handler returns `{"batchItemFailures": [{"itemIdentifier": messageId}, ...]}`: every other record is
  deleted, the listed ones stay on the queue (they reappear after the visibility timeout);
- it returns anything else: the whole batch is deleted (success);
- it raises, overruns its timeout, or names a record that is not in the batch: nothing is deleted.

Chalice quirk (1.34): neither `chalice deploy` nor `chalice package` sets FunctionResponseTypes
[ReportBatchItemFailures] on the SQS event source mapping, and without it real Lambda ignores the answer and
deletes the whole batch on success. A deployment must add it; this poller assumes it is on.

Knobs (environment): WORKER_TIMEOUT_SECONDS (remaining time each invocation starts with; default 300, the
template's WorkerTimeoutSeconds), WORKER_WAIT_SECONDS (long-poll wait, 0-5; default 5: it bounds how long a
stop takes), WORKER_CONCURRENCY (pollers per SQS event source; default 1), WORKER_CRASH_AT (a
chalicelib.faults point where the process exits with 137, as a SIGKILL would: for the kill tests).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from local.deploy import CHALICE_CONFIG_PATH, DEFAULT_REGION, DEFAULT_STAGE

log = logging.getLogger("local.poller")

ACCOUNT_ID = "123456789012"  # moto's default account
DEFAULT_TIMEOUT_SECONDS = 300.0
MAX_WAIT_SECONDS = 5
SQS_MAX_BATCH = 10

Handler = Callable[[dict[str, Any], Any], Any]


# --- Lambda context ----------------------------------------------------------------------------------------


class LambdaContext:
    """The attributes and method of the Python Lambda runtime's context object that handlers use."""

    def __init__(self, function_name: str, timeout_seconds: float, *, memory_limit_in_mb: int = 128,
                 region: str = DEFAULT_REGION, account_id: str = ACCOUNT_ID) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:{region}:{account_id}:function:{function_name}"
        self.memory_limit_in_mb = memory_limit_in_mb
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = f"{time.strftime('%Y/%m/%d')}/[$LATEST]{uuid.uuid4().hex}"
        self.identity = None
        self.client_context = None
        self.timeout_seconds = timeout_seconds
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))

    @property
    def timed_out(self) -> bool:
        return time.monotonic() > self._deadline


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        log.warning("ignoring %s=%r: not a number", name, raw)
        return default


def stage_name() -> str:
    return os.environ.get("CHALICE_STAGE") or DEFAULT_STAGE


def function_name(app: Any, handler_name: str) -> str:
    """The name `chalice deploy` gives the function of an event handler: {app}-{stage}-{handler}."""
    return f"{getattr(app, 'app_name', 'app')}-{stage_name()}-{handler_name}"


def memory_size(handler_name: str, default: int = 128) -> int:
    """lambda_memory_size from .chalice/config.json (function, then stage, then top level), as deployed."""
    try:
        config = json.loads(CHALICE_CONFIG_PATH.read_text())
    except (OSError, ValueError):
        return default
    stage = (config.get("stages") or {}).get(stage_name()) or {}
    for scope in (((stage.get("lambda_functions") or {}).get(handler_name) or {}), stage,
                  ((config.get("lambda_functions") or {}).get(handler_name) or {}), config):
        if "lambda_memory_size" in scope:
            return int(scope["lambda_memory_size"])
    return default


def resolve_handler(app: Any, config: Any) -> Handler:
    """The decorated handler object (what Lambda invokes) of an event source config of `app`."""
    handler = getattr(app, "handler_map", {}).get(config.name)
    if handler is not None:
        return handler
    import importlib

    module_name, _, attr = config.handler_string.rpartition(".")
    return getattr(importlib.import_module(module_name), attr)


# --- events ------------------------------------------------------------------------------------------------


def _b64(value: Any) -> str:
    return base64.b64encode(value if isinstance(value, bytes) else str(value).encode()).decode()


def _lambda_message_attribute(value: dict[str, Any]) -> dict[str, Any]:
    # SQS answers {"StringValue", "BinaryValue", "DataType"}; Lambda passes camelCase with binary in base64.
    out: dict[str, Any] = {"stringListValues": list(value.get("StringListValues") or []),
                           "binaryListValues": [_b64(v) for v in value.get("BinaryListValues") or []],
                           "dataType": value.get("DataType", "String")}
    if "StringValue" in value:
        out["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        out["binaryValue"] = _b64(value["BinaryValue"])
    return out


def sqs_record(message: dict[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """One record of a Lambda SQS event, from one message of a ReceiveMessage answer."""
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message.get("Body", ""),
        "attributes": {k: str(v) for k, v in (message.get("Attributes") or {}).items()},
        "messageAttributes": {k: _lambda_message_attribute(v)
                              for k, v in (message.get("MessageAttributes") or {}).items()},
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


def failed_message_ids(result: Any, batch_ids: Iterable[str]) -> set[str] | None:
    """Message ids to keep on the queue, per the handler's answer; None means the whole batch failed."""
    batch = set(batch_ids)
    if not isinstance(result, dict) or "batchItemFailures" not in result:
        return set()
    failures = result["batchItemFailures"]
    if failures is None:
        return set()
    if not isinstance(failures, list):
        return None
    kept: set[str] = set()
    for failure in failures:
        ident = failure.get("itemIdentifier") if isinstance(failure, dict) else None
        if not ident or ident not in batch:
            # Lambda treats an answer naming an unknown or empty id as a failure of the whole batch.
            return None
        kept.add(ident)
    return kept


# --- the poller --------------------------------------------------------------------------------------------


@dataclass
class PollerStats:
    invocations: int = 0
    received: int = 0
    deleted: int = 0
    kept: int = 0  # records left on the queue: reported failures, or batches whose invocation failed
    errors: int = 0  # invocations that raised or timed out


class SQSPoller:
    """Feeds one SQS queue to one handler, one batch at a time, until `stop_event` is set."""

    def __init__(self, handler: Handler, queue_url: str, *, name: str = "worker", batch_size: int = 1,
                 function_name: str | None = None, timeout_seconds: float | None = None,
                 wait_time_seconds: int | None = None, memory_limit_in_mb: int = 128,
                 endpoint_url: str | None = None, region: str | None = None, sqs_client: Any = None,
                 stop_event: threading.Event | None = None) -> None:
        self.handler = handler
        self.queue_url = queue_url
        self.name = name
        # Lambda may build batches larger than 10 with a batching window; one ReceiveMessage caps at 10.
        self.batch_size = max(1, min(int(batch_size), SQS_MAX_BATCH))
        self.function_name = function_name or name
        self.timeout_seconds = (timeout_seconds if timeout_seconds is not None
                                else env_float("WORKER_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS))
        wait = (wait_time_seconds if wait_time_seconds is not None
                else env_float("WORKER_WAIT_SECONDS", MAX_WAIT_SECONDS))
        self.wait_time_seconds = int(max(0, min(MAX_WAIT_SECONDS, wait)))
        self.memory_limit_in_mb = memory_limit_in_mb
        self.region = region or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
        self.sqs = sqs_client or boto3.client(
            "sqs", region_name=self.region, endpoint_url=endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None,
            config=Config(connect_timeout=3, read_timeout=self.wait_time_seconds + 10,
                          retries={"max_attempts": 2, "mode": "standard"}))
        self.stop_event = stop_event or threading.Event()
        self.stats = PollerStats()
        self.busy = False  # True while the handler runs
        self._queue_arn: str | None = None
        self._thread: threading.Thread | None = None

    # lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self.run, name=f"poller-{self.name}", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float | None = None) -> bool:
        """Ask the loop to stop and wait for it; True if it has stopped."""
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def run(self) -> None:
        log.info("%s: polling %s (batch %d, timeout %.0fs)", self.name, self.queue_url, self.batch_size,
                 self.timeout_seconds)
        backoff = 0.5
        while not self.stop_event.is_set():
            try:
                self.poll_once()
                backoff = 0.5
            except (BotoCoreError, ClientError) as err:
                if self.stop_event.is_set():
                    break
                log.warning("%s: cannot poll %s: %s (retrying in %.1fs)", self.name, self.queue_url, err, backoff)
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 5.0)
        log.info("%s: stopped", self.name)

    # one round ---------------------------------------------------------------------------------------------

    @property
    def queue_arn(self) -> str:
        if self._queue_arn is None:
            attrs = self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])
            self._queue_arn = attrs["Attributes"]["QueueArn"]
        return self._queue_arn

    def poll_once(self, wait_time_seconds: int | None = None) -> int:
        """Receive one batch (long-polling), invoke the handler, delete what succeeded; the number received."""
        queue_arn = self.queue_arn
        wait = self.wait_time_seconds if wait_time_seconds is None else wait_time_seconds
        answer = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=self.batch_size,
                                          WaitTimeSeconds=wait, MessageSystemAttributeNames=["All"],
                                          MessageAttributeNames=["All"])
        messages = answer.get("Messages") or []
        if not messages:
            return 0
        if self.stop_event.is_set():
            # Stopping: hand the batch back at once instead of leaving it invisible for the visibility timeout.
            self._release(messages)
            return 0
        self.stats.received += len(messages)
        self.invoke(messages, queue_arn)
        return len(messages)

    def invoke(self, messages: list[dict[str, Any]], queue_arn: str | None = None) -> set[str]:
        """Call the handler with these messages as Lambda would; the message ids deleted."""
        event = {"Records": [sqs_record(m, queue_arn or self.queue_arn, self.region) for m in messages]}
        context = LambdaContext(self.function_name, self.timeout_seconds, memory_limit_in_mb=self.memory_limit_in_mb,
                                region=self.region)
        ids = [m["MessageId"] for m in messages]
        self.stats.invocations += 1
        self.busy = True
        started = time.monotonic()
        try:
            result = self.handler(event, context)
        except Exception:
            self.stats.errors += 1
            self.stats.kept += len(messages)
            log.exception("%s: handler raised; %d message(s) stay on the queue", self.name, len(messages))
            return set()
        finally:
            self.busy = False
        elapsed = time.monotonic() - started
        if context.timed_out:
            # Lambda would have killed the invocation: the batch counts as failed.
            self.stats.errors += 1
            self.stats.kept += len(messages)
            log.error("%s: handler ran %.1fs, over its %.0fs timeout; %d message(s) stay on the queue",
                      self.name, elapsed, self.timeout_seconds, len(messages))
            return set()
        kept = failed_message_ids(result, ids)
        if kept is None:
            self.stats.errors += 1
            self.stats.kept += len(messages)
            log.error("%s: invalid batchItemFailures %r; the whole batch stays on the queue", self.name, result)
            return set()
        done = [m for m in messages if m["MessageId"] not in kept]
        self._delete(done)
        self.stats.kept += len(kept)
        log.info("%s: batch of %d in %.2fs: %d deleted, %d left for redelivery", self.name, len(messages), elapsed,
                 len(done), len(kept))
        return {m["MessageId"] for m in done}

    def _delete(self, messages: list[dict[str, Any]]) -> None:
        for i in range(0, len(messages), SQS_MAX_BATCH):
            chunk = messages[i:i + SQS_MAX_BATCH]
            answer = self.sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(chunk)])
            for failed in answer.get("Failed") or []:
                log.warning("%s: could not delete a message: %s", self.name, failed)
            self.stats.deleted += len(answer.get("Successful") or [])

    def _release(self, messages: list[dict[str, Any]]) -> None:
        try:
            self.sqs.change_message_visibility_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                         for n, m in enumerate(messages)])
        except (BotoCoreError, ClientError) as err:
            log.warning("%s: could not release %d message(s): %s", self.name, len(messages), err)


# --- discovery ---------------------------------------------------------------------------------------------


def sqs_sources(app: Any) -> list[Any]:
    """The app's `@app.on_sqs_message` event sources (chalice SQSEventConfig)."""
    from chalice.app import SQSEventConfig

    return [s for s in getattr(app, "event_sources", []) if isinstance(s, SQSEventConfig)]


def queue_name(config: Any) -> str:
    return config.queue or str(config.queue_arn).rsplit(":", 1)[-1]


def _arm_crash_point() -> None:
    """WORKER_CRASH_AT=<point>: this worker process dies there (chalicelib.faults; a test-only seam, so the
    deployed worker never reads the variable)."""
    point = os.environ.get("WORKER_CRASH_AT", "").strip()
    if point:
        from chalicelib import faults

        faults.arm(point)


def build_pollers(app: Any, *, stop_event: threading.Event | None = None, queues: Iterable[str] | None = None,
                  concurrency: int | None = None, wait_time_seconds: int | None = None,
                  endpoint_url: str | None = None, region: str | None = None) -> list[SQSPoller]:
    """One poller per SQS event source of `app` (times WORKER_CONCURRENCY), not started.

    `queues` limits them to those queue names. All share `stop_event`.
    """
    stop_event = stop_event or threading.Event()
    _arm_crash_point()
    region = region or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
    endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
    wanted = set(queues) if queues is not None else None
    count = concurrency if concurrency is not None else max(1, int(env_float("WORKER_CONCURRENCY", 1)))
    sqs = boto3.client("sqs", region_name=region, endpoint_url=endpoint_url)
    pollers = []
    for config in sqs_sources(app):
        qname = queue_name(config)
        if wanted is not None and qname not in wanted:
            continue
        url = sqs.get_queue_url(QueueName=qname)["QueueUrl"]
        n = min(count, config.maximum_concurrency) if getattr(config, "maximum_concurrency", None) else count
        for i in range(n):
            pollers.append(SQSPoller(
                resolve_handler(app, config), url, name=config.name if n == 1 else f"{config.name}-{i + 1}",
                batch_size=config.batch_size, function_name=function_name(app, config.name),
                memory_limit_in_mb=memory_size(config.name), wait_time_seconds=wait_time_seconds,
                endpoint_url=endpoint_url, region=region, stop_event=stop_event))
    return pollers
