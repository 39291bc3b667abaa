"""The price table, usage read from an answer, the cache-friendly prompt and the lane a job gets."""

from __future__ import annotations

from types import SimpleNamespace

from chalicelib.categorize import prices, prompt, usage
from chalicelib.jobs.create import lane_of
from chalicelib.reports.service import DEFAULT_CATEGORIES


def test_cost_is_priced_per_lane_with_cached_input_cheaper():
    # 10,000 prompt tokens of which 4,000 cached, 1,000 output, gpt-4o-mini standard: 6,000 x 0.15 + 4,000 x 0.075
    # + 1,000 x 0.60 per million = 0.0018 USD.
    assert prices.usd(prices.cost_nanos("gpt-4o-mini", "standard", 10_000, 4_000, 1_000) or 0) == "0.001800"
    assert prices.cost_nanos("gpt-4o-mini", "flex", 10_000, 4_000, 1_000) == \
        prices.cost_nanos("gpt-4o-mini", "batch", 10_000, 4_000, 1_000) == 900_000  # flex bills at batch rates
    assert prices.cost_nanos("gpt-4o-mini-2024-07-18", "standard", 1, 0, 0) == 150  # a dated snapshot
    assert prices.cost_nanos("no-such-model", "standard", 1, 0, 0) is None


def test_usage_of_an_answer_reads_cached_tokens_and_tolerates_a_body_without_usage():
    body = {"usage": {"prompt_tokens": 2000, "completion_tokens": 100,
                      "prompt_tokens_details": {"cached_tokens": 1536}}}
    got = usage.of_answer(body, "gpt-4o-mini", "standard")
    assert (got.requests, got.input_tokens, got.cached_tokens, got.output_tokens) == (1, 2000, 1536, 100)
    assert usage.of_answer({}, "gpt-4o-mini", "standard") == usage.Usage(requests=1)
    assert usage.of_answer(body, "unknown", "standard").unpriced == 1


def test_a_job_with_unpriced_answers_has_no_estimate():
    job = SimpleNamespace(usage_requests=2, usage_input_tokens=10, usage_cached_tokens=0, usage_output_tokens=1,
                          usage_cost_nanos=5, usage_unpriced=1, flex_fallbacks=0)
    assert usage.to_dict(job)["estimatedCostUsd"] is None


def test_the_stable_prompt_reaches_the_cacheable_size_for_any_taxonomy():
    for categories in (DEFAULT_CATEGORIES, ["Travel", "Food"], ["Airfare"]):
        messages = prompt.messages(categories, [{"id": "v0", "vendor": "X", "description": ""}])
        assert messages[0]["content"] == prompt.stable(tuple(categories))  # stable part first, items last
        assert prompt.estimate(messages[0]["content"]) >= prompt.CACHEABLE_TOKENS


def test_the_prompt_cache_key_is_per_tenant_and_taxonomy_and_names_neither():
    key = prompt.cache_key("acme-corp", DEFAULT_CATEGORIES)
    assert "acme" not in key and "Airfare" not in key
    assert key == prompt.cache_key("acme-corp", list(reversed(DEFAULT_CATEGORIES)))  # the taxonomy, not its order
    assert key != prompt.cache_key("globex", DEFAULT_CATEGORIES)
    assert key != prompt.cache_key("acme-corp", ["Airfare"])


def test_scheduled_reports_default_to_batch_and_the_api_to_standard():
    report = SimpleNamespace(lane=None)
    assert lane_of(report, "api") == "standard"  # type: ignore[arg-type]
    assert lane_of(report, "schedule") == "batch"  # type: ignore[arg-type]
    assert lane_of(SimpleNamespace(lane="flex"), "schedule") == "flex"  # type: ignore[arg-type]
    assert lane_of(SimpleNamespace(lane="flex"), "api", "standard") == "standard"  # type: ignore[arg-type]
