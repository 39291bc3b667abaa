"""The prefetch's parts that need no AWS (worker/prefetch.py): which lines it asks about, when its batch's
requests are seated, and its shorter wait for a turn."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from types import SimpleNamespace

from chalicelib.categorize.limiter import SharedLimiter
from chalicelib.categorize.types import Answer
from chalicelib.fair.budget import TenantGate
from chalicelib.fair.shares import Rules
from chalicelib.worker import loop, prefetch


@dataclass
class Line:
    line_id: str
    vendor: str


def test_a_prefetch_asks_about_the_first_new_vendors_past_its_batch_once_each():
    batch = [Line("1", "Acme"), Line("2", "Globex")]
    ahead = [Line("3", "ACME"), Line("4", "Initech"), Line("5", "initech "), Line("6", "Hooli"), Line("7", "Umbrella"),
             Line("8", "Stark")]
    known = {"hooli": object()}
    picked = prefetch.pick(ahead, known, batch, most=2)
    assert [line.line_id for line in picked] == ["4", "7"]  # Acme in the batch, Hooli answered, Initech once


class Blocking:
    """A limiter whose turns come when the test says."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)

    def acquire(self, *args: object) -> float:
        self.entered.release()
        self.release.wait(10)
        return 0.0


def test_seated_only_once_every_request_that_asked_has_its_turn():
    limiter = Blocking()
    seating = prefetch.Seating(limiter)
    threads = [threading.Thread(target=seating.acquire, args=(100,)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for _ in threads:
        assert limiter.entered.acquire(timeout=10)  # both requests are waiting for their turns
    assert not seating.seated.is_set()
    limiter.release.set()
    for thread in threads:
        thread.join(10)
    assert seating.seated.is_set()


def test_a_prefetch_waits_less_for_a_turn_and_a_tenants_gate_keeps_its_give_way():
    shared = SharedLimiter(120, None, wait_max=6.0, key="limiter#unit")
    assert prefetch._soon(shared, 2.0).wait_max == 2.0 and shared.wait_max == 6.0
    gate = TenantGate(shared, "tenant-a", Rules())
    gate.give_way = lambda snapshot: True
    soon = prefetch._soon(gate, 2.0)
    assert soon.limiter.wait_max == 2.0 and soon.give_way is gate.give_way and soon.tenant == "tenant-a"
    assert gate.limiter.wait_max == 6.0


def test_only_a_limiter_that_spaces_requests_is_paced():
    assert prefetch.paced(SharedLimiter(120, None))
    assert prefetch.paced(SharedLimiter(None, 10_000))
    assert not prefetch.paced(SharedLimiter(None, None, learn=True))  # nothing learned yet
    assert not prefetch.paced(None)


class Pending:
    """The previous batch's prefetch, done: it asked about `vendors` and got answers for `got`."""

    def __init__(self, vendors: set[str], got: dict[str, Answer]) -> None:
        self.vendors, self._got = frozenset(vendors), got

    def join(self) -> dict[str, Answer]:
        return self._got

    def stop(self) -> None:
        pass


def test_a_batch_takes_what_its_prefetch_got_and_asks_itself_for_the_rest_after_its_own(monkeypatch):
    asked: list[list[str]] = []

    def asks(run, scope, lines, backend):
        asked.append([line.line_id for line in lines])
        return {line.line_id: Answer("v", "Travel", 0.9, "model", False) for line in lines}

    monkeypatch.setattr(loop, "_asks", asks)
    monkeypatch.setattr(loop, "_prefetches", lambda run: False)
    meals = Answer("v0", "Meals", 0.9, "model", False)
    unsure = Answer("v1", None, 0.0, "model", True)
    run = SimpleNamespace(memo={}, prefetch=None, backend=None)
    lines = [Line("1", "Acme"), Line("2", "Globex"), Line("3", "Initech"), Line("4", "ACME"), Line("5", "Hooli")]
    # The prefetch asked about Acme, Globex and Hooli; it got Acme and a flagged Hooli, not Globex (another
    # chunk held it, or the prefetch gave up).
    pending = Pending({"acme", "globex", "hooli"}, {"acme": meals, "hooli": unsure})
    answers = loop._categorize(run, None, lines, pending)
    assert asked == [["3"], ["2"]]  # its own vendor first, then what the prefetch did not get
    assert set(answers) == {"1", "2", "3", "4", "5"}  # every line answered, once
    assert answers["1"] is answers["4"] is meals and answers["5"] is unsure and answers["2"].category == "Travel"
    assert run.memo == {"acme": meals}  # a flagged answer is not remembered (as the batch's own are not)
