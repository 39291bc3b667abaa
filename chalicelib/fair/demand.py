"""The fleet's demand, in one DynamoDB item that every worker reads: which tenants have messages waiting in the
queue and which have invocations working, so that each worker decides by the same picture (fair/shares.py).

Three maps on the Control item `fair#demand`:
- `fairWaiting`: "tenant|message" -> the epoch second the message becomes visible. Written when a job or chunk
  message is sent (messages.send), removed when an invocation takes it. An entry lapses WAITING_TTL_SECONDS after
  it became visible, so a message lost to a purge or the DLQ stops holding the others back.
- `fairRunning`: "tenant|invocation" -> the epoch second the entry lapses. A live invocation renews it (`renew`,
  worker/fairness.turn), so a worker killed mid-run stops counting within FAIR_RUNNING_TTL_SECONDS without anyone
  cleaning up after it.
- `fairRescue`: waiting tenant -> the epoch second a claim to free a worker for it lapses (`rescue`). Read into
  the picture too, so that the other invocations do not try a claim already taken.
- `fairTaken`: tenant -> the epoch second an invocation last took one of its messages: the evidence that a waiting
  tenant is being served (worker/fairness.turn, at the deferral bound). Kept TAKEN_KEEP_SECONDS, so the item
  holds the tenants of the last few minutes, not every tenant that ever ran (an item is at most 400 KB).

Each write sets or removes one map key (its own): writers never overwrite one another and need no version.
Removing a lapsed entry is conditioned on the value read (`entry_unchanged`), so a message re-sent meanwhile
under the same key keeps its fresh entry.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

from pynamodb.exceptions import UpdateError

from chalicelib.fair.shares import Snapshot
from chalicelib.tables import Control

KEY = "fair#demand"
WAITING_TTL_SECONDS = 120.0
SEP = "|"
RESCUE_SECONDS = 10.0  # a claim to free a worker for a waiting tenant (rescue) lapses after this
# A take older than this is no evidence worth keeping: a waiting entry visible before it has lapsed anyway.
TAKEN_KEEP_SECONDS = 2 * WAITING_TTL_SECONDS
PRUNE_MAX = 25  # lapsed entries removed per read, at most: a read stays one read and a few small writes

log = logging.getLogger(__name__)
_made = threading.Event()  # this process has seen the item exist (its maps can take keys)


def entry(tenant: str, name: str) -> str:
    """The map key: the tenant first, then a message key (jobId or jobId#chunk) or an invocation id."""
    return f"{tenant}{SEP}{name}"


def tenant_of(key: str) -> str:
    return key.rsplit(SEP, 1)[0]  # a tenant id may hold the separator; message keys and invocation ids never do


def _ensure() -> None:
    """The item with its two maps, made once (a SET of a map key fails while its map does not exist). An update,
    not a put: `if_not_exists` keeps maps another writer made first, and senders need no PutItem permission."""
    if _made.is_set():
        return
    Control(KEY).update(actions=[Control.fair_waiting.set(Control.fair_waiting | {}),
                                 Control.fair_running.set(Control.fair_running | {}),
                                 Control.fair_rescue.set(Control.fair_rescue | {}),
                                 Control.fair_taken.set(Control.fair_taken | {})])
    _made.set()


def _update(*actions: object, condition: object = None) -> bool:
    _ensure()
    try:
        Control(KEY).update(actions=list(actions), condition=condition)  # type: ignore[arg-type]
        return True
    except UpdateError as err:
        if err.cause_response_code == "ConditionalCheckFailedException":
            return False
        raise


def waiting(tenant: str, message: str, visible_at: float) -> None:
    """A message of `tenant` is on the queue, visible from `visible_at`."""
    _update(Control.fair_waiting[entry(tenant, message)].set(round(visible_at, 3)))


def take(tenant: str, message: str, invocation: str, lapses_at: float) -> None:
    """An invocation took the message: it no longer waits, and the tenant has one more running (and any rescue
    of it is over: if it still waits, another invocation may free a worker for it)."""
    _update(Control.fair_waiting[entry(tenant, message)].remove(),
            Control.fair_running[entry(tenant, invocation)].set(round(lapses_at, 3)),
            Control.fair_rescue[tenant].remove(),
            Control.fair_taken[tenant].set(round(time.time(), 3)))


def rescue(tenant: str, now: float | None = None) -> bool:
    """Claim the freeing of one worker for waiting `tenant`: True for one claimer until the tenant takes a message
    or RESCUE_SECONDS pass. Every invocation of a tenant over its share sees the same picture; without the claim
    they would all hand their work back and leave their own tenant no worker at all."""
    now = time.time() if now is None else now
    # rescue_free: one invocation frees a worker per waiting tenant; a claim whose invocation died lapses.
    free = Control.fair_rescue[tenant].does_not_exist() | (Control.fair_rescue[tenant] < now)
    return _update(Control.fair_rescue[tenant].set(round(now + RESCUE_SECONDS, 3)), condition=free)


def forget_waiting(tenants: list[str], visible_before: float) -> int:
    """Remove the waiting entries of `tenants` that became visible before `visible_before`: their messages did not
    take a worker while another tenant's message was deferred for them (fair/queue.MAX_DEFERRALS), so they are not
    on the queue (purged, in the DLQ, or never sent). Each removal is conditioned on the value read
    (`entry_unchanged`): a message sent again meanwhile keeps its fresh entry. Returns how many went."""
    try:
        item = Control.get(KEY, consistent_read=True)
    except Control.DoesNotExist:
        return 0
    waits = {k: float(v) for k, v in (item.fair_waiting.as_dict() if item.fair_waiting else {}).items()}
    gone = 0
    for key, value in waits.items():
        if tenant_of(key) in tenants and value < visible_before:
            gone += _update(Control.fair_waiting[key].remove(), condition=(Control.fair_waiting[key] == value))
    return gone


def renew(tenant: str, invocation: str, lapses_at: float) -> bool:
    """Move a running entry's lapse to `lapses_at`; False when the entry is gone (done, or pruned as lapsed)."""
    key = Control.fair_running[entry(tenant, invocation)]
    # renew_only_while_running: a renewal that lands after `done` (or after a read pruned the entry) must not bring
    # the entry back: its tenant would count one invocation more, that nobody ends, until it lapsed again.
    return _update(key.set(round(lapses_at, 3)), condition=key.exists())


def done(tenant: str, invocation: str) -> None:
    _update(Control.fair_running[entry(tenant, invocation)].remove())


def read(now: float | None = None) -> Snapshot:
    """The fleet now (one consistent read); lapsed entries are left out, and a few of them removed."""
    now = time.time() if now is None else now
    try:
        item = Control.get(KEY, consistent_read=True)
    except Control.DoesNotExist:
        return Snapshot()
    if item.fair_taken is not None:  # an item from before `fairTaken` still needs its map (_ensure)
        _made.set()
    waits = {k: float(v) for k, v in (item.fair_waiting.as_dict() if item.fair_waiting else {}).items()}
    runs = {k: float(v) for k, v in (item.fair_running.as_dict() if item.fair_running else {}).items()}
    rescued = {k: float(v) for k, v in (item.fair_rescue.as_dict() if item.fair_rescue else {}).items()}
    taken = {k: float(v) for k, v in (item.fair_taken.as_dict() if item.fair_taken else {}).items()}
    lapsed = [("w", k, v) for k, v in waits.items() if v + WAITING_TTL_SECONDS < now]
    lapsed += [("r", k, v) for k, v in runs.items() if v < now]
    lapsed += [("t", k, v) for k, v in taken.items() if v + TAKEN_KEEP_SECONDS < now]
    for kind, key, value in lapsed[:PRUNE_MAX]:
        attr = {"w": Control.fair_waiting, "r": Control.fair_running, "t": Control.fair_taken}[kind]
        # entry_unchanged: a message re-sent (or an invocation renewed) since our read keeps its new entry.
        _update(attr[key].remove(), condition=(attr[key] == value))
    visible = [k for k, v in waits.items() if now <= v + WAITING_TTL_SECONDS]  # delayed ones wait too
    return Snapshot(
        jobs=Counter(k.rsplit(SEP, 1)[1].split("#", 1)[0] for k in visible),
        running=Counter(tenant_of(k) for k, v in runs.items() if v >= now),
        waiting=Counter(tenant_of(k) for k, v in waits.items() if v <= now <= v + WAITING_TTL_SECONDS),
        rescued={t: v for t, v in rescued.items() if v >= now}, taken=taken)


class Cached:
    """`read()` at most every `max_age` seconds in this process: the budget gate asks before every model request."""

    def __init__(self, max_age: float = 0.5, reader: Callable[[], Snapshot] = read,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age, self._reader, self._clock = max_age, reader, clock
        self._lock = threading.Lock()
        self._at = -float("inf")
        self._snap = Snapshot()

    def __call__(self) -> Snapshot:
        with self._lock:
            if self._clock() - self._at > self.max_age:
                try:
                    self._snap = self._reader()
                except Exception:  # the picture is advice: a failed read keeps the last one a little longer
                    log.warning("could not read the fleet's demand", exc_info=True)
                self._at = self._clock()
            return self._snap
