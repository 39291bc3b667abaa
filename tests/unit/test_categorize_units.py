"""Vendor normalization, rules, answer validation and the provider's wait hints."""

import json

import httpx2 as httpx
import openai
import pytest

from chalicelib.categorize import provider, rules
from chalicelib.categorize.normalize import normalize_vendor
from chalicelib.categorize.types import Item
from chalicelib.reports.service import DEFAULT_CATEGORIES


@pytest.mark.parametrize("a,b", [("UBER *TRIP 8841", "Uber Trip"), ("SQ *BLUE BOTTLE #12", "Blue Bottle"),
                                 ("Marriott Inc.", "MARRIOTT"), ("DELTA AIR 0062345", "Delta Air")])
def test_vendor_spellings_meet(a, b):
    assert normalize_vendor(a) == normalize_vendor(b)


def test_rules_answer_with_source_rules():
    items = [Item("1", "UBER *TRIP", ""), Item("2", "Hilton Garden", ""), Item("3", "Zzyx", "")]
    answers = {a.id: a for a in rules.categorize(items, DEFAULT_CATEGORIES)}
    assert answers["1"].category == "Ground Transportation"
    assert answers["2"].category == "Lodging"
    assert answers["3"].category == "Other"
    assert {a.source for a in answers.values()} == {"rules"}


def test_rules_flag_a_line_when_the_taxonomy_has_no_other():
    answers = rules.categorize([Item("1", "Zzyx", "")], ["Airfare"])
    assert answers[0].needs_review and answers[0].category is None


def test_parse_answer_drops_missing_and_out_of_taxonomy_items():
    items = [Item("a", "x", ""), Item("b", "y", ""), Item("c", "z", "")]
    content = json.dumps({"items": [{"id": "a", "category": "Lodging", "confidence": 0.9},
                                    {"id": "b", "category": "Spaceships", "confidence": 0.9}]})
    got = provider.parse_answer(content, items, DEFAULT_CATEGORIES)
    assert [(a.id, a.category) for a in got] == [("a", "Lodging")]


def test_parse_answer_of_malformed_json_is_empty():
    assert provider.parse_answer("{not json", [Item("a", "x", "")], DEFAULT_CATEGORIES) == []


def _rate_limit_error(headers: dict, code: str = "rate_limit_exceeded") -> openai.RateLimitError:
    request = httpx.Request("POST", "http://sim/v1/chat/completions")
    response = httpx.Response(429, headers=headers, request=request)
    return openai.RateLimitError("limited", response=response, body={"code": code, "message": "limited"})


@pytest.mark.parametrize("headers,expected", [
    ({"retry-after-ms": "1500"}, 1.5),
    ({"retry-after": "3"}, 3.0),
    ({"retry-after-ms": "200", "retry-after": "1"}, 1.0),
    ({"x-ratelimit-reset-requests": "1m30s", "x-ratelimit-reset-tokens": "120ms"}, 90.0),
    ({}, None),
])
def test_rate_limit_wait_comes_from_the_provider_headers(headers, expected):
    err = provider.classify(_rate_limit_error(headers))
    assert err.name == "Provider.RateLimited"
    assert err.retry_after == expected


def test_insufficient_quota_is_fatal_with_an_actionable_message():
    err = provider.classify(_rate_limit_error({}, code="insufficient_quota"))
    assert err.fatal and "quota" in err.message


@pytest.mark.parametrize("categories", [
    DEFAULT_CATEGORIES,
    ["Software, Cloud Infrastructure & Developer Tools Subscriptions 01", "Other"],  # 64 characters
    ["交通費・タクシー・鉄道・航空券・宿泊費・会議費・交際費", "その他"],
])
def test_the_completion_budget_fits_the_longest_answer_and_no_more_than_it_needs(categories):
    items = [Item(f"v{n}", "ACME", "") for n in range(25)]
    longest = max(categories, key=lambda c: len(c.encode()))
    answer = json.dumps({"items": [{"id": i.id, "category": longest, "confidence": 0.95} for i in items]},
                        ensure_ascii=False)
    budget = provider.completion_budget(items, categories)
    # At least one token per 3 bytes of the longest possible answer (tokenizers give 3-4 bytes a token for English
    # JSON, about one a character for CJK); at most twice that, since the budget is charged against the quota.
    assert len(answer.encode()) / 3 <= budget <= 2 * len(answer.encode()) / 3
