"""One quota for the fleet: a pacer in DynamoDB that every model request passes, so the provider never says 429.

Providers enforce a per-minute limit over short rolling windows too (RPM/60 requests in any second, or less), so
the fleet's requests must be spaced, not only counted per minute:

- **Spacing with a margin.** Two levels in one item (requests and tokens) refill continuously at `margin` times
  the limit. The requests level holds at most one request: requests leave one interval apart, never as a burst,
  even after an idle spell. The margin is the room for jitter between a turn and the request's arrival at the
  provider: N requests paced at `margin` x N a second span 1/margin seconds, so any one of them may arrive up to
  (1/margin - 1) seconds late (53 ms at 0.95) before a rolling one-second window sees N + 1.
- **Turns are absolute times, `lead` seconds ahead.** An acquire reserves the turn (GCRA: the level may go below
  zero and the request waits until the refill has paid for it) no earlier than `lead` from now, then sleeps until
  that moment. A slow conditional write, or a retry after another worker's write, is absorbed by the lead instead
  of making the request late (a late request is one that crowds the next ones' window).
- **A 429 holds the fleet.** `hold` lowers the levels so that the next turns start when the provider's window
  reopens and follow at the pace from there, and records `held_until`; a request whose turn was handed out before
  the hold looks again just before its turn (`check_ahead`) and takes a new turn after the hold instead of
  meeting the 429 itself.
- **Learned limits.** Without OPENAI_RPM / OPENAI_TPM, the limits are the provider's x-ratelimit-limit-* headers
  (`answered`), kept in the item for the whole fleet. Until the first answer tells them, one request at a time
  goes out (a probe); the others wait for its headers. A provider that advertises no limit is not paced.
- **Tokens reserved, then settled.** An acquire reserves the request's estimated tokens (prompt plus
  max_completion_tokens); `answered` gives back what the answer's usage did not use, or takes what it used
  beyond the estimate, so the tokens-per-minute budget is neither overspent nor left idle. The provider's
  x-ratelimit-remaining-* headers can only lower the levels (another client may share the key).

A turn further away than `wait_max` is not taken: QuotaBusy tells the worker to hand its job or chunk back to the
queue and come back then, so a worker is never parked behind the quota while other work waits for a worker.
Every write is conditioned on the version read, so two workers never spend the same turn.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pynamodb.exceptions import PutError

from chalicelib.categorize.errors import QuotaBusy
from chalicelib.messages import MAX_DELAY_SECONDS
from chalicelib.tables import Control

KEY = "limiter#model-provider"
# A hold or a settlement is advice to the fleet, written from a request's answer: a few tries against other
# workers' writes, then it goes on without it (the next answer's headers correct the levels again).
WRITE_ATTEMPTS = 10
HOLD_ATTEMPTS = WRITE_ATTEMPTS
# The longest hold: the longest delay a worker re-enqueues its work with (SQS's cap). A bogus hint (a day, a
# year) must not freeze every worker of every tenant; a window really that long is found again by the next 429.
HOLD_MAX_SECONDS = float(MAX_DELAY_SECONDS)
# A turn is at least this far ahead (room for its own conditional write and a retry or two of it on a busy table,
# so the request leaves on time rather than late), and a queued turn looks for a hold this long before it is due.
# The lead covers the slowest reservations measured on the bench's busy moto (p99 0.21 s); the look-ahead covers
# the read it makes (p99 0.32 s), so neither makes a request late.
LEAD_SECONDS = 0.25
CHECK_AHEAD_SECONDS = 0.5
# The longest a request may leave after its turn: half the room a margin of 0.95 leaves (53 ms), the other half
# for the way from here to the provider (the SDK, the connection, the provider's own clock).
LATE_MAX_SECONDS = 0.025
MISSED_TURNS_MAX = 3
# The tokens level holds one second of the limit (or one request, when a request is larger than that).
TOKEN_BURST_SECONDS = 1.0
# A tenant's share (`share`) banks one more request once nobody of the tenant has taken a turn for this long: a
# small job back from idle sends its first two requests one interval apart, not one share's interval (bench part
# `fair`: tenant B's 300-line job at half the budget took ~1 s more than alone, its 3 requests at 1 a second).
# A tenant that asks without pause takes its turns as they come and never stays untouched that long.
SHARE_IDLE_SECONDS = 10.0
SHARE_IDLE_CREDIT = 1.0
# How long one request may go out alone to learn the limits before another request takes over the probe.
PROBE_SECONDS = 10.0
# The others look for the probe's answer this often: learning happens once per account (the limits stay in the
# item), and every poll of the wait adds to the ramp before the fleet's first paced turn (0.2 s cost the bench's
# job about 0.15 s more; a read of one item 20 times a second from each waiting request is nothing meanwhile).
PROBE_POLL_SECONDS = 0.05
NOT_ADVERTISED = 0.0  # a learned limit of 0: the provider's answers carry no such limit

log = logging.getLogger(__name__)


def key_for(base_url: str | None, api_key: str) -> str:
    """One item per provider account: the quota belongs to the key (and the endpoint it is spent at)."""
    account = hashlib.sha256(f"{base_url or 'openai'}|{api_key}".encode()).hexdigest()[:16]
    return f"{KEY}#{account}"


@dataclass(frozen=True)
class Limits:
    rpm: float | None
    tpm: float | None


@dataclass
class SharedLimiter:
    rpm: float | None  # configured limits (OPENAI_RPM / OPENAI_TPM); None: learned when `learn`, else unlimited
    tpm: float | None
    margin: float = 1.0  # the share of the limit the fleet paces at (OPENAI_LIMIT_MARGIN)
    lead: float = 0.0  # a turn is never sooner than this: room for the reservation's own write
    check_ahead: float = 0.0  # look for a hold this long before a queued turn (0: do not look)
    late_max: float | None = None  # a turn missed by more than this is given up for a new one (None: never)
    learn: bool = False  # learn missing limits from the x-ratelimit-limit-* headers
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    wait_max: float | None = None  # longest wait for a turn; beyond it, QuotaBusy (None: always wait)
    key: str = KEY  # the item: key_for(base URL, API key)
    idle_credit: float = 0.0  # requests the level banks beyond one, once untouched SHARE_IDLE_SECONDS (`share`)
    # The learned limits as last read (for `share`); not copied by dataclasses.replace.
    _last_learned: tuple[float, float] | None = field(default=None, init=False, repr=False, compare=False)
    # This instance's last reservation spent a turn banked beyond one (`idle_credit`: a tenant back from idle).
    credited: bool = field(default=False, init=False, repr=False, compare=False)

    @property
    def paced(self) -> bool:
        """Requests are spaced: a limit configured, or learned as last read (a provider advertising none is not)."""
        return bool(self.rpm or self.tpm or (self._last_learned and any(self._last_learned)))

    def share(self, fraction: float, key: str) -> SharedLimiter:
        """A bucket of its own (at `key`) for `fraction` of this limiter's limits, configured or as last learned:
        a tenant's share of the fleet's turns (fair/budget.TenantGate). It only keeps accounts: its turns are not
        sent (no lead, no look-ahead, no missed turns), and it learns nothing itself (it hears of no answer).
        Before anything is learned it is no limit: every request then queues at this limiter alone. A tenant back
        from idle has SHARE_IDLE_CREDIT more (the shared bucket never has: its turns reach the provider)."""
        rpm, tpm = self.rpm, self.tpm
        if self.learn and self._last_learned is not None:
            rpm, tpm = rpm or self._last_learned[0] or None, tpm or self._last_learned[1] or None
        return replace(self, key=key, rpm=rpm * fraction if rpm else None, tpm=tpm * fraction if tpm else None,
                       learn=False, lead=0.0, check_ahead=0.0, late_max=None, idle_credit=SHARE_IDLE_CREDIT)

    def limits(self, item: Control | None, changes: Mapping[str, Any] | None = None) -> Limits | None:
        """The limits the fleet paces at (the margin applied): configured ones, else learned ones (in `item`,
        with `changes` about to be written); None while a limit is still to be learned."""
        def learned(name: str) -> float | None:
            return changes[name] if changes and name in changes else getattr(item, name, None)

        known = self.learn and learned("learned_rpm") is not None
        if self.learn and not known and not self.rpm and not self.tpm:
            return None
        if known:
            self._last_learned = (float(learned("learned_rpm") or 0), float(learned("learned_tpm") or 0))
        rpm = self.rpm or (float(learned("learned_rpm") or 0) if known else 0.0)
        tpm = self.tpm or (float(learned("learned_tpm") or 0) if known else 0.0)
        return Limits(rpm * self.margin or None, tpm * self.margin or None)

    def _levels(self, item: Control | None, limits: Limits, now: float, tokens: float) -> tuple[float, float, float]:
        """The levels at `now` (or at the item's time, if another worker wrote a later one) and that time."""
        cap_t = max(tokens, (limits.tpm or 0) / 60.0 * TOKEN_BURST_SECONDS)
        if item is None or item.level_at is None:
            return 1.0 + self.idle_credit, cap_t, now
        at = max(now, float(item.level_at))
        elapsed = at - float(item.level_at)
        level = float(item.level_requests or 0)
        # One request, or the idle credit once untouched that long; a credit banked but not yet spent stays.
        cap_r = 1.0 + self.idle_credit if elapsed >= SHARE_IDLE_SECONDS else max(1.0, level)
        req = min(cap_r, level + elapsed * (limits.rpm or 0) / 60.0)
        tok = min(cap_t, float(item.level_tokens or 0) + elapsed * (limits.tpm or 0) / 60.0)
        return req, tok, at

    def acquire(self, tokens: int) -> float:
        """Reserve one request of `tokens` tokens and wait for its turn; returns the seconds waited.

        QuotaBusy, a LongWait (nothing reserved), when the turn is more than `wait_max` seconds away.
        """
        if not self.rpm and not self.tpm and not self.learn:
            return 0.0
        started, attempt = self.clock(), 0
        while True:
            turn = self._reserve(tokens, started)
            if turn is None:
                return max(0.0, self.clock() - started)
            if self._sit_out(turn, last=attempt >= MISSED_TURNS_MAX):
                return max(0.0, turn - started)
            attempt += 1

    def _reserve(self, tokens: int, started: float) -> float | None:
        """The absolute time of this request's turn, reserved; None when no limit applies (or it is the probe)."""
        while True:
            item = _read(self.key)
            now = self.clock()
            limits = self.limits(item)
            # No pace to keep (a probe, or a provider that advertises no limit) still waits out a 429's hold.
            held = _number(item, "held_until")
            if limits is None:
                if self._probe(item, now, started):
                    return held if held > now else None
                continue
            if not limits.rpm and not limits.tpm:
                return held if held > now else None
            req, tok, at = self._levels(item, limits, now + self.lead, tokens)
            self.credited = bool(self.idle_credit and limits.rpm and req > 1.0 + 1e-6)
            req -= 1 if limits.rpm else 0
            tok -= tokens if limits.tpm else 0
            wait = max(0.0 if not limits.rpm else -req / (limits.rpm / 60.0),
                       0.0 if not limits.tpm else -tok / (limits.tpm / 60.0), 0.0)
            turn = max(at + wait, held)
            # The lead is no wait for the quota: `wait_max` counts from the soonest a turn can be.
            if self.wait_max is not None and turn - now - self.lead > self.wait_max:
                raise QuotaBusy(turn - now)
            if _write(self.key, item, level_requests=req, level_tokens=tok, level_at=at):
                return turn
            self.sleep(random.uniform(0.001, 0.01))  # another worker reserved first: look again

    def _probe(self, item: Control | None, now: float, started: float) -> bool:
        """No limit known yet: True when this request goes out alone to learn it; else wait for the probe's answer."""
        if _number(item, "probe_until") <= now:
            return _write(self.key, item, probe_until=now + PROBE_SECONDS)
        if self.wait_max is not None and now - started + PROBE_POLL_SECONDS > self.wait_max:
            raise QuotaBusy(PROBE_POLL_SECONDS)
        self.sleep(PROBE_POLL_SECONDS * random.uniform(0.5, 1.5))
        return False

    def _sit_out(self, turn: float, last: bool = False) -> bool:
        """Sleep until `turn`; False when the request must not go on it and needs a new turn: a hold recorded
        meanwhile covers it, or the request would leave more than `late_max` after it (a late request crowds the
        window of the requests paced after it; its turn is left unused instead). The `last` turn is taken however
        late: a machine too busy to keep any turn still gets its requests out, at the pace of its turns."""
        pause = turn - self.clock()
        if self.check_ahead and pause > self.check_ahead:
            self.sleep(pause - self.check_ahead)
            if _number(_read(self.key), "held_until") > turn:
                return False
            pause = turn - self.clock()
        if pause > 0:
            self.sleep(pause)
        late = self.clock() - turn
        if self.late_max is not None and late > self.late_max and not last:
            log.info("a turn was missed by %.3f s; the request takes a new one", late)
            return False
        return True

    def hold(self, seconds: float, tokens: int = 0) -> None:
        """A 429 said the provider takes nothing for `seconds`: make the whole fleet wait it out.

        The levels are lowered (never raised) so that the refused request (one request of `tokens` tokens) would
        get its turn `seconds` from now: every worker's next acquire waits until then at the earliest, and the
        turns after it follow at the limit's pace from there, not as a burst when the window reopens. Turns
        already handed out see `held_until` just before they are due and take a new turn after it.
        """
        if not seconds > 0:  # "not >": a NaN holds nobody
            return
        seconds = min(seconds, HOLD_MAX_SECONDS)
        for _ in range(HOLD_ATTEMPTS):
            item = _read(self.key)
            now = self.clock()
            limits = self.limits(item)
            until = now + seconds
            changes: dict[str, float] = {}
            if _number(item, "held_until") < until:
                changes["held_until"] = until
            if limits is not None and (limits.rpm or limits.tpm):
                req, tok, at = self._levels(item, limits, now, tokens)
                new_r = min(req, 1 - (until - at) * limits.rpm / 60.0) if limits.rpm else req
                new_t = min(tok, tokens - (until - at) * limits.tpm / 60.0) if limits.tpm else tok
                if (new_r, new_t) != (req, tok):
                    changes.update(level_requests=new_r, level_tokens=new_t, level_at=at)
            if not changes:
                return  # the item already holds every worker at least that long
            # Conditioned on the version read (_write): a hold computed from levels that another worker has since
            # lowered by reserving a turn would raise them back and give that turn away twice.
            if _write(self.key, item, **changes):
                return
            self.sleep(random.uniform(0.001, 0.01))  # another worker wrote first: read again
        log.warning("could not record a %.1f s hold on %s after %d attempts", seconds, self.key, HOLD_ATTEMPTS)

    def answered(self, headers: Mapping[str, str] | None, reserved: int = 0, used: int | None = None,
                 ok: bool = True) -> None:
        """What an answer tells the fleet: the limits it advertises (learned), what is left (the levels are
        lowered to it), and, with `used` (the answer's usage), the settlement of the `reserved` tokens.

        `ok`: the provider answered the request (a 200). Only then does an answer without limit headers teach
        that the provider advertises none; an error page without them (a proxy's 502) teaches nothing.
        """
        seen = _advertised(headers)
        for _ in range(WRITE_ATTEMPTS):
            item = _read(self.key)
            now = self.clock()
            changes = self._learned(item, seen, ok)
            limits = self.limits(item, changes)
            if limits is not None and item is not None and item.level_at is not None:
                req, tok, at = self._levels(item, limits, now, reserved)
                new_r, new_t = req, tok
                if used is not None and limits.tpm:
                    # Up to the level's capacity (a reservation larger than it cannot bank a burst by settling).
                    new_t = min(max(tok, limits.tpm / 60.0 * TOKEN_BURST_SECONDS), tok + reserved - used)
                if seen.remaining_requests is not None and limits.rpm:
                    new_r = min(new_r, seen.remaining_requests)
                if seen.remaining_tokens is not None and limits.tpm:
                    new_t = min(new_t, seen.remaining_tokens)
                if (new_r, new_t) != (req, tok):
                    changes.update(level_requests=new_r, level_tokens=new_t, level_at=at)
            if not changes or _write(self.key, item, **changes):
                return
            self.sleep(random.uniform(0.001, 0.01))
        log.warning("could not record an answer's limits on %s after %d attempts", self.key, WRITE_ATTEMPTS)

    def _learned(self, item: Control | None, seen: _Seen, ok: bool) -> dict[str, float | None]:
        """The item's changes that learning makes from one answer's headers (none when nothing new)."""
        if not self.learn or (self.rpm and self.tpm):
            return {}
        if seen.limit_requests is None and seen.limit_tokens is None and not ok:
            # Nothing to learn: only let the next request probe, if this one was the probe.
            return {"probe_until": None} if _number(item, "probe_until") else {}
        rpm = seen.limit_requests or NOT_ADVERTISED
        tpm = seen.limit_tokens or NOT_ADVERTISED
        if item is not None and (_number(item, "learned_rpm"), _number(item, "learned_tpm")) == (rpm, tpm) \
                and item.learned_rpm is not None:
            return {}
        return {"learned_rpm": rpm, "learned_tpm": tpm, "probe_until": None}


@dataclass(frozen=True)
class _Seen:
    limit_requests: float | None = None
    limit_tokens: float | None = None
    remaining_requests: float | None = None
    remaining_tokens: float | None = None


def _advertised(headers: Mapping[str, str] | None) -> _Seen:
    if headers is None:
        return _Seen()

    def number(name: str) -> float | None:
        try:
            value = float(headers.get(name) or "nan")
        except ValueError:
            return None
        return value if math.isfinite(value) and value >= 0 else None

    return _Seen(number("x-ratelimit-limit-requests"), number("x-ratelimit-limit-tokens"),
                 number("x-ratelimit-remaining-requests"), number("x-ratelimit-remaining-tokens"))


# The limiter's attributes of its Control item: a write carries every one of them over (a save replaces the item).
FIELDS = ("level_requests", "level_tokens", "level_at", "learned_rpm", "learned_tpm", "probe_until", "held_until")


def _number(item: Control | None, name: str) -> float:
    value = getattr(item, name, None) if item is not None else None
    return float(value) if value is not None else 0.0


def _read(key: str) -> Control | None:
    try:
        return Control.get(key, consistent_read=True)
    except Control.DoesNotExist:
        return None


def _write(key: str, item: Control | None, **changes: float | None) -> bool:
    version = int(item.version) if item else 0
    values = {name: getattr(item, name, None) for name in FIELDS} if item is not None else {}
    values.update(changes)
    rounding = {"level_requests": 4, "level_tokens": 2}
    values = {name: (round(value, rounding.get(name, 4)) if value is not None else None)
              for name, value in values.items()}
    # version_unchanged: two workers that read the same levels cannot both spend them, and a hold or a settlement
    # computed from levels read before another worker's reservation cannot write over that reservation.
    unchanged = (Control.version == version) if item else Control.pk.does_not_exist()
    new = Control(key, version=version + 1)
    for name, value in values.items():
        setattr(new, name, value)
    try:
        new.save(condition=unchanged)
        return True
    except PutError as err:
        if err.cause_response_code == "ConditionalCheckFailedException":
            return False
        raise
