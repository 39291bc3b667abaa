"""The rules of fair shares, without AWS: weights, the fleet's snapshot, and who gives way to whom.

A tenant's claim on the fleet is its weight. Workers are shared by deficit: `r / w` (running invocations per unit
of weight) is how much of the fleet a tenant holds; a tenant whose messages wait gets a worker from a tenant that
holds more, when moving that one worker makes the split strictly fairer (`gives_way`). A tenant below its
guaranteed minimum (FAIR_MIN_SLOTS) gets one from any tenant above it, whatever the weights. When no move is
strictly fairer (one worker, two tenants), tenants take turns: an invocation that has worked a quantum gives way
on a tie too (`turn_is_over`). A tenant alone keeps every worker: nothing waits for one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field


def parse_weights(text: str) -> dict[str, float]:
    """TENANT_WEIGHTS: "acme=3,globex=0.5" -> {"acme": 3.0, "globex": 0.5}; ValueError naming the bad entry."""
    out: dict[str, float] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        tenant, sep, raw = entry.rpartition("=")
        try:
            weight = float(raw)
        except ValueError:
            weight = math.nan
        if not sep or not tenant.strip() or not (weight > 0 and math.isfinite(weight)):
            raise ValueError(f"TENANT_WEIGHTS entry {entry!r}: expected tenant=weight with a weight above 0")
        out[tenant.strip()] = weight
    return out


@dataclass(frozen=True)
class Weights:
    named: Mapping[str, float] = field(default_factory=dict)
    default: float = 1.0

    def of(self, tenant: str) -> float:
        return float(self.named.get(tenant, self.default))


@dataclass(frozen=True)
class Snapshot:
    """The fleet as the demand registry last showed it: per tenant, invocations working its messages and its
    messages visible in the queue that no invocation has taken yet."""

    running: Mapping[str, int] = field(default_factory=dict)
    waiting: Mapping[str, int] = field(default_factory=dict)
    jobs: Mapping[str, int] = field(default_factory=dict)  # job id -> its messages waiting (fair/window.py)
    rescued: Mapping[str, float] = field(default_factory=dict)  # waiting tenant -> epoch its rescue claim lapses
    taken: Mapping[str, float] = field(default_factory=dict)  # tenant -> epoch its last message was taken

    def rescue_claimed(self, tenant: str, now: float) -> bool:
        """Another invocation has claimed to free a worker for `tenant` (demand.rescue), as of this picture."""
        return float(self.rescued.get(tenant, 0.0)) >= now

    def r(self, tenant: str) -> int:
        return int(self.running.get(tenant, 0))

    def waiting_tenants(self, other_than: str) -> list[str]:
        return sorted(t for t, n in self.waiting.items() if n > 0 and t != other_than)


@dataclass(frozen=True)
class Rules:
    weights: Weights = field(default_factory=Weights)
    min_slots: int = 1

    def gives_way(self, holder: str, held: int, waiter: str, has: int, tie: bool = False) -> bool:
        """Should `holder`, with `held` invocations, give one to `waiter`, which has `has`?"""
        if has < self.min_slots < held:
            return True  # the waiter's guaranteed minimum, from a tenant above its own
        mine, theirs = held / self.weights.of(holder), (has + 1) / self.weights.of(waiter)
        return mine >= theirs if tie else mine > theirs

    def defer(self, snap: Snapshot, tenant: str) -> bool:
        """A received message of `tenant` goes back to the queue: another tenant waiting for a worker has the
        better claim on this one. Ties are not deferred (two waiting tenants would defer each other forever):
        the queue's order decides them."""
        return bool(self.deferring_to(snap, tenant))

    def deferring_to(self, snap: Snapshot, tenant: str) -> list[str]:
        """The waiting tenants that have the better claim on a worker than a received message of `tenant`."""
        held = snap.r(tenant) + 1  # with this worker
        return [u for u in snap.waiting_tenants(tenant) if self.gives_way(tenant, held, u, snap.r(u))]

    def must_yield(self, snap: Snapshot, tenant: str, turn_is_over: bool = False) -> str | None:
        """The waiting tenant for which an invocation of `tenant` hands its work back (between two batches, or
        before a model request), or None; after a quantum of work (`turn_is_over`) on a tie too, so that tenants
        take turns. Every invocation of `tenant` sees the same picture: one of them rescues the waiting tenant
        (demand.rescue), the others work on."""
        held = snap.r(tenant)
        return next((u for u in snap.waiting_tenants(tenant)
                     if self.gives_way(tenant, held, u, snap.r(u), tie=turn_is_over)), None)

    def budget_fraction(self, snap: Snapshot, tenant: str) -> float:
        """The tenant's share of the provider's budget: its weight over the weights of every tenant that has
        invocations running or messages waiting (itself included): a tenant about to ask finds the others'
        reservations thinned already. 1.0 alone: the whole budget, a burst when others are idle (and the turns a
        share leaves unused go to whoever asks: budget.TenantGate)."""
        active = {t for t, n in snap.running.items() if n > 0} | {t for t, n in snap.waiting.items() if n > 0}
        active |= {tenant}
        return self.weights.of(tenant) / sum(self.weights.of(t) for t in active)
