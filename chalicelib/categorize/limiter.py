"""One quota for the fleet: a token bucket in DynamoDB that every model request passes.

Two buckets in one item (requests and tokens per minute) refill continuously. Their
capacity is one second of the limit, so requests leave evenly paced, as providers
enforce a minute's limit over short windows too. The provider's
x-ratelimit-remaining-* headers can only lower the levels (another client may share
the key). Each acquire is one consistent read and one write conditioned on the version
it read.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from pynamodb.exceptions import PutError

from chalicelib.tables import Control

KEY = "limiter#model-provider"


@dataclass
class SharedLimiter:
    rpm: float | None
    tpm: float | None
    burst_seconds: float = 1.0
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    waited: float = 0.0

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
        """Block until one request of `tokens` tokens fits; returns the seconds waited."""
        if not self.rpm and not self.tpm:
            return 0.0
        waited = 0.0
        while True:
            item = _read()
            now = self.clock()
            req, tok = self._levels(item, now, tokens)
            need_r = 0.0 if not self.rpm else max(0.0, (1 - req) / (self.rpm / 60.0))
            need_t = 0.0 if not self.tpm else max(0.0, (tokens - tok) / (self.tpm / 60.0))
            pause = max(need_r, need_t)
            if pause > 0:
                pause += random.uniform(0, 0.02)  # spread the fleet's wake-ups
                self.sleep(pause)
                waited += pause
                continue
            if _write(item, req - (1 if self.rpm else 0), tok - (tokens if self.tpm else 0), now):
                self.waited += waited
                return waited
            self.sleep(random.uniform(0.001, 0.01))  # another worker took tokens first: look again

    def observe(self, remaining_requests: float | None, remaining_tokens: float | None) -> None:
        """Lower the levels to what the provider says is left (never raises them)."""
        if remaining_requests is None and remaining_tokens is None:
            return
        item = _read()
        if item is None or item.level_at is None:
            return
        req, tok = self._levels(item, self.clock(), 0)
        new_r = min(req, remaining_requests) if remaining_requests is not None else req
        new_t = min(tok, remaining_tokens) if remaining_tokens is not None else tok
        if (new_r, new_t) != (req, tok):
            _write(item, new_r, new_t, self.clock())


def _read() -> Control | None:
    try:
        return Control.get(KEY, consistent_read=True)
    except Control.DoesNotExist:
        return None


def _write(item: Control | None, requests: float, tokens: float, now: float) -> bool:
    version = int(item.version) if item else 0
    # version_unchanged: two workers that read the same levels cannot both spend them.
    unchanged = (Control.version == version) if item else Control.pk.does_not_exist()
    try:
        Control(KEY, version=version + 1, level_requests=round(requests, 4), level_tokens=round(tokens, 2),
                level_at=round(now, 4)).save(condition=unchanged)
        return True
    except PutError as err:
        if err.cause_response_code == "ConditionalCheckFailedException":
            return False
        raise
