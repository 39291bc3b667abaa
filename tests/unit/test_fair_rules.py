"""The rules of fair shares between tenants (chalicelib/fair/shares.py), without AWS."""

from __future__ import annotations

import pytest

from chalicelib.fair.shares import Rules, Snapshot, Weights, parse_weights


def test_weights_are_read_from_tenant_equals_weight_pairs():
    assert parse_weights(" acme=3, globex=0.5 ,") == {"acme": 3.0, "globex": 0.5}
    assert parse_weights("") == {}


@pytest.mark.parametrize("text", ["acme", "acme=", "=2", "acme=0", "acme=-1", "acme=nan", "acme=inf", "acme=x"])
def test_a_bad_weight_is_refused_naming_its_entry(text):
    with pytest.raises(ValueError, match="TENANT_WEIGHTS entry"):
        parse_weights(f"ok=1,{text}")


def test_a_tenant_holding_every_worker_defers_its_next_message_while_another_tenant_waits():
    rules, snap = Rules(), Snapshot(running={"a": 1}, waiting={"a": 18, "b": 1})
    assert rules.defer(snap, "a")  # a would hold both workers; b has none
    assert not rules.defer(snap, "b")
    assert not rules.defer(Snapshot(running={"a": 1}, waiting={"a": 18}), "a")  # alone: a keeps every worker


def test_a_tenant_over_its_share_hands_a_worker_back_between_batches():
    rules = Rules()
    assert rules.must_yield(Snapshot(running={"a": 2}, waiting={"b": 1}), "a")
    assert not rules.must_yield(Snapshot(running={"a": 1, "b": 1}, waiting={"a": 5, "b": 1}), "a")  # even split
    assert not rules.must_yield(Snapshot(running={"a": 2}, waiting={"a": 5}), "a")  # nobody else waits


def test_weights_are_honoured_three_workers_to_one_and_the_split_is_stable():
    rules = Rules(Weights({"a": 3.0}))
    # 4 workers, both tenants with more waiting: a keeps 3, b 1, and neither gives way to the other.
    at_rest = Snapshot(running={"a": 3, "b": 1}, waiting={"a": 9, "b": 9})
    assert not rules.must_yield(at_rest, "a") and not rules.must_yield(at_rest, "b")
    even = Snapshot(running={"a": 2, "b": 2}, waiting={"a": 9, "b": 9})
    assert rules.must_yield(even, "b") and not rules.must_yield(even, "a")  # b gives a its third
    assert rules.defer(Snapshot(running={"a": 3, "b": 0}, waiting={"a": 9, "b": 9}), "a")  # b's minimum first


def test_the_guaranteed_minimum_beats_the_weights():
    rules = Rules(Weights({"a": 100.0}), min_slots=1)
    assert rules.must_yield(Snapshot(running={"a": 4}, waiting={"b": 1}), "a")  # b's one worker, whatever a weighs
    assert not Rules(Weights({"a": 100.0}), min_slots=0).must_yield(Snapshot(running={"a": 4}, waiting={"b": 1}), "a")


def test_with_fewer_workers_than_tenants_they_take_turns_after_a_quantum():
    rules, snap = Rules(), Snapshot(running={"a": 1}, waiting={"b": 1})  # one worker
    assert not rules.must_yield(snap, "a")  # no split is fairer than this one at once...
    assert rules.must_yield(snap, "a", turn_is_over=True)  # ...so a gives way once it has worked a quantum
    assert not rules.defer(Snapshot(waiting={"a": 1, "b": 1}), "a")  # a tie is not deferred: the queue decides


def test_an_idle_tenants_share_of_the_budget_is_lent_out():
    rules = Rules(Weights({"a": 3.0}))
    assert rules.budget_fraction(Snapshot(running={"a": 2}), "a") == 1.0  # alone: the whole budget
    assert rules.budget_fraction(Snapshot(running={"a": 2}, waiting={"a": 9}), "a") == 1.0
    assert rules.budget_fraction(Snapshot(running={"a": 2, "b": 1}), "a") == 0.75
    assert rules.budget_fraction(Snapshot(running={"a": 2, "b": 1}), "b") == 0.25


def test_tenant_weights_name_tenant_claims_and_weigh_the_jobs_tenant_keys():
    import dataclasses

    from chalicelib.auth import tenant_key
    from chalicelib.settings import Settings
    from chalicelib.worker.fairness import rules

    weights = rules(dataclasses.replace(Settings(), tenant_weights=(("acme#eu", 3.0),))).weights
    assert weights.of(tenant_key("acme#eu", "someone")) == 3.0
    assert weights.of(tenant_key("globex", "someone")) == 1.0


def test_a_gate_whose_invocation_must_give_way_asks_for_no_turn():
    from chalicelib.fair.budget import GiveWay, TenantGate

    shared = _queue_limiter([0.0])  # the shared queue is empty
    gate = TenantGate(shared, "tenant#a", Rules(), snapshot=lambda: Snapshot(running={"tenant#a": 1}))
    assert gate.acquire(10) == 0.0  # alone: its own bucket's turn, then the shared bucket's
    assert [key for key, _ in shared.calls] == ["limiter#unit#tenant#tenant#a", "limiter#unit"]
    gate.give_way = lambda snap: True
    shared.calls.clear()
    with pytest.raises(GiveWay):
        gate.acquire(10)
    assert shared.calls == []


def _queue_limiter(ahead: list[float], own: list[float] | None = None):
    """A limiter whose shared queue ends `ahead[0]` seconds from now; the own buckets have a turn `own[0]` seconds
    from now (always now without `own`)."""
    import dataclasses

    from chalicelib.categorize.errors import QuotaBusy

    @dataclasses.dataclass
    class Limiter:
        rpm: float | None = 120
        tpm: float | None = None
        wait_max: float | None = 30.0
        key: str = "limiter#unit"
        lead: float = 0.25
        credited: bool = False  # its reservations never spend a banked turn (no burst: fair/budget.BURST_SECONDS)
        calls: list = dataclasses.field(default_factory=list)

        def share(self, fraction: float, key: str) -> Limiter:
            return dataclasses.replace(self, key=key, rpm=(self.rpm or 0) * fraction or None)

        def acquire(self, tokens: int) -> float:
            if self.key == "limiter#unit" and self.wait_max is not None and ahead[0] > self.wait_max + self.lead:
                raise QuotaBusy(ahead[0])  # nothing reserved
            if self.key != "limiter#unit" and own and own[0] > 0:
                raise QuotaBusy(own[0])
            self.calls.append((self.key, round(ahead[0], 2)))
            return 0.0

    return Limiter()


def test_a_request_within_its_share_reserves_no_turn_beyond_the_queue_horizon():
    """Within its share, a request does not queue more than QUEUE_AHEAD_SECONDS (past the lead) behind others:
    it keeps its own bucket's turn (taken once) and waits until the queue has moved up, then reserves."""
    from chalicelib.fair.budget import QUEUE_AHEAD_SECONDS, TenantGate

    ahead = [3.0]  # another tenant's turns already reserved 3 s ahead
    shared = _queue_limiter(ahead)

    def sleep(seconds: float) -> None:
        ahead[0] -= seconds  # the queue moves up as time passes

    gate = TenantGate(shared, "tenant#a", Rules(), snapshot=lambda: Snapshot(running={"tenant#a": 1}), sleep=sleep)
    gate.acquire(10)
    own = [c for c in shared.calls if c[0] != "limiter#unit"]
    queued = [c for c in shared.calls if c[0] == "limiter#unit"]
    assert len(own) == 1 and len(queued) == 1
    assert queued[0][1] <= QUEUE_AHEAD_SECONDS + shared.lead


def test_a_request_waiting_for_the_queue_to_move_up_gives_way_when_its_invocation_must():
    """A wait for the queue is no wait for the worker: the give-way check runs before each look, so an
    invocation whose tenant must give way hands its work back without reserving a turn it would not use."""
    from chalicelib.fair.budget import GiveWay, TenantGate

    ahead = [3.0]
    shared = _queue_limiter(ahead)
    looks: list[float] = []

    def sleep(seconds: float) -> None:
        looks.append(seconds)
        ahead[0] -= seconds

    gate = TenantGate(shared, "tenant#a", Rules(), snapshot=lambda: Snapshot(running={"tenant#a": 1}), sleep=sleep)
    gate.give_way = lambda snap: bool(looks)  # another tenant starts waiting during the first wait
    with pytest.raises(GiveWay):
        gate.acquire(10)
    assert [c for c in shared.calls if c[0] == "limiter#unit"] == []


def test_once_an_invocation_gives_way_every_request_it_has_left_gives_way_too(monkeypatch):
    """The rescue is one claim per waiting tenant: the invocation that won it must not find it taken (by itself)
    on its next request and ask on; each of its threads gives way from then on."""
    import types

    from chalicelib.worker import fairness

    answers = iter([False, True, False, False])  # must_yield: no, then yes (rescue won), then taken (by us)
    monkeypatch.setattr(fairness, "must_yield", lambda *a, **k: next(answers))
    gate = types.SimpleNamespace(give_way=None)
    run = types.SimpleNamespace(backend=types.SimpleNamespace(limiter=gate), done=1, started=0.0,
                                settings=types.SimpleNamespace(fair_shares=True),
                                job=types.SimpleNamespace(tenant="tenant#a", owner_id="u"))
    fairness.give_way_between_requests(run)
    assert [gate.give_way(Snapshot()) for _ in range(4)] == [False, True, True, True]


def test_a_request_beyond_its_share_queues_within_it_as_soon_as_its_own_turn_comes():
    """Its own bucket's turn is 0.1 s away, and then the shared queue's end is just within the horizon of a
    request within its share (too far for a spare turn): the request looks again when its own turn comes and
    queues then, before another tenant's spare-seekers reserve the turns it would have had."""
    from chalicelib.fair.budget import QUEUE_AHEAD_SECONDS, TenantGate

    ahead, own = [0.25 + QUEUE_AHEAD_SECONDS + 0.1], [0.1]  # 0.25: the fake limiter's lead
    shared = _queue_limiter(ahead, own)
    elapsed = [0.0]

    def sleep(seconds: float) -> None:
        elapsed[0] += seconds
        ahead[0] -= seconds
        own[0] -= seconds

    gate = TenantGate(shared, "tenant#a", Rules(), snapshot=lambda: Snapshot(running={"tenant#a": 1}), sleep=sleep)
    gate.acquire(10)
    assert [key for key, _ in shared.calls] == ["limiter#unit#tenant#tenant#a", "limiter#unit"]
    assert elapsed[0] == pytest.approx(0.1)  # queued the moment its own turn came (a look at random: up to 0.25 s)


def test_a_young_invocation_gives_way_once_one_of_its_requests_was_answered(monkeypatch):
    """No batch done and under MIN_TURN_SECONDS: it keeps the worker until its first answer (progress: the answer
    is cached for the next invocation), then gives way, not after its whole first batch or 2 s."""
    import time
    import types

    from chalicelib.categorize.usage import Meter, Usage
    from chalicelib.worker import fairness

    monkeypatch.setattr(fairness, "must_yield", lambda *a, **k: True)
    meter = Meter()
    gate = types.SimpleNamespace(give_way=None)
    run = types.SimpleNamespace(backend=types.SimpleNamespace(limiter=gate, meter=meter), done=0,
                                started=time.time(), settings=types.SimpleNamespace(fair_shares=True),
                                job=types.SimpleNamespace(tenant="tenant#a", owner_id="u"))
    fairness.give_way_between_requests(run)
    assert gate.give_way(Snapshot()) is False
    meter.add(Usage(requests=1))
    assert gate.give_way(Snapshot()) is True
