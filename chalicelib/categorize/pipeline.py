"""Categorize a batch of lines: vendor cache first, then distinct vendors, many per model request."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from chalicelib import observability
from chalicelib.categorize import cache, claims, prompt, rules, seen
from chalicelib.categorize.errors import JobFatal, LongWait, ProviderError, RetriesExhausted
from chalicelib.categorize.normalize import normalize_vendor
from chalicelib.categorize.retry import RetryLoop
from chalicelib.categorize.types import Answer, Item
from chalicelib.categorize.usage import Meter
from chalicelib.settings import Settings

log = logging.getLogger(__name__)
FLEX_TIMEOUT_SECONDS = 900.0


class Background:
    """Writes no line waits for: the cache write-through and the seen-vendor notes.

    They are held until the worker starts its next batch or next waits on the model (`release`), and then run
    beside that work, or, at the latest, when the invocation ends (`wait`, before it returns: a Lambda is
    frozen after that). So they never queue in front of a batch's own result writes. A failed one costs a
    cache miss later, never a line: it is logged, not raised.
    """

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._held: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self._pending: list[Future] = []

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._held.append((fn, args))

    def release(self) -> None:
        """Start what is held (the caller is about to wait on something else)."""
        if not self._held:
            return
        if self._pool is None:
            # One thread: these writes take turns among themselves.
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="background")
        self._pending += [self._pool.submit(fn, *args) for fn, args in self._held]
        self._held.clear()

    def wait(self) -> int:
        """Run whatever is still held and wait for every write; returns how many failed."""
        self.release()
        failed = 0
        for future in self._pending:
            if future.exception() is not None:
                failed += 1
                log.warning("a background cache write failed", exc_info=future.exception())
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        return failed


def _run(background: Background | None, fn: Callable[..., Any], *args: Any) -> None:
    if background is None:
        fn(*args)
    else:
        background.submit(fn, *args)


class LineLike(Protocol):
    line_id: str
    vendor: str
    description: str


@dataclass
class ModelBackend:
    api: Any
    model: str
    loop: RetryLoop
    batch_size: int
    concurrency: int
    limiter: Any = None  # limiter.SharedLimiter when the fleet shares a provider quota
    lane: str = "standard"  # the service tier asked for: standard or flex (batch: worker/batchlane.py)
    meter: Meter = field(default_factory=Meter)  # what this backend's requests used (categorize/usage.py)


def _flagged(item: Item) -> Answer:
    return Answer(item.id, None, 0.0, "model", True)


def _flex_timeout(backend: ModelBackend) -> float | None:
    """A flex request's timeout: flex queues requests, so it may take minutes (OpenAI advises up to 15), as long as
    the invocation has time left to checkpoint after it; None (the client's own timeout) on other lanes."""
    if backend.lane != "flex" or backend.loop is None:
        return None
    return max(1.0, min(FLEX_TIMEOUT_SECONDS, backend.loop.deadline - time.monotonic()))


def _ask_chunk(backend: ModelBackend, chunk: list[Item], categories: list[str],
               cache_key: str | None = None) -> list[Answer]:
    """Ask once; ask again once for what is missing or invalid; flag what is still missing."""
    answers: dict[str, Answer] = {}
    for _ in range(2):
        todo = [i for i in chunk if i.id not in answers]
        if not todo:
            break
        try:
            from chalicelib.categorize import provider  # openai and pydantic: only once a model is asked

            got = backend.loop.run(partial(provider.ask, backend.api, backend.model, todo, categories,
                                           backend.limiter, lane=backend.lane, cache_key=cache_key,
                                           meter=backend.meter, timeout=_flex_timeout(backend)))
        except RetriesExhausted:
            break
        except ProviderError as err:
            if err.fatal:
                raise JobFatal(err.message) from err
            break  # a request the provider refuses (400): flag its lines, the job goes on
        except LongWait as wait:
            wait.answered = list(answers.values())  # a first attempt's answers are kept (written through)
            raise
        answers.update({a.id: a for a in got})
    return [answers.get(i.id) or _flagged(i) for i in chunk]


def ask_model(backend: ModelBackend, items: list[Item], categories: list[str],
              job_id: str | None = None, background: Background | None = None, *, tenant: str) -> list[Answer]:
    """The model's answers for `items`, written through to `tenant`'s cache (see cache.remember for `job_id`).

    `items` are one tenant's: the caller never mixes two tenants' vendors in one request.
    """
    chunks = [items[i:i + backend.batch_size] for i in range(0, len(items), backend.batch_size)]
    key = prompt.cache_key(tenant, categories)  # the provider's prompt cache, per tenant and taxonomy
    answers: list[Answer] = []
    waits: list[LongWait] = []
    fatal: list[JobFatal] = []
    with ThreadPoolExecutor(max_workers=max(1, backend.concurrency)) as pool:
        futures = [pool.submit(_ask_chunk, backend, chunk, categories, key) for chunk in chunks]
        if background is not None:
            background.release()  # held writes run while these requests are out (they start first)
        for future in futures:
            try:
                answers += future.result()
            except LongWait as err:
                waits.append(err)
                answers += err.answered
            except JobFatal as err:
                fatal.append(err)
    _run(background, _remember, answers, items, categories, backend.model, job_id, tenant)
    if fatal:
        raise fatal[0]
    if waits:
        longest = max(waits, key=lambda w: w.seconds)
        longest.answered = answers  # those were written through: a claim on them stands (see _single_flight)
        raise longest
    return answers


def _remember(answers: list[Answer], items: list[Item], categories: list[str], model: str,
              job_id: str | None, tenant: str) -> None:
    by_id = {i.id: i for i in items}
    cache.remember_many(categories, [(normalize_vendor(by_id[a.id].vendor), a.category, a.confidence)
                                     for a in answers if a.category and not a.needs_review], model, job_id,
                        tenant=tenant)


def categorize(lines: list[LineLike], categories: list[str], settings: Settings,
               backend: ModelBackend | None, memo: dict[str, Answer] | None = None,
               job_id: str | None = None, background: Background | None = None,
               claim_owner: str | None = None, *, tenant: str, others: bool = True) -> dict[str, Answer]:
    """Answers by line id. `backend` None means the offline rules categorizer.

    `tenant` (the job's tenant key) scopes every cache read and write and the seen-vendor notes: an answer
    with `source: "cache"` is always one this tenant's own jobs or people gave.

    `memo` holds this invocation's answers by normalized vendor, so a vendor met again in a
    later batch (even one answered with too little confidence to cache) is not asked again; `job_id` does the
    same across the invocations and chunks of one job, through the cache (cache.lookup). With `background`,
    the writes no answer waits for are left to it. With `claim_owner` (a chunk's lease), the job's chunks
    ask the model about each vendor once between them (claims.py); `others` False leaves out the lines of the
    vendors another chunk holds instead of waiting for their answers (worker/prefetch.py: nothing waits on it).
    """
    memo = {} if memo is None else memo
    groups: dict[str, list[LineLike]] = {}
    for line in lines:
        groups.setdefault(normalize_vendor(line.vendor), []).append(line)
    model = backend.model if backend else settings.openai_model
    new = [v for v in groups if v not in memo]
    if new:
        _run(background, partial(seen.record_seen, tenant=tenant), categories,
             {v: (groups[v][0].vendor, groups[v][0].description) for v in new})
    known = {v: memo[v] for v in groups if v in memo}
    known.update(cache.lookup(categories, new, model, job_id, tenant=tenant) if new else {})
    misses = [v for v in groups if v not in known]
    observability.cache_lookups(hits=len(known), misses=len(misses))

    def ask(vendors: list[str]) -> dict[str, Answer]:
        items = [Item(f"v{n}", groups[v][0].vendor, groups[v][0].description) for n, v in enumerate(vendors)]
        if not items:
            return {}
        if backend is None:
            fresh = rules.categorize(items, categories)
        else:
            fresh = ask_model(backend, items, categories, job_id, background, tenant=tenant)
        by_item = {a.id: a for a in fresh}
        return {vendor: by_item[item.id] for item, vendor in zip(items, vendors, strict=True)}

    if backend is None or not claim_owner or not job_id or not misses:
        known.update(ask(misses))
    else:
        known.update(_single_flight(ask, misses, categories, settings, backend, job_id, claim_owner, background,
                                    tenant, others))
    memo.update({v: a for v, a in known.items() if not a.needs_review})
    return {line.line_id: known[vendor] for vendor, members in groups.items() if vendor in known for line in members}


def _give_back(job_id: str, categories: list[str], vendors: list[str]) -> None:
    """On the way out with an error: release claims, but never hide that error behind a failed release."""
    try:
        claims.give_back(job_id, categories, vendors)
    except Exception:
        log.warning("could not give vendor claims back; they lapse on their own", exc_info=True)


def _single_flight(ask: Callable[[list[str]], dict[str, Answer]], misses: list[str], categories: list[str],
                   settings: Settings, backend: ModelBackend, job_id: str, owner: str,
                   background: Background | None, tenant: str, others: bool = True) -> dict[str, Answer]:
    """Ask about the vendors this chunk claims; wait for the answers other chunks of the job are getting (unless
    not `others`)."""
    hold = settings.limiter_wait_max_seconds + settings.openai_timeout_seconds + 5.0

    def ask_claimed(vendors: list[str]) -> dict[str, Answer]:
        try:
            got = ask(vendors)
        except LongWait as wait:
            # The answers got before the wait were written through (kept claims: others find them cached).
            cached = {a.id for a in wait.answered if not a.needs_review}
            if background is not None:
                background.release()
            _give_back(job_id, categories, [v for n, v in enumerate(vendors) if f"v{n}" not in cached])
            raise
        except BaseException:
            _give_back(job_id, categories, vendors)
            raise
        if background is not None:
            background.release()  # the answers go to the cache now: other chunks are waiting on them
        claims.give_back(job_id, categories, [v for v, a in got.items() if a.needs_review])
        return got

    mine, theirs = claims.take(job_id, categories, misses, owner, hold)
    known = ask_claimed(mine) if mine else {}
    if theirs and others:
        known.update(claims.wait_for(job_id, categories, theirs, backend.model, owner, hold, ask_claimed,
                                     backend.loop.deadline, tenant=tenant))
    return known
