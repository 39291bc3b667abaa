"""The SQS handler: a batch of messages in, one call out per message (handle_record: a job, a chunk, a warm run,
a delivery), a failed record reported back to the queue alone; and the dead-letter queue's handler."""

from __future__ import annotations

import logging
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from chalicelib import messages
from chalicelib.messages import Deliver, NotAWorkMessage, RunChunk, WarmCache
from chalicelib.settings import Settings, get_settings
from chalicelib.worker import fairness
from chalicelib.worker.runs import run_chunk, run_job, warm_cache

log = logging.getLogger(__name__)


def _processor() -> BatchProcessor:
    """One per call: a processor collects its batch's failures, so a shared one (the local poller runs handlers
    on several threads) would report one thread's failures in another's response."""
    # A failed record is reported, not raised: the rest of the batch is deleted either way.
    return BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


def handle_batch(event: dict[str, Any], context: Any, settings: Settings | None = None) -> PartialItemFailureResponse:
    """Lambda entry: one failed record goes back to the queue, never the whole batch."""
    return process_partial_response(event=event, processor=_processor(), context=context,
                                    record_handler=lambda record: handle_record(record, context, settings))


def handle_dead_letters(event: dict[str, Any], context: Any) -> PartialItemFailureResponse:
    """Lambda entry on the DLQ: each message's job becomes Failed with the reason."""
    from chalicelib.reaper import dead_letter

    def one(record: SQSRecord) -> None:
        dead_letter(record.body, record.attributes.approximate_receive_count)

    return process_partial_response(event=event, record_handler=one, processor=_processor(), context=context)


def handle_record(record: SQSRecord, context: Any, settings: Settings | None = None) -> None:
    try:
        message = messages.parse(record.body)
    except NotAWorkMessage:
        log.error("dropping a message that is not a job message", extra={"messageId": record.message_id})
        return
    if isinstance(message, Deliver):
        from chalicelib.delivery import service as delivery  # only a delivery needs it (cold start)

        outcome = delivery.handle(message, settings)  # a store error raises: the message is redelivered
        log.info("delivery message handled", extra={"jobId": message.job_id, "n": message.n, "outcome": outcome})
        return
    if isinstance(message, WarmCache):
        try:
            warm_cache(context, settings, after=message.after)
        except (ValueError, KeyError, TypeError, AttributeError):
            # Kept as it was before typed messages (the body was parsed in the same `try`): a warm run failing
            # with one of these drops its message instead of having it redelivered.
            log.error("dropping a message that is not a job message", extra={"messageId": record.message_id})
        return
    try:
        # Fair shares: a tenant holding more of the fleet than a waiting one defers its message (fairness.py).
        with fairness.turn(message, context, settings or get_settings()) as admitted:
            if not admitted:
                return
            if isinstance(message, RunChunk):
                run_chunk(message.job_id, message.chunk, context, settings)
            else:
                run_job(message.job_id, message.reason, context, settings)
    except Exception:
        # The record goes back to the queue and is redone from the checkpoint.
        log.exception("job invocation failed; the message will be redelivered", extra={"jobId": message.job_id})
        raise
