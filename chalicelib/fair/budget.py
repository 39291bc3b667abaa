"""A tenant's model requests through the fleet's shared limiter, at the tenant's weighted share of the budget.

TenantGate wraps the limiter's `acquire` (never rewrites it): before a request takes its turn at the shared bucket,
it takes one at its tenant's own bucket, a copy of the shared limiter (same pacing, same code) keyed by tenant and
filled at the tenant's fraction of the limits (fair/shares.Rules.budget_fraction: its weight over the weights of
every tenant with work running; 1.0 when alone), which banks one more turn after an idle spell
(limiter.SHARE_IDLE_CREDIT: a small job's first two requests go out together), and whose requests then queue
further ahead for a moment (BURST_QUEUE_AHEAD_SECONDS: that first wave takes the fleet's next turns).

- Within its share (its own bucket has a turn now), a request queues at the shared bucket as before: first come,
  first served, but never more than QUEUE_AHEAD_SECONDS ahead; a request whose turn would be later keeps its own
  bucket's turn and looks again when the queue has moved up. That is the guaranteed share: the turns a tenant
  reserves this way are at most its fraction. The shared queue stays short: a tenant alone (fraction 1.0) with
  8 requests in flight at 2 a second once held turns 4 s ahead, which a tenant arriving then found before its own
  first request, and which kept the first tenant's workers from giving way for as long (bench part `fair`).
- Beyond its share, a request takes only a turn nobody has queued for (the shared bucket can serve it within
  SPARE_WAIT_SECONDS), and otherwise looks again a little later. That is the burst when others are idle: their
  unused turns go to whoever asks, and a tenant's backlog never sits in the shared queue ahead of another
  tenant's next request, which finds at most about one second of turns before its own (the bucket's burst).

A request that finds no turn within the limiter's `wait_max` raises QuotaBusy, as the limiter itself would: the
worker hands its job or chunk back to the queue (worker/loop.categorize). So does a request of an invocation that
must give its worker to a waiting tenant (`give_way`, set by worker/fairness.py): it raises GiveWay, a QuotaBusy,
before it asks for a turn, so that the worker frees up within a request's latency rather than at the end of a
wave of requests (seconds at a tight limit); the answers already got are written through to the cache.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable
from typing import Any

from chalicelib.categorize.errors import QuotaBusy
from chalicelib.fair import demand
from chalicelib.fair.shares import Rules

SPARE_WAIT_SECONDS = 0.05  # beyond its share a request takes a turn only this close
# Within its share, a turn at most this far ahead (past the limiter's lead). Every turn reserved ahead is one that
# a newcomer's first request finds before its own, and that an invocation giving way must wait out before its
# worker is free: at 0.5 s, tenant B's queue wait (bench part `fair`) was 0.35-1.53 s (over 1 s in 6 runs of 12)
# and its first request waited up to 1 s behind A's turns; at 0.25 s, 0.28-1.43 s (over 1 s in 3 runs of 18),
# with A's pace alone unchanged (1.90 a second of 2).
QUEUE_AHEAD_SECONDS = 0.25
POLL_SECONDS = 0.25  # and otherwise looks again after about this long (less at high rates)
# A tenant back from idle (its bucket spent a banked turn: limiter.SHARE_IDLE_CREDIT) queues within its share this
# far ahead for this long: its first wave takes the fleet's next turns, ahead of the other tenants' requests within
# their shares (which queue QUEUE_AHEAD_SECONDS ahead). Without it the banked turn bought little: at equal shares
# the two tenants' requests took turns, and tenant B's third request (bench part `fair`) came 1.6 s after its second
# where alone it comes 0.53 s after, B's job up to 2.25x its idle time.
BURST_QUEUE_AHEAD_SECONDS = 1.0
BURST_SECONDS = 2.0

_snapshots = demand.Cached(max_age=0.25)  # one per process: every invocation's gate reads the same picture


class GiveWay(QuotaBusy):
    """This invocation's tenant holds more workers than its share while another tenant waits: hand the work back."""


class TenantGate:
    def __init__(self, limiter: Any, tenant: str, rules: Rules, snapshot: Callable[[], Any] = _snapshots,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
        self.limiter, self.tenant, self.rules = limiter, tenant, rules
        self._snapshot, self._sleep, self._clock = snapshot, sleep, clock
        self.own_key = f"{limiter.key}#tenant#{tenant}"
        self._spare = dataclasses.replace(limiter, wait_max=SPARE_WAIT_SECONDS)
        self._queued = dataclasses.replace(limiter, wait_max=QUEUE_AHEAD_SECONDS)
        self._burst = dataclasses.replace(limiter, wait_max=BURST_QUEUE_AHEAD_SECONDS)
        self._burst_until = -math.inf  # (clock) while its first wave after an idle spell queues further ahead
        per_second = max(float(limiter.rpm or 0), 1.0) / 60.0
        self.poll = min(POLL_SECONDS, 0.5 / per_second)  # twice per interval between two turns, at least
        self.give_way: Callable[[Any], bool] | None = None  # given this gate's snapshot: must the work go back?

    def fraction(self) -> float:
        return self.rules.budget_fraction(self._snapshot(), self.tenant)

    def _own(self, fraction: float) -> Any:
        """The tenant's bucket at `fraction` of the limits (configured or learned: limiter.share); a turn now or
        QuotaBusy (nothing reserved)."""
        return dataclasses.replace(self.limiter.share(fraction, self.own_key), wait_max=0.0)

    def acquire(self, *args: Any, **kwargs: Any) -> Any:
        """A turn for one request, within the tenant's share first come first served, beyond it if spare."""
        wait_max = self.limiter.wait_max
        deadline = self._clock() + (math.inf if wait_max is None else wait_max)
        within = False  # the tenant's own bucket gave this request its turn (kept while the shared queue is full)
        while True:
            if self.give_way is not None and self.give_way(self._snapshot()):
                raise GiveWay(0.0)
            own_in = math.inf  # seconds until the tenant's own bucket has a turn
            if not within:
                own = self._own(self.fraction())
                try:
                    own.acquire(*args, **kwargs)
                    within = True
                    if own.credited:
                        self._burst_until = self._clock() + BURST_SECONDS
                except QuotaBusy as busy:
                    own_in = busy.seconds
            bursting = self._clock() < self._burst_until
            shared = (self._burst if bursting else self._queued) if within else self._spare
            try:
                return shared.acquire(*args, **kwargs)
            except QuotaBusy as busy:
                left = deadline - self._clock()
                ahead = shared.wait_max  # how far past the lead this request may take a turn
                if left <= 0 or busy.seconds - ahead - self.limiter.lead > left:
                    # No turn comes sooner than the limiter's own wait allows: hand the work back now.
                    raise QuotaBusy(max(busy.seconds, self.poll)) from None
                # Look again about when the turn comes within reach (early, at random: the others look too), and
                # at least every `poll` (a give-way is checked at each look). A spare turn looked for at random
                # instead came up to 0.2 s after it was free: the fleet lost that much of a turn each time a
                # tenant stopped asking (bench part `fair`, arrivals after B's last request).
                until = max(0.01, busy.seconds - ahead - self.limiter.lead)
                # Beyond its share, also when its own bucket's turn comes: then it queues within its share, ahead
                # of the others' spare turns. Looked for only as the shared queue moved, that turn was found late,
                # after the other tenant's spare-seekers had reserved the shared turns it would have had (bench
                # part `fair`: B's third request 1.6 s after its second, at a share of one per 1.05 s).
                self._sleep(min(left, self.poll, until * random.uniform(0.5, 1.0), max(0.01, own_in)))

    def __getattr__(self, name: str) -> Any:
        """Everything else (hold, observe, ...) is the shared limiter's."""
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.limiter, name)
