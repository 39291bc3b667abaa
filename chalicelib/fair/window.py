"""A fanned-out job keeps only a few chunk messages in the queue at a time (with fair shares on).

Deferring another tenant's messages to the back of the queue (queue.defer) costs a receive and a send each, so a
small job's message behind a large job's twenty chunk messages still waits for twenty of them. So a fan-out sends
the first WINDOW chunks' messages and records the rest here (a Control item per job: the chunk numbers, and a
counter of how many of them were sent); each chunk that starts or finishes tops its job's messages waiting in the
queue (the demand registry's count) back up to WINDOW. A job alone still spreads over every free worker: each
start sends the next message, which the next free worker takes. What a lost top-up leaves unsent the reaper
sends (a Pending chunk whose heartbeat is stale is sent again, reaper._reap_chunks).
"""

from __future__ import annotations

import logging

from pynamodb.exceptions import UpdateError

from chalicelib.fair import demand
from chalicelib.tables import Control

WINDOW = 2  # chunk messages of one job waiting in the queue at a time

log = logging.getLogger(__name__)


def _key(job_id: str) -> str:
    return f"fair#chunks#{job_id}"


def hold(job_id: str, numbers: list[int]) -> list[int]:
    """The chunks to send now; the others are recorded, to be sent by top_up."""
    now, later = numbers[:WINDOW], numbers[WINDOW:]
    if later:
        # One write of the whole list; a second fan-out of the same job (a planner whose send failed) writes the
        # chunks it found unsent again, and the counter starts over: a chunk sent twice is dropped by its lease.
        Control(_key(job_id), stamps={"todo": [int(n) for n in later], "sent": 0}).save()
    return now


def top_up(job_id: str, tenant: str) -> list[int]:
    """Chunks to send so that WINDOW of the job's messages wait in the queue; [] when all were sent."""
    waiting = demand.read().jobs.get(job_id, 0)
    out: list[int] = []
    for _ in range(max(0, WINDOW - waiting)):
        number = _next(job_id)
        if number is None:
            break
        out.append(number)
    return out


def _next(job_id: str) -> int | None:
    """Count one more of the held chunks as sent (atomically: two top-ups never send the same one); its number."""
    record = Control(_key(job_id))
    try:
        # item_exists: a job with nothing held gets no item made by this update.
        record.update(actions=[Control.stamps["sent"].set(Control.stamps["sent"] + 1)],
                      condition=Control.pk.exists())
    except UpdateError as err:
        if err.cause_response_code == "ConditionalCheckFailedException":
            return None
        raise
    held = record.stamps.as_dict() if record.stamps is not None else {}
    sent, todo = int(held.get("sent", 0)), list(held.get("todo") or [])
    return int(todo[sent - 1]) if 0 < sent <= len(todo) else None
