"""A refusal (`message.refusal`) is a bad answer for the items of its request, read through the real openai client
and its structured-output parse: asked again once by the pipeline, then flagged, exactly like an answer that is not
the schema, and never retried by the retry policy on top nor counted twice. No moto, no network."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import httpx2 as httpx
import openai
import pytest

from chalicelib.categorize import pipeline, provider
from chalicelib.categorize.retry import RetryLoop
from chalicelib.categorize.types import Answer, Item
from chalicelib.reports.service import DEFAULT_CATEGORIES

ITEMS = [Item("a", "Uber", ""), Item("b", "Hilton", ""), Item("c", "Zzyx", "")]
CATEGORY = {"Uber": "Ground Transportation", "Hilton": "Lodging"}


class Provider:
    """An OpenAI-compatible endpoint behind httpx's MockTransport: answers each request about its items, refuses the
    requests that ask about a vendor in `refuse` (and every request while `refuse_all`)."""

    def __init__(self, refuse: set[str] = frozenset(), refuse_all: bool = False, content_with_refusal: bool = False,
                 finish_reason: str = "stop", rows: Any = None) -> None:
        self.refuse, self.refuse_all, self.content_with_refusal = refuse, refuse_all, content_with_refusal
        self.finish_reason, self.rows = finish_reason, rows
        self.asked: Counter[str] = Counter()  # requests by vendor
        self.requests = 0
        self.api = openai.OpenAI(api_key="sk-test", base_url="http://provider.test/v1", max_retries=0,
                                 http_client=httpx.Client(transport=httpx.MockTransport(self.handle)))

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        assert body["response_format"]["type"] == "json_schema" and body["response_format"]["json_schema"]["strict"]
        items = json.loads(body["messages"][-1]["content"])
        self.requests += 1
        self.asked.update(i["vendor"] for i in items)
        rows = self.rows if self.rows is not None else [
            {"id": i["id"], "category": CATEGORY.get(i["vendor"], "Other"), "confidence": 0.9} for i in items]
        content: str | None = json.dumps({"items": rows})
        refusal = None
        if self.refuse_all or any(i["vendor"] in self.refuse for i in items):
            refusal = "I'm sorry, I can't help with that request."
            content = content if self.content_with_refusal else None
        message = {"role": "assistant", "content": content, "refusal": refusal}
        return httpx.Response(200, json={
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": self.finish_reason, "message": message, "logprobs": None}]})


@pytest.mark.parametrize("with_content", [False, True], ids=["no content", "content beside the refusal"])
def test_a_refusal_through_the_sdk_s_parse_is_a_bad_answer_for_every_item(with_content: bool) -> None:
    fake = Provider(refuse_all=True, content_with_refusal=with_content)
    assert provider.ask(fake.api, "m", ITEMS, DEFAULT_CATEGORIES) == []


def test_an_answer_of_the_schema_is_read_by_the_sdk_s_parse() -> None:
    got = provider.ask(Provider().api, "m", ITEMS, DEFAULT_CATEGORIES)
    assert [(a.id, a.category, a.confidence, a.source) for a in got] == [
        ("a", "Ground Transportation", 0.9, "model"), ("b", "Lodging", 0.9, "model"), ("c", "Other", 0.9, "model")]


def test_one_row_off_the_schema_spoils_its_item_only_though_the_sdk_rejects_the_whole_answer() -> None:
    rows = [{"id": "a", "category": "Spaceships", "confidence": 0.9}, {"id": "b", "category": "Lodging",
                                                                       "confidence": 0.9}]
    assert [a.id for a in provider.ask(Provider(rows=rows).api, "m", ITEMS, DEFAULT_CATEGORIES)] == ["b"]


@pytest.mark.parametrize("finish_reason", ["length", "content_filter"])
def test_an_answer_cut_off_or_filtered_is_a_bad_answer_for_every_item(finish_reason: str) -> None:
    assert provider.ask(Provider(finish_reason=finish_reason).api, "m", ITEMS, DEFAULT_CATEGORIES) == []


def backend(fake: Provider, batch_size: int = 10) -> pipeline.ModelBackend:
    loop = RetryLoop(deadline=time.monotonic() + 60, inline_wait_max=10, ceiling_seconds=600)
    return pipeline.ModelBackend(fake.api, "m", loop, batch_size=batch_size, concurrency=2)


def test_a_refused_batch_is_asked_again_once_then_flagged_and_not_retried_by_the_policy() -> None:
    fake = Provider(refuse_all=True)
    model = backend(fake)
    got = pipeline._ask_chunk(model, ITEMS, DEFAULT_CATEGORIES)
    assert [(a.id, a.category, a.needs_review) for a in got] == [("a", None, True), ("b", None, True),
                                                                  ("c", None, True)]
    assert fake.requests == 2  # the first ask and the pipeline's one more: a refusal is no failed request
    assert model.loop.stats.retries == 0


def test_a_refusal_on_the_second_ask_flags_only_what_the_first_left_unanswered() -> None:
    class Once(Provider):
        def handle(self, request: httpx.Request) -> httpx.Response:
            self.refuse_all = self.requests >= 1  # the re-ask is refused
            self.rows = [{"id": "a", "category": "Ground Transportation", "confidence": 0.9}] \
                if self.requests == 0 else None
            return super().handle(request)

    fake = Once()
    got = pipeline._ask_chunk(backend(fake), ITEMS, DEFAULT_CATEGORIES)
    assert [(a.id, a.category, a.needs_review) for a in got] == [("a", "Ground Transportation", False),
                                                                  ("b", None, True), ("c", None, True)]
    assert fake.asked == Counter({"Uber": 1, "Hilton": 2, "Zzyx": 2})


class HeldWrites:
    """A Background that keeps the cache write-through (no DynamoDB in the unit tier)."""

    def __init__(self) -> None:
        self.held: list[Any] = []

    def submit(self, fn: Any, *args: Any) -> None:
        self.held.append((fn, args))

    def release(self) -> None:
        pass


def test_a_refused_batch_among_others_flags_its_items_and_every_item_has_one_answer() -> None:
    vendors = ["Uber", "Hilton", "Zzyx", "Acme", "Delta", "Blue Bottle"]
    items = [Item(f"v{n}", v, "") for n, v in enumerate(vendors)]
    fake = Provider(refuse={"Zzyx"})
    writes = HeldWrites()
    got = pipeline.ask_model(backend(fake, batch_size=2), items, DEFAULT_CATEGORIES, "job-1", writes,  # type: ignore[arg-type]
                             tenant="t-1")
    by_id: dict[str, Answer] = {a.id: a for a in got}
    assert len(got) == len(by_id) == len(items)  # one answer each: none dropped, none twice
    flagged = {a.id for a in got if a.needs_review}
    assert flagged == {"v2", "v3"}  # Zzyx's request asked about Acme too: both are bad answers
    assert all(by_id[i].category for i in by_id if i not in flagged)
    assert fake.asked == Counter({"Zzyx": 2, "Acme": 2, "Uber": 1, "Hilton": 1, "Delta": 1, "Blue Bottle": 1})
    [(_, (written, *_))] = writes.held  # the write-through gets each answer once too (it caches confident ones)
    assert sorted(a.id for a in written) == sorted(by_id) and sum(a.needs_review for a in written) == 2
