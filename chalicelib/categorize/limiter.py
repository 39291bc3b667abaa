"""One quota for the fleet: a token bucket in DynamoDB that every model request passes.

Two buckets in one item (requests and tokens per minute) refill continuously. Their
capacity is one second of the limit, so requests leave evenly paced, as providers
enforce a minute's limit over short windows too. The provider's
x-ratelimit-remaining-* headers can only lower the levels (another client may share
the key), and so can a 429 that any worker meets (`hold`): the fleet waits out the
provider's window together instead of each worker finding it with a 429 of its own.
Each acquire is one consistent read and one write conditioned on the version
it read.

An acquire reserves: it takes its tokens at once, the level may go below zero, and the
request waits until the refill has paid for it (GCRA, first come first served). So the
fleet's requests queue in the order they asked, and a worker knows its wait before it
waits. A wait longer than `wait_max` is not taken: QuotaBusy tells the worker to hand its
job or chunk back to the queue and come back then, so a worker is never parked behind the
quota while other work (lines the vendor cache answers) waits for a worker.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from pynamodb.exceptions import PutError

from chalicelib.categorize.errors import QuotaBusy
from chalicelib.messages import MAX_DELAY_SECONDS
from chalicelib.tables import Control

KEY = "limiter#model-provider"
# A hold is advice to the fleet, written from a request's error path: a few tries against other workers' writes,
# then the 429 goes on without it (each worker still waits out the 429s it meets itself).
HOLD_ATTEMPTS = 10
# The longest hold: the longest delay a worker re-enqueues its work with (SQS's cap). A bogus hint (a day, a
# year) must not freeze every worker of every tenant; a window really that long is found again by the next 429.
HOLD_MAX_SECONDS = float(MAX_DELAY_SECONDS)

log = logging.getLogger(__name__)


def key_for(base_url: str | None, api_key: str) -> str:
    """One bucket per provider account: the quota belongs to the key (and the endpoint it is spent at)."""
    account = hashlib.sha256(f"{base_url or 'openai'}|{api_key}".encode()).hexdigest()[:16]
    return f"{KEY}#{account}"


@dataclass
class SharedLimiter:
    rpm: float | None
    tpm: float | None
    burst_seconds: float = 1.0
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    wait_max: float | None = None  # longest wait for a turn; beyond it, QuotaBusy (None: always wait)
    key: str = KEY  # the bucket's item: key_for(base URL, API key)

    def _capacity(self, per_minute: float, need: float) -> float:
        return max(need, per_minute / 60.0 * self.burst_seconds)

    def _levels(self, item: Control | None, now: float, tokens: float) -> tuple[float, float]:
        cap_r = self._capacity(self.rpm or 0, 1)
        cap_t = self._capacity(self.tpm or 0, tokens)
        if item is None or item.level_at is None:
            return cap_r, cap_t
        elapsed = max(0.0, now - float(item.level_at))
        req = min(cap_r, float(item.level_requests or 0) + elapsed * (self.rpm or 0) / 60.0)
        tok = min(cap_t, float(item.level_tokens or 0) + elapsed * (self.tpm or 0) / 60.0)
        return req, tok

    def acquire(self, tokens: int) -> float:
        """Reserve one request of `tokens` tokens and wait for its turn; returns the seconds waited.

        QuotaBusy, a LongWait (nothing reserved), when the turn is more than `wait_max` seconds away.
        """
        if not self.rpm and not self.tpm:
            return 0.0
        while True:
            item = _read(self.key)
            now = self.clock()
            req, tok = self._levels(item, now, tokens)
            req -= 1 if self.rpm else 0
            tok -= tokens if self.tpm else 0
            wait = max(0.0 if not self.rpm else -req / (self.rpm / 60.0),
                       0.0 if not self.tpm else -tok / (self.tpm / 60.0), 0.0)
            if self.wait_max is not None and wait > self.wait_max:
                raise QuotaBusy(wait)
            if _write(self.key, item, req, tok, now):
                if wait > 0:
                    self.sleep(wait)
                return wait
            self.sleep(random.uniform(0.001, 0.01))  # another worker reserved first: look again

    def hold(self, seconds: float, tokens: int = 0) -> None:
        """A 429 said the provider takes nothing for `seconds`: make the whole fleet wait it out.

        The levels are lowered (never raised) so that the refused request (one request of `tokens` tokens) would
        get its turn `seconds` from now: every worker's next acquire waits until then at the earliest, and the
        turns after it follow at the limit's pace from there, not as a burst when the window reopens. Turns
        already handed out stay handed out (their holders are asleep); they can only meet the 429 themselves.
        """
        if (not self.rpm and not self.tpm) or not seconds > 0:  # "not >": a NaN holds nobody
            return
        seconds = min(seconds, HOLD_MAX_SECONDS)
        for _ in range(HOLD_ATTEMPTS):
            item = _read(self.key)
            now = self.clock()
            req, tok = self._levels(item, now, tokens)
            new_r = min(req, 1 - seconds * self.rpm / 60.0) if self.rpm else req
            new_t = min(tok, tokens - seconds * self.tpm / 60.0) if self.tpm else tok
            if (new_r, new_t) == (req, tok):
                return  # the bucket already holds every worker at least that long
            # The write is conditioned on the version read (_write): a hold computed from levels that another
            # worker has since lowered by reserving a turn would raise them back and give that turn away twice.
            if _write(self.key, item, new_r, new_t, now):
                return
            self.sleep(random.uniform(0.001, 0.01))  # another worker wrote first: read again
        log.warning("could not record a %.1f s hold on %s after %d attempts", seconds, self.key, HOLD_ATTEMPTS)

    def observe(self, remaining_requests: float | None, remaining_tokens: float | None) -> None:
        """Lower the levels to what the provider says is left (never raises them)."""
        if remaining_requests is None and remaining_tokens is None:
            return
        item = _read(self.key)
        if item is None or item.level_at is None:
            return
        req, tok = self._levels(item, self.clock(), 0)
        new_r = min(req, remaining_requests) if remaining_requests is not None else req
        new_t = min(tok, remaining_tokens) if remaining_tokens is not None else tok
        if (new_r, new_t) != (req, tok):
            _write(self.key, item, new_r, new_t, self.clock())


def _read(key: str) -> Control | None:
    try:
        return Control.get(key, consistent_read=True)
    except Control.DoesNotExist:
        return None


def _write(key: str, item: Control | None, requests: float, tokens: float, now: float) -> bool:
    version = int(item.version) if item else 0
    # version_unchanged: two workers that read the same levels cannot both spend them, and a hold or an observe
    # computed from levels read before another worker's reservation cannot write over that reservation.
    unchanged = (Control.version == version) if item else Control.pk.does_not_exist()
    try:
        Control(key, version=version + 1, level_requests=round(requests, 4), level_tokens=round(tokens, 2),
                level_at=round(now, 4)).save(condition=unchanged)
        return True
    except PutError as err:
        if err.cause_response_code == "ConditionalCheckFailedException":
            return False
        raise
