"""OpenAI-compatible provider simulator for tests, benchmarks and local runs (development only, never deployed).

It answers `POST /v1/chat/completions` the way the categorize workers call it (strict json_schema, the items as
a JSON array in the last user message) with deterministic keyword categories. It also behaves the way a real
provider does when clients get things wrong: per-minute token buckets for requests and tokens plus a short-window
burst limit, 429s with retry-after and x-ratelimit-* headers, and opt-in faults (5xx, timeouts, malformed or
incomplete answers, exhausted quota, bad key) drawn from a seeded RNG so runs can be reproduced.

    sim = Simulator(rpm=600, latency=0.2).start()
    client = openai.OpenAI(base_url=sim.url, api_key="test", max_retries=0)
    ...
    assert sim.stats()["early_retries"] == 0   # nobody sent before a returned retry-after had elapsed
    sim.stop()

From another process: `python -m local.simulator --port 8100 --rpm 600`, then GET /_sim/stats,
POST /_sim/config (JSON body of changes) and POST /_sim/reset.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import re
import signal
import socket
import sys
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

DEFAULT_TAXONOMY = [
    "Airfare", "Lodging", "Ground Transportation", "Meals & Entertainment", "Office Supplies",
    "Software & Subscriptions", "Telecommunications", "Training & Education", "Shipping & Postage", "Other",
]

# Category keywords, matched as whole words (a trailing "s" is allowed) so that "inn" does not hit "dinner".
KEYWORDS: dict[str, tuple[str, ...]] = {
    "Airfare": ("airline", "airways", "air", "delta", "united", "flight", "airfare", "southwest", "jetblue",
                "lufthansa", "american airlines"),
    "Lodging": ("hotel", "marriott", "hilton", "inn", "airbnb", "hyatt", "motel", "resort", "lodging"),
    "Ground Transportation": ("uber", "lyft", "taxi", "cab", "parking", "train", "rail", "amtrak", "metro", "toll",
                              "hertz", "avis", "car rental"),
    "Meals & Entertainment": ("restaurant", "cafe", "coffee", "starbucks", "bar", "grill", "pizza", "diner",
                              "dinner", "lunch", "breakfast", "bistro", "doordash", "grubhub", "uber eats"),
    "Office Supplies": ("staples", "office depot", "officemax", "paper", "toner", "stationery", "office supplies"),
    "Software & Subscriptions": ("aws", "github", "slack", "zoom", "software", "adobe", "microsoft", "atlassian",
                                 "dropbox", "subscription", "amazon web services"),
    "Telecommunications": ("verizon", "at&t", "comcast", "phone", "mobile", "wireless", "internet", "vodafone"),
    "Training & Education": ("udemy", "coursera", "course", "training", "conference", "seminar", "workshop",
                             "webinar", "tuition"),
    "Shipping & Postage": ("fedex", "ups", "usps", "dhl", "shipping", "postage", "courier", "united parcel"),
}
# Longer phrases first ("uber eats" before "uber", "united parcel" before "united"); ties keep table order.
_RULES = sorted(((kw, cat) for cat, kws in KEYWORDS.items() for kw in kws), key=lambda rule: -len(rule[0].split()))
KEYWORD_CONFIDENCE = 0.95
FALLBACK_CONFIDENCE = 0.6
LOG_LIMIT = 10_000


# ---------------------------------------------------------------------------------------------------------------
# Configuration: one dataclass is the single source for defaults, validation, configure(), HTTP and CLI flags.


def _optional_float(value: Any) -> float | None:
    return None if value in (None, "", "none", "None") else float(value)


def _flag(value: Any) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on") if isinstance(value, str) else bool(value)


def _names(value: Any) -> list[str] | None:
    if value in (None, ""):
        return None
    parts = value.split(",") if isinstance(value, str) else value
    return [str(p).strip() for p in parts if str(p).strip()]


def _knob(default: Any, parse: Callable[[Any], Any], help_text: str) -> Any:
    return field(default=default, metadata={"parse": parse, "help": help_text})


@dataclass(frozen=True)
class SimConfig:
    models: list[str] | None = _knob(None, _names, "accepted model names (comma list); None accepts any")
    latency: float = _knob(0.0, float, "seconds each answered request takes (requests run concurrently)")
    rpm: float | None = _knob(None, _optional_float, "requests per minute; None is unlimited")
    tpm: float | None = _knob(None, _optional_float, "tokens per minute; None is unlimited")
    burst_seconds: float | None = _knob(1.0, _optional_float, "short window of the request limit: at most "
                                        "rpm/60*burst_seconds requests at once; None disables it")
    window_seconds: float | None = _knob(None, _optional_float, "enforce the request limit over rolling windows "
                                         "instead, as real providers do: at most rpm/60*window_seconds requests "
                                         "in any window of this many seconds (replaces burst_seconds); None: off")
    settle_tokens: bool = _knob(False, _flag, "when a request is answered, give back to the tokens-per-minute bucket "
                                "what its charge (prompt estimate + max_completion_tokens) exceeded its usage")
    early_grace: float = _knob(0.05, float, "seconds after a 429 during which arrivals are in-flight, not early")
    seed: int = _knob(0, int, "seed of the fault RNGs")
    fail_first: int = _knob(0, int, "answer the first N requests with fail_status")
    fail_status: int = _knob(500, int, "status used by fail_first")
    rate_limit_burst: int = _knob(0, int, "answer the next N requests 429 with retry-after burst_retry_after")
    burst_retry_after: float = _knob(1.0, float, "retry-after seconds of rate_limit_burst and p429 answers")
    p429: float = _knob(0.0, float, "probability of a 429 rate_limit_exceeded")
    p500: float = _knob(0.0, float, "probability of a 500")
    ptimeout: float = _knob(0.0, float, "probability of sleeping timeout_seconds before answering")
    timeout_seconds: float = _knob(30.0, float, "sleep of the ptimeout fault")
    pmalformed: float = _knob(0.0, float, "probability that the content is not valid JSON")
    pmissing: float = _knob(0.0, float, "probability that one item is left out of the answer")
    pbadcategory: float = _knob(0.0, float, "probability that one item gets a category outside the enum")
    pbadrow: float = _knob(0.0, float, "probability that one item's row has an id or category that is not a string "
                           "(a list, an object, a number or null)")
    badrow_vendors: list[str] | None = _knob(None, _names, "vendors (comma list, any case) whose rows always come "
                                             "back with an id or category that is not a string")
    prefusal: float = _knob(0.0, float, "probability that the model refuses (message.refusal set, content null)")
    refusal_vendors: list[str] | None = _knob(None, _names, "vendors (comma list, any case): a request asking "
                                              "about any of them is always refused")
    quota_exhausted: bool = _knob(False, _flag, "answer 429 insufficient_quota (no retry-after)")
    pflex_unavailable: float = _knob(0.0, float, "probability that a service_tier=flex request is answered 429 "
                                     "resource_unavailable (flex has no capacity; a client falls back to standard)")
    cache_min_tokens: int = _knob(1024, int, "smallest prompt prefix the prompt cache keeps (OpenAI: 1024 tokens)")
    batch_delay: float = _knob(2.0, float, "seconds from a batch's creation to its completion")
    batch_expire_after: float | None = _knob(None, _optional_float, "seconds after which a batch not yet complete "
                                             "expires: the requests done by then are answered, the rest expired")
    batch_failed_ids: list[str] | None = _knob(None, _names, "custom_ids (comma list) a batch answers with an error")
    batch_cancel_answered: float = _knob(0.0, float, "share of a cancelled batch's requests answered before the "
                                         "cancel reached them (kept in its output file, billed, as OpenAI does)")
    auth_error: bool = _knob(False, _flag, "answer 401 invalid_api_key")

    def __post_init__(self) -> None:
        for name in ("p429", "p500", "ptimeout", "pmalformed", "pmissing", "pbadcategory", "pbadrow", "prefusal",
                     "pflex_unavailable", "batch_cancel_answered"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability between 0 and 1")
        for name in ("rpm", "tpm"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1 (or None for unlimited)")
        if self.window_seconds is not None and not self.window_seconds > 0:
            raise ValueError("window_seconds must be positive (or None for off)")
        for name in ("latency", "early_grace", "timeout_seconds", "burst_retry_after", "fail_first",
                     "rate_limit_burst"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")

    def with_changes(self, changes: dict[str, Any]) -> SimConfig:
        knobs = {f.name: f for f in fields(self)}
        unknown = sorted(set(changes) - set(knobs))
        if unknown:
            raise ValueError(f"unknown simulator setting(s): {', '.join(unknown)}")
        return replace(self, **{k: knobs[k].metadata["parse"](v) for k, v in changes.items()})


# ---------------------------------------------------------------------------------------------------------------
# The model's answers.


def categorize(vendor: str, description: str, categories: list[str]) -> tuple[str, float]:
    """Keyword category (vendor first, then description) if it is allowed, else a stable hash-based pick."""
    for text in (vendor, description):
        padded = " " + " ".join(re.findall(r"[a-z0-9&]+", text.lower())) + " "
        for keyword, category in _RULES:
            if category in categories and (f" {keyword} " in padded or f" {keyword}s " in padded):
                return category, KEYWORD_CONFIDENCE
    digest = hashlib.sha256(f"{vendor}|{description}".lower().encode()).digest()
    return categories[int.from_bytes(digest[:8], "big") % len(categories)], FALLBACK_CONFIDENCE


def taxonomy_from(body: dict[str, Any]) -> list[str]:
    """The category enum of the request's json_schema, or the default taxonomy when there is none.

    The row schema may be inline or, as the openai SDK writes a pydantic model (`chat.completions.parse`), a local
    `$ref` into the schema's `$defs`.
    """
    try:
        schema = body["response_format"]["json_schema"]["schema"]
        row = _resolve(schema, schema["properties"]["items"]["items"])
        enum = _resolve(schema, row["properties"]["category"])["enum"]
    except (KeyError, TypeError):
        return list(DEFAULT_TAXONOMY)
    names = [str(c) for c in enum] if isinstance(enum, list) else []
    return names or list(DEFAULT_TAXONOMY)


def _resolve(root: dict[str, Any], node: Any) -> Any:
    """`node`, or what its local `$ref` ("#/$defs/Row") points to in `root`."""
    ref = node.get("$ref") if isinstance(node, dict) else None
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return node
    for part in ref[2:].split("/"):
        root = root[part]
    return root


def items_from(messages: Any) -> list[dict[str, str]]:
    """The JSON array of the last user message; anything unparseable counts as no items."""
    messages = messages if isinstance(messages, list) else []
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    content = users[-1].get("content") if users else None
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    try:
        data = json.loads(content) if isinstance(content, str) else None
    except ValueError:
        return []
    rows = data.get("items") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        return []
    return [{"id": str(r.get("id", n)), "vendor": str(r.get("vendor") or ""),
             "description": str(r.get("description") or "")} for n, r in enumerate(rows) if isinstance(r, dict)]


def format_duration(seconds: float) -> str:
    """OpenAI's reset format: '120ms', '1.5s', '1m30s'."""
    ms = math.ceil(max(0.0, seconds) * 1000)
    if ms < 1000:
        return f"{ms}ms"
    minutes, rest = divmod(ms, 60_000)
    secs = f"{rest / 1000:g}s"
    return f"{minutes}m{secs}" if minutes else secs


@dataclass
class ChatRequest:
    model: str
    messages: list[Any]
    items: list[dict[str, str]]
    taxonomy: list[str]
    tokens: int  # estimate charged to the tokens-per-minute bucket
    problem: str | None = None  # why the request is invalid (400)
    flex: bool = False  # service_tier "flex"
    cache_key: str = ""  # prompt_cache_key

    @classmethod
    def parse(cls, body: dict[str, Any]) -> ChatRequest:
        messages = body.get("messages")
        items = items_from(messages)
        wanted = body.get("max_completion_tokens") or body.get("max_tokens") or 50 * len(items)
        prompt = len(json.dumps(messages)) // 4
        problem = None
        if not body.get("model"):
            problem = "you must provide a model parameter"
        elif not isinstance(messages, list) or not messages:
            problem = "'messages' must be a non-empty array"
        elif body.get("stream"):
            problem = "stream=true is not supported by the simulator"
        return cls(str(body.get("model") or ""), messages if isinstance(messages, list) else [], items,
                   taxonomy_from(body), max(1, prompt + int(wanted)), problem, body.get("service_tier") == "flex",
                   str(body.get("prompt_cache_key") or ""))


# ---------------------------------------------------------------------------------------------------------------
# Rate limits.


class TokenBucket:
    """Refills continuously at `rate` per second up to `capacity`."""

    def __init__(self, capacity: float, rate: float, now: float) -> None:
        self.capacity, self.rate, self.level, self.updated = capacity, rate, capacity, now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait(self, cost: float, now: float) -> float:
        """Seconds until `cost` fits (0 when it fits now)."""
        self.refill(now)
        return 0.0 if self.level >= cost - 1e-9 else (cost - self.level) / self.rate

    def take(self, cost: float, now: float) -> None:
        self.level -= cost

    def give_back(self, amount: float, now: float) -> None:
        self.refill(now)
        self.level = min(self.capacity, self.level + amount)


class RollingWindow:
    """At most `capacity` requests in any window of `seconds`: a log of the arrivals it let through.

    Stricter than a bucket of the same size: a bucket refilled at the limit's rate lets a request through as soon
    as a fraction of the window has passed, where a rolling window counts every arrival of the last `seconds`. So
    a client that paces exactly at the limit, or sends a burst when a bucket would be full, meets 429s here.
    """

    def __init__(self, per_minute: float, seconds: float) -> None:
        self.seconds = seconds
        self.capacity = max(1, math.floor(per_minute / 60.0 * seconds + 1e-9))
        self.arrivals: deque[float] = deque()

    def _expire(self, now: float) -> None:
        while self.arrivals and self.arrivals[0] <= now - self.seconds:
            self.arrivals.popleft()

    def wait(self, cost: float, now: float) -> float:
        self._expire(now)
        if len(self.arrivals) + cost <= self.capacity:
            return 0.0
        # The arrival whose leaving makes room: the window then holds capacity - cost of the newest.
        return self.arrivals[len(self.arrivals) - int(self.capacity - cost) - 1] + self.seconds - now

    def take(self, cost: float, now: float) -> None:
        self.arrivals.extend([now] * int(cost))


class Limiter:
    """One provider limit ("requests" or "tokens"): a per-minute bucket, plus for requests the short window
    real providers enforce without advertising it (headers show the minute bucket only): a bucket of
    burst_seconds of the limit, or, with window_seconds, a rolling window."""

    def __init__(self, kind: str, per_minute: float, burst_seconds: float | None, now: float,
                 window_seconds: float | None = None) -> None:
        self.kind, self.limit = kind, per_minute
        rate = per_minute / 60.0
        self.minute = TokenBucket(per_minute, rate, now)
        self.buckets: list[TokenBucket | RollingWindow] = [self.minute]
        if kind == "requests" and window_seconds:
            self.buckets.append(RollingWindow(per_minute, window_seconds))
        elif kind == "requests" and burst_seconds:
            self.buckets.append(TokenBucket(max(1.0, rate * burst_seconds), rate, now))

    def too_large(self, cost: float) -> bool:
        return cost > min(b.capacity for b in self.buckets)

    def wait(self, cost: float, now: float) -> float:
        return max(b.wait(cost, now) for b in self.buckets)

    def take(self, cost: float, now: float) -> None:
        for bucket in self.buckets:
            bucket.take(cost, now)

    def headers(self, now: float) -> dict[str, str]:
        self.minute.refill(now)
        remaining = max(0, math.floor(self.minute.level + 1e-9))
        reset = (self.minute.capacity - self.minute.level) / self.minute.rate
        return {f"x-ratelimit-limit-{self.kind}": str(int(self.limit)),
                f"x-ratelimit-remaining-{self.kind}": str(remaining),
                f"x-ratelimit-reset-{self.kind}": format_duration(reset)}


def retry_headers(wait: float) -> dict[str, str]:
    return {"retry-after": str(max(1, math.ceil(wait))), "retry-after-ms": str(max(1, math.ceil(wait * 1000)))}


# ---------------------------------------------------------------------------------------------------------------
# Replies and statistics.


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None  # a body that is not JSON (a file's content), sent as is
    fault: str | None = None  # which fault or limit produced it, for the stats
    rate_limited: bool = False  # a 429 rate_limit_exceeded (not insufficient_quota)


def error_reply(status: int, message: str, type_: str, code: str | None, **extra: Any) -> Reply:
    return Reply(status, {"error": {"message": message, "type": type_, "param": None, "code": code}}, **extra)


@dataclass
class AnswerFaults:
    timeout: bool = False
    malformed: bool = False
    missing: int | None = None  # index of the item left out
    badcategory: int | None = None  # index of the item given a category outside the enum
    badrows: dict[int, int] = field(default_factory=dict)  # index of an item -> which BAD_ROWS spoils its row
    refusal: bool = False

    def names(self) -> list[str]:
        return [name for name, value in asdict(self).items() if value not in (False, None, {})]


# Rows a model's structured output should never hold, but a provider without strict decoding (or a proxy in front
# of one) can return: an id or category that is not a string. A client must take each as a bad answer.
BAD_ROWS: tuple[tuple[str, Any], ...] = (
    ("id", ["list"]), ("category", ["list"]), ("id", {"object": 1}), ("category", {"object": 1}),
    ("id", 7), ("category", 7), ("id", None), ("category", None),
)
REFUSAL = "I'm sorry, I can't help with that request."


class Stats:
    """Counters of one run (since construction or reset). Callers hold the simulator lock.

    A request is recorded when it is decided (at arrival), so `ok` includes answers still sleeping on latency.
    `rate_limited` counts 429 rate_limit_exceeded answers (limits and injected 429s, not insufficient_quota).
    `max_requests_in_any_60s_window` counts non-429 arrivals; with token buckets it can reach rpm plus the
    burst capacity (610 at rpm=600 with burst_seconds=1), as with a real provider's bucket.
    """

    def __init__(self, now: float) -> None:
        self.started, self.started_at = now, time.time()
        self.requests = self.ok = self.rate_limited = self.items = self.items_answered = self.early_retries = 0
        self.prompt_tokens = self.completion_tokens = self.cached_tokens = 0
        self.flex_unavailable = 0
        self.charged_tokens = 0  # what accepted requests took from the tokens-per-minute bucket (prompt + budget)
        self.settled_tokens = 0  # what answers gave back of it (settle_tokens)
        self.status_counts: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.by_vendor: Counter[str] = Counter()
        self.answered_by_vendor: Counter[str] = Counter()
        self.log: deque[dict[str, Any]] = deque(maxlen=LOG_LIMIT)
        self._window: deque[float] = deque()  # accepted arrivals of the last 60 s
        self.max_window = 0

    def record(self, now: float, req: ChatRequest, status: int, *, early: bool, rate_limited: bool,
               faults: list[str]) -> None:
        vendors = [item["vendor"].lower() for item in req.items]
        self.requests += 1
        self.items += len(vendors)
        self.by_vendor.update(vendors)
        self.status_counts[str(status)] += 1
        self.faults.update(faults)
        self.early_retries += early
        if status == 200:
            self.ok += 1
            self.charged_tokens += req.tokens
            self.items_answered += len(vendors)
            self.answered_by_vendor.update(vendors)
        if status != 429:
            self._accept(now)
        self.rate_limited += rate_limited
        self.log.append({"t": round(now - self.started, 6), "status": status, "rate_limited": rate_limited,
                         "items": len(vendors), "model": req.model, "early": early, "faults": faults})

    def _accept(self, now: float) -> None:
        # Arrivals are recorded under the lock, so they come in order: a deque is a sliding window.
        self._window.append(now)
        while self._window[0] <= now - 60.0:
            self._window.popleft()
        self.max_window = max(self.max_window, len(self._window))

    def snapshot(self, now: float, include_log: bool) -> dict[str, Any]:
        out = {"requests": self.requests, "ok": self.ok, "status_counts": dict(self.status_counts),
               "rate_limited": self.rate_limited, "items": self.items, "items_answered": self.items_answered,
               "early_retries": self.early_retries, "max_requests_in_any_60s_window": self.max_window,
               "requests_by_vendor": dict(self.by_vendor), "answered_by_vendor": dict(self.answered_by_vendor),
               "faults": dict(self.faults),
               "tokens": {"prompt": self.prompt_tokens, "completion": self.completion_tokens,
                          "charged": self.charged_tokens, "cached": self.cached_tokens,
                          "settled": self.settled_tokens},
               "flex_unavailable": self.flex_unavailable,
               "started_at": self.started_at, "elapsed": round(now - self.started, 6)}
        if include_log:
            out["log"] = list(self.log)
        return out


# ---------------------------------------------------------------------------------------------------------------
# The simulator.


class Simulator:
    """An OpenAI-compatible HTTP server on a daemon thread. Config names: see SimConfig."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **config: Any) -> None:
        self.host, self.port = host, port
        self._config = SimConfig().with_changes(config)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._sequence = 0
        self._reset_locked()

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> Simulator:
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server((self.host, self.port), self)
        self.port = self._server.server_address[1]
        # A short poll interval keeps stop() fast (shutdown() waits for the loop to notice).
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name=f"simulator:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # wakes handlers sleeping on latency or timeout faults
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def root_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the simulator is not started")
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The base_url for openai.OpenAI."""
        return self.root_url + "/v1"

    # -- control -----------------------------------------------------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        return asdict(self._config)

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Apply config changes; returns the resulting config. Limits are rebuilt (full) when they change and
        fail_first / rate_limit_burst are re-armed when given."""
        with self._lock:
            self._config = self._config.with_changes(changes)
            if {"rpm", "tpm", "burst_seconds", "window_seconds"} & set(changes):
                self._limiters = self._build_limiters(time.monotonic())
            if "seed" in changes:
                self._rngs.clear()
            if "fail_first" in changes:
                self._fail_first_left = self._config.fail_first
            if "rate_limit_burst" in changes:
                self._burst_left = self._config.rate_limit_burst
            return asdict(self._config)

    def reset(self) -> None:
        """Back to the state right after start: counters cleared, buckets full, faults re-armed, RNGs re-seeded."""
        with self._lock:
            self._reset_locked()

    def stats(self, include_log: bool = True) -> dict[str, Any]:
        with self._lock:
            return self._stats.snapshot(time.monotonic(), include_log)

    def _reset_locked(self) -> None:
        now = time.monotonic()
        self._stats = Stats(now)
        self._limiters = self._build_limiters(now)
        self._rngs: dict[str, random.Random] = {}
        self._fail_first_left = self._config.fail_first
        self._burst_left = self._config.rate_limit_burst
        self._prefixes: OrderedDict[tuple[str, str], None] = OrderedDict()  # the prompt cache (see _cached)
        from local.sim_batches import Batches

        self.batches = Batches(self)
        # limiter -> (first 429 of the open window, moment its retry-after elapses)
        self._retry_windows: dict[str, tuple[float, float]] = {}

    def _build_limiters(self, now: float) -> list[Limiter]:
        cfg = self._config
        limits = (("requests", cfg.rpm), ("tokens", cfg.tpm))
        return [Limiter(kind, limit, cfg.burst_seconds, now, cfg.window_seconds)
                for kind, limit in limits if limit is not None]

    # -- routing -----------------------------------------------------------------------------------------------

    def _route(self, method: str, target: str, raw: bytes, content_type: str = "application/json") -> Reply:
        parts = urlsplit(target)
        path = parts.path.rstrip("/") or "/"
        if path.startswith("/v1/files") or path.startswith("/v1/batches"):
            return self.batches.route(method, path, raw, content_type, parse_qs(parts.query))
        body, problem = _json_body(raw) if method == "POST" else ({}, None)
        if problem:
            return error_reply(400, problem, "invalid_request_error", None)
        if method == "POST" and path == "/v1/chat/completions":
            return self._chat(body)
        if method == "GET" and (path == "/v1/models" or path.startswith("/v1/models/")):
            return self._models(path.removeprefix("/v1/models").strip("/"))
        if method == "GET" and path == "/_sim/stats":
            include_log = parse_qs(parts.query).get("log", ["1"])[0] not in ("0", "false")
            return Reply(200, self.stats(include_log))
        if method == "POST" and path == "/_sim/config":
            try:
                return Reply(200, self.configure(**body))
            except (TypeError, ValueError) as err:
                return error_reply(400, str(err), "invalid_request_error", "invalid_config")
        if method == "POST" and path == "/_sim/reset":
            self.reset()
            return Reply(200, {"ok": True})
        return error_reply(404, f"Invalid URL ({method} {parts.path})", "invalid_request_error", "unknown_url")

    def _models(self, model_id: str) -> Reply:
        cfg = self._config
        if cfg.auth_error:
            return _auth_error()
        cards = [{"id": m, "object": "model", "created": 0, "owned_by": "simulator"} for m in cfg.models or []]
        if not model_id:
            return Reply(200, {"object": "list", "data": cards})
        if cfg.models is not None and model_id not in cfg.models:
            return _model_not_found(model_id)
        return Reply(200, {"id": model_id, "object": "model", "created": 0, "owned_by": "simulator"})

    # -- chat completions --------------------------------------------------------------------------------------

    def _chat(self, body: dict[str, Any]) -> Reply:
        req = ChatRequest.parse(body)
        with self._lock:
            now, cfg = time.monotonic(), self._config
            early = self._is_early(now)
            reply = self._decide(cfg, req, now)
            faults = self._draw_answer_faults(cfg, req.items) if reply is None else AnswerFaults()
            headers = {h: v for limiter in self._limiters for h, v in limiter.headers(now).items()}
            self._sequence += 1
            sequence = self._sequence
            names = faults.names() if reply is None else [reply.fault] if reply.fault else []
            self._stats.record(now, req, reply.status if reply else 200, early=early,
                               rate_limited=bool(reply and reply.rate_limited), faults=names)
        headers["x-request-id"] = f"req_sim_{sequence}"
        if reply is not None:  # refusals come back at once, as a provider's gateway answers them
            reply.headers = {**headers, **reply.headers}
            return reply
        self._stopping.wait(cfg.latency + (cfg.timeout_seconds if faults.timeout else 0.0))
        completion = self.answer(sequence, req, faults)
        if cfg.settle_tokens:
            with self._lock:
                self._settle(req.tokens - completion["usage"]["total_tokens"])
        return Reply(200, completion, headers)

    def answer(self, sequence: int, req: ChatRequest, faults: AnswerFaults) -> dict[str, Any]:
        """The completion for an accepted request, its usage counted (the prompt cache read and filled)."""
        completion = self._completion(sequence, req, faults)
        usage = completion["usage"]
        with self._lock:
            usage["prompt_tokens_details"] = {"cached_tokens": self._cached(req), "audio_tokens": 0}
            self._stats.prompt_tokens += usage["prompt_tokens"]
            self._stats.completion_tokens += usage["completion_tokens"]
            self._stats.cached_tokens += usage["prompt_tokens_details"]["cached_tokens"]
        return completion

    def _cached(self, req: ChatRequest) -> int:
        """Prompt tokens served from the cache, as OpenAI counts them: a prefix (here, every message but the last)
        seen before under the same prompt_cache_key, of at least cache_min_tokens, in steps of 128 tokens.
        Callers hold the lock."""
        prefix = json.dumps(req.messages[:-1])
        tokens = len(prefix) // 4
        if tokens < self._config.cache_min_tokens:
            return 0
        key = (req.cache_key, hashlib.sha256(prefix.encode()).hexdigest())
        seen = key in self._prefixes
        self._prefixes[key] = None
        self._prefixes.move_to_end(key)
        while len(self._prefixes) > 10_000:
            self._prefixes.popitem(last=False)
        return tokens // 128 * 128 if seen else 0

    def _settle(self, unused: int) -> None:
        """A provider that settles: the part of the charge the answer did not use goes back to the token bucket."""
        now = time.monotonic()
        for limiter in self._limiters:
            if limiter.kind == "tokens" and unused > 0:
                limiter.minute.give_back(unused, now)
        self._stats.settled_tokens += max(0, unused)

    def _decide(self, cfg: SimConfig, req: ChatRequest, now: float) -> Reply | None:
        """Refusals in the order a provider applies them; None means answer the request."""
        checks = (self._check_account, self._check_request, self._check_flex, self._check_scripted_faults,
                  self._check_limits, self._check_random_faults)
        for check in checks:
            reply = check(cfg, req, now)
            if reply is not None:
                return reply
        return None

    def _check_account(self, cfg: SimConfig, req: ChatRequest, now: float) -> Reply | None:
        if cfg.auth_error:
            return _auth_error()
        if cfg.quota_exhausted:
            return error_reply(429, "You exceeded your current quota, please check your plan and billing details.",
                               "insufficient_quota", "insufficient_quota", fault="quota_exhausted")
        return None

    def _check_request(self, cfg: SimConfig, req: ChatRequest, now: float) -> Reply | None:
        if req.problem:
            return error_reply(400, req.problem, "invalid_request_error", None)
        if cfg.models is not None and req.model not in cfg.models:
            return _model_not_found(req.model)
        return None

    def _check_scripted_faults(self, cfg: SimConfig, req: ChatRequest, now: float) -> Reply | None:
        if self._fail_first_left > 0:
            self._fail_first_left -= 1
            return _server_error(cfg.fail_status, "fail_first")
        if self._burst_left > 0:
            self._burst_left -= 1
            return self._fault_rate_limit(cfg, req, now, "rate_limit_burst")
        return None

    def _check_flex(self, cfg: SimConfig, req: ChatRequest, now: float) -> Reply | None:
        """Flex processing without capacity: 429 resource_unavailable (not billed, no retry-after)."""
        if req.flex and self._happens("pflex_unavailable", cfg.pflex_unavailable, cfg):
            self._stats.flex_unavailable += 1
            return error_reply(429, "Resource Unavailable: flex processing has no capacity for this request now. "
                               "Retry later, or send it without service_tier flex.", "resource_unavailable",
                               "resource_unavailable", fault="flex_unavailable")
        return None

    def _check_limits(self, cfg: SimConfig, req: ChatRequest, now: float) -> Reply | None:
        costs = {"requests": 1, "tokens": req.tokens}
        for limiter in self._limiters:
            if limiter.too_large(costs[limiter.kind]):
                return error_reply(
                    429, f"Request too large for {req.model} on {limiter.kind} per min: Limit {int(limiter.limit)}, "
                    f"Requested {costs[limiter.kind]}. The input or output tokens must be reduced.",
                    limiter.kind, "rate_limit_exceeded", fault="request_too_large", rate_limited=True)
        waits = [(limiter.wait(costs[limiter.kind], now), limiter) for limiter in self._limiters]
        wait, limiter = max(waits, key=lambda pair: pair[0], default=(0.0, None))
        if limiter is None or wait <= 0:
            for each in self._limiters:
                each.take(costs[each.kind], now)
            return None
        self._note_retry_after(limiter.kind, now, wait)
        unit = "RPM" if limiter.kind == "requests" else "TPM"
        message = (f"Rate limit reached for {limiter.kind} per min ({unit}) on {req.model}: "
                   f"Limit {int(limiter.limit)}, Requested {costs[limiter.kind]}. "
                   f"Please try again in {format_duration(wait)}.")
        return error_reply(429, message, limiter.kind, "rate_limit_exceeded", headers=retry_headers(wait),
                           fault=f"limit_{limiter.kind}", rate_limited=True)

    def _check_random_faults(self, cfg: SimConfig, req: ChatRequest, now: float) -> Reply | None:
        if self._happens("p429", cfg.p429, cfg):
            return self._fault_rate_limit(cfg, req, now, "p429")
        if self._happens("p500", cfg.p500, cfg):
            return _server_error(500, "p500")
        return None

    def _fault_rate_limit(self, cfg: SimConfig, req: ChatRequest, now: float, fault: str) -> Reply:
        wait = cfg.burst_retry_after
        self._note_retry_after(fault, now, wait)
        message = (f"Rate limit reached for requests on {req.model}. "
                   f"Please try again in {format_duration(wait)}.")
        return error_reply(429, message, "requests", "rate_limit_exceeded", headers=retry_headers(wait),
                           fault=fault, rate_limited=True)

    def _draw_answer_faults(self, cfg: SimConfig, items: list[dict[str, str]]) -> AnswerFaults:
        count = len(items)
        faults = AnswerFaults(timeout=self._happens("ptimeout", cfg.ptimeout, cfg),
                              malformed=self._happens("pmalformed", cfg.pmalformed, cfg))
        if count and self._happens("pmissing", cfg.pmissing, cfg):
            faults.missing = self._rng("pmissing", cfg).randrange(count)
        if count and self._happens("pbadcategory", cfg.pbadcategory, cfg):
            faults.badcategory = self._rng("pbadcategory", cfg).randrange(count)
        if count and self._happens("pbadrow", cfg.pbadrow, cfg):
            rng = self._rng("pbadrow", cfg)
            faults.badrows[rng.randrange(count)] = rng.randrange(len(BAD_ROWS))
        marked = {v.lower() for v in cfg.badrow_vendors or []}
        for index, item in enumerate(items):
            if item["vendor"].lower() in marked:  # which shape: stable per vendor, so runs can be compared
                faults.badrows[index] = hashlib.sha256(item["vendor"].lower().encode()).digest()[0] % len(BAD_ROWS)
        refused = {v.lower() for v in cfg.refusal_vendors or []}
        faults.refusal = (self._happens("prefusal", cfg.prefusal, cfg)
                          or any(item["vendor"].lower() in refused for item in items))
        return faults

    def _rng(self, fault: str, cfg: SimConfig) -> random.Random:
        # One stream per fault, so turning one fault on does not shift the draws of the others.
        if fault not in self._rngs:
            self._rngs[fault] = random.Random(f"{cfg.seed}:{fault}")
        return self._rngs[fault]

    def _happens(self, fault: str, probability: float, cfg: SimConfig) -> bool:
        return probability > 0 and self._rng(fault, cfg).random() < probability

    # -- early retries -----------------------------------------------------------------------------------------

    def _note_retry_after(self, limiter: str, now: float, wait: float) -> None:
        informed, not_before = self._retry_windows.get(limiter, (now, now))
        if now >= not_before:  # the previous window has elapsed: this 429 opens a new one
            informed = now
        # retry-after-ms is the finest wait the client is told, so it is the one a client may rely on.
        self._retry_windows[limiter] = (informed, max(not_before, now + math.ceil(wait * 1000) / 1000))

    def _is_early(self, now: float) -> bool:
        # Requests already in flight when the 429 left cannot know about it: the grace keeps them out.
        grace = self._config.early_grace
        return any(informed + grace <= now < not_before for informed, not_before in self._retry_windows.values())

    # -- the answer --------------------------------------------------------------------------------------------

    def _completion(self, sequence: int, req: ChatRequest, faults: AnswerFaults) -> dict[str, Any]:
        rows: list[dict[str, Any]] = []
        for item in req.items:
            category, confidence = categorize(item["vendor"], item["description"], req.taxonomy)
            rows.append({"id": item["id"], "category": category, "confidence": confidence})
        if faults.badcategory is not None:
            rows[faults.badcategory]["category"] = _outside(req.taxonomy)
        for index, shape in faults.badrows.items():
            name, value = BAD_ROWS[shape]
            rows[index][name] = value
        if faults.missing is not None:
            del rows[faults.missing]
        content: str | None = json.dumps({"items": rows})
        if faults.malformed:  # a cut-off JSON object is never valid JSON
            content = content[: len(content) // 2]
        if faults.refusal:  # as the openai API answers a refusal: no content, the reason in `refusal`
            content = None
        prompt, completion = len(json.dumps(req.messages)) // 4, max(1, len(content or REFUSAL) // 4)
        return {
            "id": f"chatcmpl-sim{sequence:08d}", "object": "chat.completion", "created": int(time.time()),
            "model": req.model, "system_fingerprint": "fp_simulator",
            "service_tier": "flex" if req.flex else "default",
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": content,
                                     "refusal": REFUSAL if faults.refusal else None}}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion},
        }


def _outside(categories: Iterable[str]) -> str:
    taken, n = set(categories), 0
    while f"Uncategorized {n}" in taken:
        n += 1
    return f"Uncategorized {n}"


def _auth_error() -> Reply:
    return error_reply(401, "Incorrect API key provided. You can find your API key in your account settings.",
                       "invalid_request_error", "invalid_api_key", fault="auth_error")


def _model_not_found(model: str) -> Reply:
    return error_reply(404, f"The model `{model}` does not exist or you do not have access to it.",
                       "invalid_request_error", "model_not_found", fault="model_not_found")


def _server_error(status: int, fault: str) -> Reply:
    return error_reply(status, "The server had an error while processing your request. Sorry about that!",
                       "server_error", None, fault=fault)


def _json_body(raw: bytes) -> tuple[dict[str, Any], str | None]:
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        return {}, "We could not parse the JSON body of your request."
    if not isinstance(body, dict):
        return {}, "The request body must be a JSON object."
    return body, None


# ---------------------------------------------------------------------------------------------------------------
# HTTP plumbing.


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's connection pool expects
    disable_nagle_algorithm = True  # headers and body are separate writes: Nagle + delayed ACK would add 40 ms
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        reply = self.server.sim._route(method, self.path, raw, self.headers.get("content-type") or "")
        data = reply.raw if reply.raw is not None else json.dumps(reply.body).encode()
        try:
            self.send_response(reply.status)
            self.send_header("content-type", "application/json" if reply.raw is None else "application/octet-stream")
            self.send_header("content-length", str(len(data)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up (timeout fault) or the simulator is stopping
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests and benchmarks are chatty
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # benchmarks open many connections at once
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], sim: Simulator) -> None:
        super().__init__(address, _Handler)
        self.sim = sim
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def track(self, conn: socket.socket, is_open: bool) -> None:
        with self._open_lock:
            (self._open.add if is_open else self._open.discard)(conn)

    def close_connections(self) -> None:
        # Keep-alive handler threads would otherwise block on idle client connections after stop().
        with self._open_lock:
            conns = list(self._open)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # disconnects are expected; bugs are not
            super().handle_error(request, client_address)


# ---------------------------------------------------------------------------------------------------------------
# Command line.


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m local.simulator", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100, help="0 picks a free port")
    for knob in fields(SimConfig):
        flag = "--" + knob.name.replace("_", "-")
        if knob.metadata["parse"] is _flag:
            parser.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=knob.metadata["help"])
        else:
            parser.add_argument(flag, default=argparse.SUPPRESS, help=f"{knob.metadata['help']} "
                                f"(default {knob.default})")
    return parser


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = vars(_parser().parse_args(argv))
    host, port = args.pop("host"), args.pop("port")
    sim = Simulator(host, port, **args).start()
    print(sim.url, flush=True)
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops as cleanly as Ctrl-C
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
