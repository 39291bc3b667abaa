"""How the worker picks which tenant's work runs next (chalicelib/fair): fair shares of the workers.

Fairness over the provider's budget alone would not help a small job whose message waits in the queue behind a
large job's chunks, or whose worker never frees up because each chunk runs for minutes. So, with FAIR_SHARES on:

- `turn`: a received job or chunk message whose tenant holds more of the fleet than another waiting tenant is
  deferred to the back of the queue (fair/queue.defer) instead of run, at most MAX_DEFERRALS times (a waiting
  entry whose message is gone must not hold the others back); otherwise the invocation is registered as its
  tenant's (fair/demand) for as long as it runs.
- `must_yield`: an invocation whose tenant holds more than its share while another tenant waits hands its job or
  chunk back, at a checkpoint (loop.work) or before a model request (its tenant gate, `give_way_between_requests`);
  one invocation per waiting tenant does (demand.rescue), and the freed worker takes the waiting message.
- `top_up`: a fanned-out job keeps a few chunk messages in the queue, not all of them (fair/window.py).

Both read the same one-item picture of the fleet (fair/demand.read) and decide by the same rules (fair/shares).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from chalicelib.fair import demand, queue
from chalicelib.fair.shares import Rules, Snapshot, Weights
from chalicelib.settings import Settings

log = logging.getLogger(__name__)
RENEWALS_PER_TTL = 4  # a running entry is renewed this many times per FAIR_RUNNING_TTL_SECONDS: a late one or two
# (a slow write, a busy process) do not let a live invocation's entry lapse


# An invocation gives way before a model request once one of its requests was answered, a batch is done, or it
# has worked this long.
MIN_TURN_SECONDS = 2.0


def give_way_between_requests(run: Any) -> None:
    """Let the invocation's tenant gate hand the work back before a model request too (fair/budget.py), once the
    invocation has had an answer, done a batch or worked MIN_TURN_SECONDS: every invocation makes progress (the
    answers it got are in the cache for the next), and a first batch of a large job (seconds at a tight limit)
    does not hold a waiting tenant's worker. Waiting for a whole batch or 2 s instead, a chunk's invocation that had
    just started could not give way for up to 2 s (a large job's chunks start every few seconds: bench part
    `fair`'s worker logs showed A's new invocations passing over a waiting B)."""
    gate = getattr(run.backend, "limiter", None)
    if gate is None or not run.settings.fair_shares or not hasattr(gate, "give_way"):
        return
    tenant = run.job.tenant or run.job.owner_id
    # Once this invocation has claimed the rescue, every request it has yet to make gives way too: the claim is
    # one per waiting tenant, so its other threads would find it taken (by us) and ask on, keeping the worker
    # from the waiting tenant for the rest of their wave (about 2 s of a 4-request wave at a 1-a-second share).
    yielding = threading.Event()
    gate.yielding = yielding  # seen at the checkpoint too (`yielding`): the claim may be a prefetch's

    def give_way(snap: Snapshot) -> bool:
        if yielding.is_set():
            return True
        worked = (run.done > 0 or run.backend.meter.total().requests > 0
                  or time.time() - run.started >= MIN_TURN_SECONDS)
        if worked and must_yield(run.settings, tenant, run.started, snap):
            yielding.set()
        return yielding.is_set()

    gate.give_way = give_way


def yielding(run: Any) -> bool:
    """This invocation has claimed a waiting tenant's rescue before a model request (its gate's `give_way`), so it
    gives its worker up: at its next checkpoint if no request of its own has yet. A request of the next batch's
    prefetch (worker/prefetch.py) can make the claim; its GiveWay ends only the prefetch, and `must_yield` would
    find the rescue claimed (by this invocation) and say no."""
    flag = getattr(getattr(run.backend, "limiter", None), "yielding", None)
    return isinstance(flag, threading.Event) and flag.is_set()


def top_up(run: Any) -> None:
    """Send the next held chunks of the run's job (fair/window.py) so that a few wait in the queue. Best effort:
    the reaper sends what stays unsent."""
    if not run.settings.fair_shares:
        return
    from chalicelib.fair import window
    from chalicelib.jobs import chunks

    job = run.job
    try:
        numbers = window.top_up(job.job_id, job.tenant or job.owner_id)
        if numbers:
            chunks.send(job.job_id, numbers, reason="fan-out", tenant=job.tenant or job.owner_id)
    except Exception:
        log.warning("could not send a job's next chunks; the reaper will", exc_info=True,
                    extra={"jobId": job.job_id})


def rules(settings: Settings) -> Rules:
    return Rules(_weights(settings.tenant_weights), max(0, settings.fair_min_slots))


@functools.lru_cache(maxsize=4)
def _weights(named: tuple[tuple[str, float], ...]) -> Weights:
    """TENANT_WEIGHTS names tenants as their tokens' tenant claim; jobs and messages carry the tenant key."""
    from chalicelib.auth import tenant_key

    return Weights({tenant_key(claim, ""): weight for claim, weight in named})


@contextlib.contextmanager
def turn(message: Any, context: Any, settings: Settings) -> Iterator[bool]:
    """Yields False when the message was deferred (nothing to run), True while its invocation runs."""
    tenant = getattr(message, "tenant", "")
    if not settings.fair_shares or not tenant:
        yield True  # a message from before fair shares (no tenant) runs as it comes
        return
    try:
        snap = demand.read()
    except Exception:  # the picture is advice: without it the message runs as it came
        log.warning("could not read the fleet's demand", exc_info=True)
        snap = Snapshot()
    waiters = rules(settings).deferring_to(snap, tenant)
    if waiters:
        if queue.deferrals(message) < queue.MAX_DEFERRALS:
            queue.defer(message)
            log.info("deferred for a waiting tenant", extra={"jobId": message.job_id, "tenant": tenant})
            yield False
            return
        # At the bound (fair/queue.MAX_DEFERRALS), by evidence, not by the count alone: the deferrals may be
        # minutes apart, the waiting tenants served in between. One that has taken a message since the first
        # deferral is being served: this message was fairly deferred, and is again, its count started afresh
        # (for SERVED_MAX_SECONDS at most). One that has taken none while this message was drawn that many times
        # has entries older than that which no worker can take (purged, in the DLQ, never sent): they go, so that
        # they hold nothing back.
        now = time.time()
        since = queue.deferred_since(message) or now - queue.MAX_DEFERRALS * queue.DEFER_SECONDS
        overdue = now - since > queue.SERVED_MAX_SECONDS
        served = [] if overdue else [u for u in waiters if snap.taken.get(u, 0.0) >= since]
        stale = [u for u in waiters if u not in served]
        # Past SERVED_MAX_SECONDS, an entry visible that long goes whenever it appeared: its tenant took messages
        # all along, so a real message of that age would have been taken.
        cutoff = now - queue.SERVED_MAX_SECONDS if overdue else since
        try:
            gone = demand.forget_waiting(stale, cutoff) if stale else 0
        except Exception:  # they lapse on their own
            log.warning("could not remove waiting entries", exc_info=True)
            gone = 0
        if served:
            queue.defer(message, afresh=True)
            log.info("deferred again for a waiting tenant that is being served",
                     extra={"jobId": message.job_id, "tenant": tenant})
            yield False
            return
        log.warning("ran despite a waiting tenant: deferred %d times while its message took no worker; %d of its "
                    "waiting entries removed", queue.deferrals(message), gone,
                    extra={"jobId": message.job_id, "tenant": tenant})
    invocation = f"{getattr(context, 'aws_request_id', '') or 'local'}-{uuid.uuid4().hex[:8]}"
    ttl = max(1.0, settings.fair_running_ttl_seconds)
    renewal: _Renewal | None = None
    try:
        demand.take(tenant, queue.message_key(message), invocation, time.time() + ttl)
        renewal = _Renewal(tenant, invocation, ttl).start()
    except Exception:  # the message runs; the picture is a message out until its entry lapses
        log.warning("could not register a tenant's running entry", exc_info=True, extra={"tenant": tenant})
    try:
        yield True
    finally:
        if renewal is not None:
            renewal.stop()
        try:
            demand.done(tenant, invocation)
        except Exception:  # the entry lapses on its own
            log.warning("could not end a tenant's running entry", exc_info=True, extra={"tenant": tenant})


class _Renewal:
    """Keeps an invocation's running entry from lapsing while the invocation runs, and only then.

    The entry lapses a TTL after its last renewal, not after the invocation's Lambda time: a worker killed mid-run
    (SIGKILL, a Lambda timeout, the host gone) runs no `finally`, and its tenant would count a worker more for up
    to 15 minutes, its messages deferred and its invocations giving way to every other tenant meanwhile. The
    renewing thread dies with the process, so the entry lapses within the TTL."""

    def __init__(self, tenant: str, invocation: str, ttl: float) -> None:
        self.tenant, self.invocation, self.ttl = tenant, invocation, ttl
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"fair-renewal-{invocation}", daemon=True)

    def start(self) -> _Renewal:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        # A renewal still in flight after this is conditioned on the entry being there (demand.renew), so one that
        # lands after `done` does not bring it back; the join only keeps the thread from outliving the invocation.
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while not self._stop.wait(self.ttl / RENEWALS_PER_TTL):
            try:
                if not demand.renew(self.tenant, self.invocation, time.time() + self.ttl):
                    return  # done, or pruned as lapsed: not this thread's to bring back
            except Exception:  # the next renewal may get through; a lapse only costs the picture one worker
                log.warning("could not renew a tenant's running entry", exc_info=True,
                            extra={"tenant": self.tenant})


def must_yield(settings: Settings, tenant: str, started: float, snap: Snapshot | None = None) -> bool:
    """Should an invocation of `tenant` (working since `started`, epoch seconds) hand its work back now? By `snap`,
    or by the demand item read now."""
    if not settings.fair_shares or not tenant:
        return False
    try:
        snap = demand.read() if snap is None else snap
    except Exception:  # advice only: keep working
        log.warning("could not read the fleet's demand", exc_info=True)
        return False
    now = time.time()
    over = now - started >= settings.fair_quantum_seconds
    waiter = rules(settings).must_yield(snap, tenant, turn_is_over=over)
    if waiter is not None and snap.rescue_claimed(waiter, now):
        # Another invocation frees the worker: its conditional write would only fail again. Every look of every
        # thread of the tenant holding the workers tried it while the waiting tenant's message stayed untaken.
        return False
    try:
        return waiter is not None and demand.rescue(waiter)  # one of the tenant's invocations frees the worker
    except Exception:
        log.warning("could not claim a rescue", exc_info=True)
        return False
