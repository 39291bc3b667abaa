"""The work queue's side of fair shares: a job's or chunk's message is its tenant's demand while it waits, and a
message whose tenant must give way goes to the back of the queue.

On AWS the queue also serves tenants fairly by itself: every such message carries its tenant as `MessageGroupId`
(messages.group), and SQS fair queues keep one tenant's backlog from lengthening another's dwell time. Moto does not
implement fair queues (it hands messages out oldest first), and fair queues alone do not free a worker that one
tenant's long chunk holds: the deferral here and the hand-back between batches (worker/fairness.py) do both
everywhere, so the local stack and the tests behave as the deployed service does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from chalicelib.fair import demand
from chalicelib.settings import get_settings

DEFER_SECONDS = 1  # a deferred message comes back after this: behind the waiting tenant's, and never a busy loop
# A message is deferred at most this many times, then runs whatever the picture says. A waiting entry whose message
# no worker can take (purged, moved to the DLQ, or registered by a process that died before the send) counts until
# it lapses (demand.WAITING_TTL_SECONDS): every message of a tenant holding more workers than that phantom would
# otherwise go round the queue for two minutes, workers free and nothing worked. A chaos soak with fair shares on
# met one: 1,060 deferrals in a minute and no line worked. A real waiting tenant's message is taken within a
# deferral or two (the deferred one goes behind it), so the bound costs fairness nothing in practice. At the bound
# the message looks for evidence (worker/fairness.turn): a waiting tenant that has taken no message since the
# first deferral (`deferredSince`) has its entries visible before then removed (demand.forget_waiting): they would
# otherwise hold every other message back as long, and have the invocations of tenants over their share hand
# their work back to them (a rescue every 10 s) until they lapse. A waiting tenant that has taken one meanwhile is
# being served: the deferrals were fair, and the message is deferred again with its count started afresh, for up
# to SERVED_MAX_SECONDS from the first deferral: a served tenant may hold a phantom entry too (a purged message
# beside a running job), and past that its entries older than the first deferral go like any other's.
MAX_DEFERRALS = 5
SERVED_MAX_SECONDS = 30.0

log = logging.getLogger(__name__)


def message_key(message: Any) -> str:
    """The waiting entry's name: the job, or the job and chunk."""
    chunk = getattr(message, "chunk", None)
    return message.job_id if chunk is None else f"{message.job_id}#{chunk}"


def sending(messages: Sequence[Any], delay_seconds: int) -> None:
    """Register each job or chunk message about to be sent as its tenant's demand (with fair shares on).

    Before the send: a worker that takes the message at once then finds the entry to remove, instead of the entry
    landing after the take and holding other tenants back until it lapses. Best effort: a failed registration
    leaves fairness a message short, never the message unsent.
    """
    mine = [m for m in messages if getattr(m, "tenant", "")]
    if not mine or not get_settings().fair_shares:
        return
    visible = time.time() + delay_seconds
    for message in mine:
        try:
            demand.waiting(message.tenant, message_key(message), visible)
        except Exception:
            log.warning("could not register a message as its tenant's demand", exc_info=True,
                        extra={"jobId": message.job_id})


def defer(message: Any, afresh: bool = False) -> None:
    """Send the message again, DEFER_SECONDS later, to the back of the queue; the received copy is then deleted
    as handled. A new message, not a visibility change: a deferral must not count toward the DLQ's receives.
    `afresh`: count this deferral as the first (the waiting tenants were seen served: worker/fairness.turn); the
    time of the first deferral stays, so that the restarts end (SERVED_MAX_SECONDS)."""
    import dataclasses

    from chalicelib import messages

    since = deferred_since(message) or time.time()
    # Registered again: its waiting entry would otherwise lapse while its tenant keeps giving way for minutes.
    messages.send(dataclasses.replace(message, deferrals=1 if afresh else deferrals(message) + 1,
                                      deferred_since=since), DEFER_SECONDS)


def deferrals(message: Any) -> int:
    return int(getattr(message, "deferrals", 0) or 0)


def deferred_since(message: Any) -> float:
    """The epoch second of the message's first deferral; 0.0 if none (or sent by code from before the field)."""
    return float(getattr(message, "deferred_since", 0.0) or 0.0)
