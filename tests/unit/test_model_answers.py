"""What the model answers is data from outside: any answer that is not the schema is a bad answer for the items
it touches (asked again once, then flagged by the pipeline), never an exception."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import httpx2 as httpx
import openai
import pytest

from chalicelib.categorize import provider
from chalicelib.categorize.types import Item
from chalicelib.reports.service import DEFAULT_CATEGORIES

ITEMS = [Item("a", "Uber", ""), Item("b", "Hilton", ""), Item("c", "Zzyx", "")]
GOOD_B = {"id": "b", "category": "Lodging", "confidence": 0.9}


def rows(*bad: Any) -> str:
    """An answer with one good row (b) next to the rows under test."""
    return json.dumps({"items": [*bad, GOOD_B]})


# Each case: the content, and the ids whose answers stand (only b's good row, unless the shape spoils it too).
MALFORMED_ROWS = {
    "id is a list": (rows({"id": ["a"], "category": "Airfare", "confidence": 0.9}), {"b"}),
    "id is an object": (rows({"id": {"a": 1}, "category": "Airfare", "confidence": 0.9}), {"b"}),
    "id is a number": (rows({"id": 1, "category": "Airfare", "confidence": 0.9}), {"b"}),
    "id is null": (rows({"id": None, "category": "Airfare", "confidence": 0.9}), {"b"}),
    "id is missing": (rows({"category": "Airfare", "confidence": 0.9}), {"b"}),
    "id is not asked about": (rows({"id": "zz", "category": "Airfare", "confidence": 0.9}), {"b"}),
    "category is a list": (rows({"id": "a", "category": ["Airfare"], "confidence": 0.9}), {"b"}),
    "category is an object": (rows({"id": "a", "category": {"Airfare": 1}, "confidence": 0.9}), {"b"}),
    "category is a number": (rows({"id": "a", "category": 3, "confidence": 0.9}), {"b"}),
    "category is null": (rows({"id": "a", "category": None, "confidence": 0.9}), {"b"}),
    "category outside the taxonomy": (rows({"id": "a", "category": "Spaceships", "confidence": 0.9}), {"b"}),
    "confidence is NaN": ('{"items": [{"id": "a", "category": "Airfare", "confidence": NaN}, '
                          + json.dumps(GOOD_B) + "]}", {"b"}),
    "confidence is Infinity": ('{"items": [{"id": "a", "category": "Airfare", "confidence": Infinity}, '
                               + json.dumps(GOOD_B) + "]}", {"b"}),
    "confidence is a bool": (rows({"id": "a", "category": "Airfare", "confidence": True}), {"b"}),
    "confidence is a string": (rows({"id": "a", "category": "Airfare", "confidence": "0.9"}), {"b"}),
    "confidence is null": (rows({"id": "a", "category": "Airfare", "confidence": None}), {"b"}),
    "confidence is a list": (rows({"id": "a", "category": "Airfare", "confidence": [0.9]}), {"b"}),
    "row is a list": (rows(["a", "Airfare", 0.9]), {"b"}),
    "row is a string": (rows("a: Airfare"), {"b"}),
    "row is null": (rows(None), {"b"}),
    # An id answered twice cannot be trusted either way, even when both rows agree (the prompt says once).
    "id answered twice, differently": (rows({"id": "a", "category": "Airfare", "confidence": 0.9},
                                            {"id": "a", "category": "Lodging", "confidence": 0.9}), {"b"}),
    "id answered twice, the same": (rows({"id": "a", "category": "Airfare", "confidence": 0.9},
                                         {"id": "a", "category": "Airfare", "confidence": 0.9}), {"b"}),
    "a bad row and a good row for one id": (rows({"id": "a", "category": ["Airfare"], "confidence": 0.9},
                                                  {"id": "a", "category": "Airfare", "confidence": 0.9}), {"b"}),
}

MALFORMED_ANSWERS = {
    "items is an object": json.dumps({"items": {"a": GOOD_B}}),
    "items is a string": json.dumps({"items": "a,b"}),
    "items is null": json.dumps({"items": None}),
    "items is missing": json.dumps({"answers": [GOOD_B]}),
    "answer is a list": json.dumps([GOOD_B]),
    "answer is a number": "42",
    "answer is a string": json.dumps("b: Lodging"),
    "answer is null": "null",
    "cut off": json.dumps({"items": [GOOD_B]})[:20],
    "empty": "",
    "no content": None,
    "nested past the parser's recursion limit": "[" * 100_000 + "]" * 100_000,
}


@pytest.mark.parametrize("content, kept", MALFORMED_ROWS.values(), ids=MALFORMED_ROWS.keys())
def test_a_row_that_is_not_the_schema_is_a_bad_answer_for_its_item_only(content: str, kept: set[str]) -> None:
    got = provider.parse_answer(content, ITEMS, DEFAULT_CATEGORIES)
    assert {a.id for a in got} == kept
    assert all(a.source == "model" and not a.needs_review for a in got)


@pytest.mark.parametrize("content", MALFORMED_ANSWERS.values(), ids=MALFORMED_ANSWERS.keys())
def test_an_answer_that_is_not_the_schema_is_a_bad_answer_for_every_item(content: Any) -> None:
    assert provider.parse_answer(content, ITEMS, DEFAULT_CATEGORIES) == []


@pytest.mark.parametrize("content", [b'{"items": []}', 42, ["x"], {"items": [GOOD_B]}],
                         ids=["bytes", "int", "list", "dict"])
def test_content_of_another_type_than_text_is_a_bad_answer(content: Any) -> None:
    assert provider.parse_answer(content, ITEMS, DEFAULT_CATEGORIES) == []


@pytest.mark.parametrize("confidence, kept", [(0.42, 0.42), (1, 1.0), (0, 0.0), (1.7, 1.0), (-0.2, 0.0)])
def test_a_finite_confidence_is_kept_within_0_and_1(confidence: float, kept: float) -> None:
    content = json.dumps({"items": [{"id": "a", "category": "Airfare", "confidence": confidence}]})
    assert [(a.id, a.category, a.confidence) for a in provider.parse_answer(content, ITEMS, DEFAULT_CATEGORIES)] \
        == [("a", "Airfare", kept)]


class FakeApi:
    """The slice of the openai client that provider.ask uses, answering with a fixed message."""

    def __init__(self, message: Any, choices: Any = None) -> None:
        completion = SimpleNamespace(choices=[SimpleNamespace(message=message)] if choices is None else choices)
        raw = SimpleNamespace(parse=lambda: completion, headers={})
        parse = SimpleNamespace(parse=lambda **kwargs: raw)
        self.chat = SimpleNamespace(completions=SimpleNamespace(with_raw_response=parse))


def test_a_refusal_is_a_bad_answer_for_every_item_of_the_request() -> None:
    # A refusal may come with content (some providers fill both): the model declined, so none of it stands.
    content = json.dumps({"items": [{"id": i.id, "category": "Other", "confidence": 0.9} for i in ITEMS]})
    refused = SimpleNamespace(content=content, refusal="I can't help with that.")
    assert provider.ask(FakeApi(refused), "m", ITEMS, DEFAULT_CATEGORIES) == []
    answered = SimpleNamespace(content=content, refusal=None)
    assert len(provider.ask(FakeApi(answered), "m", ITEMS, DEFAULT_CATEGORIES)) == 3


@pytest.mark.parametrize("choices", [[], None, "x", [None], [SimpleNamespace()], [SimpleNamespace(message=None)]],
                         ids=["no choices", "null choices", "choices a string", "null choice", "no message",
                              "null message"])
def test_a_completion_without_a_usable_message_is_a_bad_answer(choices: Any) -> None:
    api = FakeApi(None, choices=choices)
    if choices is None:
        api.chat.completions.with_raw_response.parse = \
            lambda **kwargs: SimpleNamespace(parse=lambda: SimpleNamespace(choices=None), headers={})
    assert provider.ask(api, "m", ITEMS, DEFAULT_CATEGORIES) == []


# The SDK's parse re-serializes the message it read; content that is not text makes pydantic warn on the way.
@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning")
@pytest.mark.parametrize("body, content_type", [
    (b"<html>502 Bad Gateway</html>", "application/json"), (b"<html>oops</html>", "text/html"),
    (b'"a string"', "application/json"), (b"[1, 2]", "application/json"), (b'{"choices": 5}', "application/json"),
    (b'{"choices": [{"message": {"content": 7, "refusal": null}}]}', "application/json"),
], ids=["not JSON", "html", "a JSON string", "a JSON list", "choices a number", "content a number"])
def test_a_200_whose_body_is_not_a_completion_is_a_bad_answer_through_the_real_client(body: bytes,
                                                                                     content_type: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": content_type})

    api = openai.OpenAI(api_key="sk-test", base_url="http://provider.test/v1", max_retries=0,
                        http_client=httpx.Client(transport=httpx.MockTransport(handler)))
    assert provider.ask(api, "m", ITEMS, DEFAULT_CATEGORIES) == []
