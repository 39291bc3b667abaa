"""The next batch's first model request, asked while this batch's last ones are out (loop.categorize).

Without it an invocation asks in waves: a batch's requests, then its rows and checkpoint, then the next batch's.
At a paced limit a lone invocation then leaves a turn unasked after every wave: its last answer (the provider's
latency), its writes and the limiter's lead come to ~0.95 s where the pace gives a turn every 0.53 s (120 RPM).
Two invocations of a tenant hide each other's gaps; one alone (a job that is not fanned out, or the chunk left
beside one that gave its worker to another tenant) cannot: bench part `fair` lost up to 0.4 s of turns per run.

So a batch starts the next batch's first request (up to MODEL_BATCH_SIZE vendors the lines read ahead bring, none
of them answered or asked yet) once every request of its own has its turn (`Seating`): the prefetch takes the
turn after them, and the next batch's own requests queue after that while the prefetch is answered. The next
batch asks about everything else, then takes the prefetch's answers (`join`); whatever the prefetch did not get
(no turn within PREFETCH_WAIT_SECONDS, a give-way, a 429's long wait, an error) that batch asks about itself.

A prefetch counts nothing: it writes no row and moves no checkpoint, so a crash or a cancel meanwhile loses no
line and counts none twice; its answers reach the vendor cache (and, for a chunk, other chunks through the vendor
claims) like any other. Its usage is metered by the invocation's backend and counted with the next checkpoint;
every way out of the loop joins it first (its request is paid for). Only a paced backend prefetches: without a
pace there is no turn to lose, and the extra request would only raise the concurrency MODEL_CONCURRENCY sets.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import threading
from collections.abc import Iterable
from typing import Any

from chalicelib import faults
from chalicelib.categorize import pipeline
from chalicelib.categorize.errors import JobFatal, LongWait
from chalicelib.categorize.normalize import normalize_vendor
from chalicelib.categorize.types import Answer

log = logging.getLogger(__name__)

# The longest a prefetch waits for its turn (past the limiter's lead): it fills the turn right after its batch's
# requests, one or two intervals away; further than this, the fleet is busy and the next batch asks in its place.
PREFETCH_WAIT_SECONDS = 2.0
# How long a prefetch waits for its batch's requests to have their turns before it asks for its own anyway.
SEATING_WAIT_SECONDS = 10.0


class Seating:
    """A batch's limiter, counting its requests that wait for a turn: `seated` is set once every one that asked
    has it (or the batch ends: `done`)."""

    def __init__(self, limiter: Any) -> None:
        self.limiter = limiter
        self.seated = threading.Event()
        self.failed = False  # a request of the batch found no turn (or gave way): the batch is going back
        self._waiting = 0
        self._lock = threading.Lock()

    def acquire(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self._waiting += 1
        try:
            return self.limiter.acquire(*args, **kwargs)
        except BaseException:
            self.failed = True
            raise
        finally:
            with self._lock:
                self._waiting -= 1
                if not self._waiting:
                    self.seated.set()

    def done(self) -> None:
        self.seated.set()

    def __getattr__(self, name: str) -> Any:  # hold, answered, ...: the limiter's own
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.limiter, name)


def paced(limiter: Any) -> bool:
    """The backend's limiter spaces requests (limits configured, or learned as last read)."""
    inner = getattr(limiter, "limiter", limiter)  # a tenant's gate wraps the shared limiter
    return bool(getattr(inner, "paced", False))


def _soon(limiter: Any, seconds: float) -> Any:
    """`limiter`, waiting at most `seconds` for a turn (a tenant's gate keeps its give-way)."""
    inner = getattr(limiter, "limiter", None)
    if inner is None:
        return dataclasses.replace(limiter, wait_max=min(seconds, limiter.wait_max or seconds))
    gate = copy.copy(limiter)
    gate.limiter = _soon(inner, seconds)
    return gate


class Prefetch:
    """One prefetch in flight: `vendors` (normalized) being asked about on a thread of its own."""

    def __init__(self, run: Any, scope: Any, lines: list, seating: Seating) -> None:
        self.vendors = frozenset(normalize_vendor(line.vendor) for line in lines)
        self._answers: dict[str, Answer] = {}
        self._stop = threading.Event()
        self._seating = seating
        # What the thread needs, read here: the loop refreshes its job while the thread runs.
        job = run.job
        backend = dataclasses.replace(run.backend, limiter=_soon(run.backend.limiter, PREFETCH_WAIT_SECONDS))
        asking = (lines, list(job.categories), run.settings, backend, job.job_id, scope.claim_owner,
                  job.tenant or job.owner_id)
        self._thread = threading.Thread(target=self._ask, args=asking, name="prefetch", daemon=True)
        self._thread.start()

    def _ask(self, lines: list, categories: list[str], settings: Any, backend: Any, job_id: str,
             claim_owner: str | None, tenant: str) -> None:
        self._seating.seated.wait(SEATING_WAIT_SECONDS)
        if self._stop.is_set() or self._seating.failed:
            return
        memo: dict[str, Answer] = {}  # its own: run.memo is the loop's (merged at `join`)
        try:
            # Not the vendors another chunk of the job holds: waiting on them could hold up the next batch, and
            # the invocation's way out, for as long as that chunk's claim (the batch waits for them itself).
            got = pipeline.categorize(lines, categories, settings, backend, memo, job_id, None,
                                      claim_owner=claim_owner, tenant=tenant, others=False)
        except (LongWait, JobFatal) as err:  # no turn soon, a give-way, a 429's long wait, a bad key: the batch
            # asks itself, and meets what is still true then (a fatal error fails the job there)
            log.info("prefetch gave up (%s); the next batch asks for its vendors", type(err).__name__)
            return
        except Exception:  # a table error, or a bug: logged as such, and still the batch asks itself
            log.warning("prefetch failed; the next batch asks for its vendors", exc_info=True)
            return
        faults.point("after_prefetch_answer")
        by_line = {line.line_id: normalize_vendor(line.vendor) for line in lines}
        self._answers = {by_line[line_id]: answer for line_id, answer in got.items()}

    def stop(self) -> None:
        """No request if it has not asked yet (one already out is waited for by `join`)."""
        self._stop.set()
        self._seating.done()

    def join(self) -> dict[str, Answer]:
        """Its answers by normalized vendor, once done (empty when it gave up)."""
        self._thread.join()
        return self._answers


def pick(ahead: Iterable[Any], known: Any, batch: list, most: int) -> list:
    """One line for each of the first `most` vendors past `batch` among the `ahead` lines that are not `known`
    (answered, or asked already) and not in `batch`."""
    taken = {normalize_vendor(line.vendor) for line in batch}
    out: list = []
    for line in ahead:
        if len(out) >= most:
            break
        vendor = normalize_vendor(line.vendor)
        if vendor not in known and vendor not in taken:
            taken.add(vendor)
            out.append(line)
    return out
