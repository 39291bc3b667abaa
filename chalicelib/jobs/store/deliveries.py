"""The writes of a final job's deliveries (chalicelib/delivery/service.py decides them; these make them).

Each delivery lives in the job item's `deliveries` list; each write names the delivery by its place and its id,
and its condition says which race it closes. The outbox mark (`activeStatus` "Delivering" with an `outboxId`) is
written with the final status (moves.transition) and cleared here.
"""

from __future__ import annotations

from typing import Any

from pynamodb.exceptions import TransactWriteError, UpdateError
from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action
from pynamodb.transactions import TransactWrite

from chalicelib import clock
from chalicelib.jobs.states import DeliveryStatus, event_item
from chalicelib.tables import Delivery, Job, connection

DELIVERING = "Delivering"  # Job.activeStatus of a final job with a delivery still Pending
UNPLANNED = ":unplanned"  # suffix of an outboxId whose deliveries could not be planned yet (the sweep plans them)
PENDING = DeliveryStatus.PENDING.value


def path(n: int) -> Any:
    """Delivery `n`'s path in update and condition expressions (its members: `path(n).status`...)."""
    deliveries: Any = Job.deliveries  # PynamoDB's stubs do not index a ListAttribute of maps into a path
    return deliveries[n]


# --- named conditions --------------------------------------------------------------------------------------------


def attempt_is_ours(n: int, d: Delivery, now: float) -> Condition:
    """The same delivery (id), still waiting, at the attempt the message was sent for, and no live lease: a
    duplicate or late message never sends twice; a dead attempt's lease runs out and a redelivery takes over."""
    p = path(n)
    return (p.id == d.id) & (p.status == PENDING) & (p.attempts == int(d.attempts)) & (p.lease_until < int(now))


def delivery_lease_is_ours(n: int, d: Delivery, lease: int) -> Condition:
    """The attempt we claimed: a later claim (ours ran past its lease) records its own outcome."""
    return (path(n).id == d.id) & (path(n).lease_until == lease)


def still_waiting(n: int, d: Delivery) -> Condition:
    """Not attempted to an end meanwhile (a redelivery that succeeded, a user's retry)."""
    return (path(n).id == d.id) & (path(n).status == PENDING) & (path(n).attempts == int(d.attempts))


def delivery_unchanged(n: int, d: Delivery, job_status: str) -> Condition:
    """Two retries at once, or an attempt recorded meanwhile: one wins, the other 409."""
    return ((path(n).id == d.id) & (path(n).status == d.status) & (path(n).attempts == int(d.attempts))
            & (Job.status == job_status))


def outbox_is_ours(outbox_id: str | None, job_status: str) -> Condition:
    """Still the outbox of the final status we looked at (a retry of the job since would have replaced it)."""
    return (Job.outbox_id == outbox_id) & (Job.status == job_status)


# --- the writes ---------------------------------------------------------------------------------------------------


def _update(job_id: str, actions: list[Action], condition: Condition) -> bool:
    try:
        Job(job_id).update(actions=actions, condition=condition)
        return True
    except UpdateError as err:
        if err.cause_response_code != "ConditionalCheckFailedException":
            raise
        return False


def _with_event(job_id: str, actions: list[Action], condition: Condition, kind: str, detail: dict[str, Any],
                conflicts_lose: bool = False) -> bool:
    """The delivery's write and its audit event, all or nothing; False when the condition refused it."""
    try:
        with TransactWrite(connection=connection()) as tx:
            tx.update(Job(job_id), actions=actions, condition=condition)
            tx.save(event_item(job_id, kind, detail))
        return True
    except TransactWriteError as err:
        codes = {r.code for r in (err.cancellation_reasons or []) if r}
        lost = {"ConditionalCheckFailed", "TransactionConflict"} if conflicts_lose else {"ConditionalCheckFailed"}
        if not codes & lost:
            raise
        return False


def claim(job_id: str, n: int, d: Delivery, lease: int, now: float) -> bool:
    return _update(job_id, [path(n).lease_until.set(lease)], attempt_is_ours(n, d, now))


def record(job_id: str, n: int, d: Delivery, lease: int, status: str, attempt: int, error: str | None,
           next_at: int, detail: dict[str, Any]) -> bool:
    p = path(n)
    actions = [p.status.set(status), p.attempts.set(attempt), p.at.set(clock.iso(clock.now())),
               p.lease_until.set(0), p.next_at.set(next_at),
               p.last_error.set(error) if error else p.last_error.remove()]
    return _with_event(job_id, actions, delivery_lease_is_ours(n, d, lease), "delivery_attempt", detail)


def fail_waiting(job_id: str, n: int, d: Delivery, error: str, detail: dict[str, Any]) -> bool:
    p = path(n)
    return _with_event(job_id, [p.status.set(DeliveryStatus.FAILED.value), p.last_error.set(error),
                                p.at.set(clock.iso(clock.now())), p.lease_until.set(0)],
                       still_waiting(n, d), "delivery_attempt", detail)


def reopen(job: Job, n: int, d: Delivery, now: float, outbox_id: str, detail: dict[str, Any]) -> bool:
    p = path(n)
    return _with_event(job.job_id, [p.status.set(PENDING), p.attempts.set(0), p.next_at.set(int(now)),
                                    p.lease_until.set(0), p.last_error.remove(), Job.active_status.set(DELIVERING),
                                    Job.outbox_id.set(outbox_id)],
                       delivery_unchanged(n, d, job.status), "delivery_retry_requested", detail, conflicts_lose=True)


def plan_late(job: Job, planned: list[Delivery], waiting: bool, outbox_id: str) -> bool:
    """The deliveries of an outbox that could not be planned with its final status."""
    actions: list[Action] = [Job.outbox_id.set(outbox_id)]
    if planned:
        actions.append(Job.deliveries.set(planned))
    if not waiting:
        actions += [Job.active_status.remove(), Job.outbox_id.remove()]
    try:
        job.update(actions=actions, condition=outbox_is_ours(job.outbox_id, job.status))
        return True
    except UpdateError as err:
        if err.cause_response_code != "ConditionalCheckFailedException":
            raise
        return False


def clear_outbox(job: Job) -> bool:
    """The mark of the outbox we looked at, which has nothing Pending left (a retry of one of its deliveries since
    sets one Pending again and keeps the mark)."""
    condition = (Job.active_status == DELIVERING) & (Job.outbox_id == job.outbox_id)
    for n in range(len(job.deliveries or [])):
        condition &= path(n).status != PENDING
    return _update(job.job_id, [Job.active_status.remove(), Job.outbox_id.remove()], condition)
