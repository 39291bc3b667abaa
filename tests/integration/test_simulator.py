"""The local provider simulator, driven through the real openai SDK."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from chalicelib.categorize import provider
from local.simulator import DEFAULT_TAXONOMY, Simulator

ROOT = Path(__file__).resolve().parents[2]
ITEMS = [
    {"id": "v1", "vendor": "UBER *TRIP 8841", "description": "ride to airport"},
    {"id": "v2", "vendor": "MARRIOTT DOWNTOWN", "description": "2 nights"},
    {"id": "v3", "vendor": "Blue Lantern LLC", "description": ""},
]


def schema(categories: list[str]) -> dict[str, Any]:
    """A response_format with the row schema inline (the worker's, provider.answer_model, puts it in `$defs`)."""
    item = {"type": "object", "additionalProperties": False, "required": ["id", "category", "confidence"],
            "properties": {"id": {"type": "string"}, "category": {"type": "string", "enum": categories},
                           "confidence": {"type": "number"}}}
    return {"type": "json_schema", "json_schema": {"name": "expense_categories", "strict": True, "schema": {
        "type": "object", "additionalProperties": False, "required": ["items"],
        "properties": {"items": {"type": "array", "items": item}}}}}


def client(sim: Simulator, timeout: float = 5.0) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.url, api_key="test", max_retries=0, timeout=timeout)


def ask(api: openai.OpenAI, items: list[dict[str, str]] = ITEMS, categories: list[str] = DEFAULT_TAXONOMY,
        model: str = "gpt-4o-mini") -> Any:
    return api.chat.completions.create(
        model=model, temperature=0,
        messages=[{"role": "system", "content": "Categorize."},
                  {"role": "user", "content": "Allowed categories: " + json.dumps(categories)},
                  {"role": "user", "content": json.dumps(items)}],
        response_format=schema(categories))


def answers(completion: Any) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in json.loads(completion.choices[0].message.content)["items"]}


def test_strict_schema_request_gets_one_enum_answer_per_id() -> None:
    with Simulator() as sim:
        completion = ask(client(sim))
    assert completion.object == "chat.completion"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    rows = answers(completion)
    assert sorted(rows) == ["v1", "v2", "v3"]
    assert all(row["category"] in DEFAULT_TAXONOMY for row in rows.values())


def test_keyword_vendors_get_keyword_category_and_unknown_vendors_a_stable_pick() -> None:
    with Simulator() as sim:
        api = client(sim)
        first, second = answers(ask(api)), answers(ask(api))
    assert first["v1"] == {"id": "v1", "category": "Ground Transportation", "confidence": 0.95}
    assert first["v2"] == {"id": "v2", "category": "Lodging", "confidence": 0.95}
    assert first["v3"]["confidence"] == 0.6
    assert first == second


def test_answers_only_use_categories_of_the_request_enum() -> None:
    enum = ["Lodging", "Other"]
    with Simulator() as sim:
        rows = answers(ask(client(sim), categories=enum))
    assert rows["v2"]["category"] == "Lodging"
    assert rows["v1"]["category"] in enum and rows["v1"]["confidence"] == 0.6


def parse(api: openai.OpenAI, categories: list[str], items: list[dict[str, str]] = ITEMS) -> Any:
    """What the categorize worker asks: the SDK's structured-output parse with the taxonomy's pydantic model."""
    return api.chat.completions.parse(
        model="gpt-4o-mini", temperature=0,
        messages=[{"role": "user", "content": "Allowed categories: " + json.dumps(categories)},
                  {"role": "user", "content": json.dumps(items)}],
        response_format=provider.answer_model(tuple(categories)))


def test_the_sdk_s_parse_with_the_worker_s_model_gets_answers_of_the_request_taxonomy() -> None:
    """The pydantic model's schema keeps the row in `$defs` behind a `$ref`: the simulator follows it to the enum."""
    enum = ["Lodging", "Rides & Taxis"]
    assert "$defs" in provider.answer_schema(enum)["json_schema"]["schema"]
    with Simulator() as sim:
        completion = parse(client(sim), enum)
    answer = completion.choices[0].message.parsed
    assert isinstance(answer, provider.ModelAnswer)
    rows = {row.id: row for row in answer.items}
    assert sorted(rows) == ["v1", "v2", "v3"]
    assert rows["v2"].category == "Lodging" and rows["v2"].confidence == 0.95
    assert all(row.category in enum for row in rows.values())


def test_a_refusal_through_the_sdk_s_parse_has_no_parsed_answer() -> None:
    with Simulator(prefusal=1.0) as sim:
        message = parse(client(sim), list(DEFAULT_TAXONOMY)).choices[0].message
    assert message.refusal and message.parsed is None and message.content is None


def test_rpm_limit_answers_429_that_the_sdk_raises_with_retry_headers() -> None:
    with Simulator(rpm=60) as sim:  # burst of 1 request per second
        api = client(sim)
        ask(api)
        with pytest.raises(openai.RateLimitError) as caught:
            ask(api)
    err = caught.value
    headers = err.response.headers
    assert err.code == "rate_limit_exceeded" and err.type == "requests"
    assert headers["retry-after"] == "1"
    assert 0 < int(headers["retry-after-ms"]) <= 1000
    assert headers["x-ratelimit-limit-requests"] == "60"
    assert re.fullmatch(r"\d+ms|1s", headers["x-ratelimit-reset-requests"])  # one request back to a full bucket
    assert "x-ratelimit-remaining-requests" in headers


def test_successful_answers_carry_ratelimit_headers() -> None:
    with Simulator(rpm=600, tpm=150_000) as sim:
        raw = client(sim).chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": json.dumps(ITEMS)}])
    assert raw.status_code == 200
    assert raw.headers["x-ratelimit-limit-requests"] == "600"
    assert raw.headers["x-ratelimit-remaining-requests"] == "599"
    assert raw.headers["x-ratelimit-limit-tokens"] == "150000"
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) < 150_000
    assert "retry-after" not in raw.headers


def test_tpm_limit_refuses_requests_beyond_the_token_budget() -> None:
    with Simulator(tpm=400) as sim:  # ~150 prompt + 150 completion tokens per request
        api = client(sim)
        ask(api)
        with pytest.raises(openai.RateLimitError) as caught:
            ask(api)
    assert caught.value.type == "tokens"
    assert caught.value.response.headers["x-ratelimit-limit-tokens"] == "400"
    assert int(caught.value.response.headers["retry-after"]) >= 1


def test_insufficient_quota_is_a_429_with_its_own_code_and_no_retry_after() -> None:
    with Simulator(quota_exhausted=True) as sim:
        with pytest.raises(openai.RateLimitError) as caught:
            ask(client(sim))
    assert caught.value.code == "insufficient_quota"
    assert caught.value.body["type"] == "insufficient_quota"
    assert "retry-after" not in caught.value.response.headers


def test_auth_error_is_a_401_invalid_api_key() -> None:
    with Simulator(auth_error=True) as sim:
        with pytest.raises(openai.AuthenticationError) as caught:
            ask(client(sim))
    assert caught.value.code == "invalid_api_key"


def test_unknown_model_is_a_404_model_not_found() -> None:
    with Simulator(models=["gpt-4o-mini"]) as sim:
        api = client(sim)
        ask(api, model="gpt-4o-mini")
        with pytest.raises(openai.NotFoundError) as caught:
            ask(api, model="gpt-nope")
        listed = [m.id for m in api.models.list()]
    assert caught.value.code == "model_not_found"
    assert "`gpt-nope`" in caught.value.message
    assert listed == ["gpt-4o-mini"]


def test_fail_first_fails_the_first_requests_then_answers() -> None:
    with Simulator(fail_first=2, fail_status=503) as sim:
        api = client(sim)
        for _ in range(2):
            with pytest.raises(openai.InternalServerError) as caught:
                ask(api)
            assert caught.value.status_code == 503
        assert len(answers(ask(api))) == 3


def test_rate_limit_burst_answers_the_next_requests_429_with_the_configured_wait() -> None:
    with Simulator() as sim:
        api = client(sim)
        ask(api)
        sim.configure(rate_limit_burst=1, burst_retry_after=2.5)
        with pytest.raises(openai.RateLimitError) as caught:
            ask(api)
        ask(api)
    assert caught.value.response.headers["retry-after"] == "3"
    assert caught.value.response.headers["retry-after-ms"] == "2500"


def test_malformed_fault_returns_unparseable_content() -> None:
    with Simulator(pmalformed=1.0) as sim:
        completion = ask(client(sim))
    with pytest.raises(json.JSONDecodeError):
        json.loads(completion.choices[0].message.content)


def test_missing_and_bad_category_faults_damage_one_item_each() -> None:
    with Simulator(pmissing=1.0) as sim:
        assert len(answers(ask(client(sim)))) == 2
    with Simulator(pbadcategory=1.0) as sim:
        rows = answers(ask(client(sim)))
    assert len(rows) == 3
    assert sum(row["category"] not in DEFAULT_TAXONOMY for row in rows.values()) == 1


def test_bad_row_faults_give_one_row_an_id_or_category_that_is_not_a_string() -> None:
    def spoiled(rows: list[Any]) -> list[Any]:
        return [r for r in rows if not (isinstance(r["id"], str) and isinstance(r["category"], str))]

    with Simulator(pbadrow=1.0) as sim:
        api = client(sim)
        for _ in range(4):
            rows = json.loads(ask(api).choices[0].message.content)["items"]
            assert len(rows) == 3 and len(spoiled(rows)) == 1
        assert sim.stats()["faults"] == {"badrows": 4}
    with Simulator(badrow_vendors="marriott downtown") as sim:
        first = json.loads(ask(client(sim)).choices[0].message.content)["items"]
        again = json.loads(ask(client(sim)).choices[0].message.content)["items"]
    assert spoiled(first) == spoiled(again) and len(spoiled(first)) == 1  # the same vendor, the same shape
    assert [r["id"] for r in first if r not in spoiled(first)] == ["v1", "v3"]  # only MARRIOTT DOWNTOWN's row


def test_refusal_fault_answers_a_refusal_with_no_content() -> None:
    with Simulator(prefusal=1.0) as sim:
        completion = ask(client(sim))
        assert sim.stats()["faults"] == {"refusal": 1}
    message = completion.choices[0].message
    assert message.content is None and message.refusal


def test_faults_repeat_for_the_same_seed() -> None:
    def statuses(sim: Simulator) -> list[int]:
        out = []
        for _ in range(12):
            try:
                ask(api)
                out.append(200)
            except openai.InternalServerError as err:
                out.append(err.status_code)
        return out

    with Simulator(p500=0.5, seed=7) as sim:
        api = client(sim)
        first = statuses(sim)
        sim.reset()
        assert statuses(sim) == first
    assert 200 in first and 500 in first


def test_timeout_fault_makes_the_client_time_out() -> None:
    started = time.monotonic()
    with Simulator(ptimeout=1.0, timeout_seconds=30) as sim:
        with pytest.raises(openai.APITimeoutError):
            ask(client(sim, timeout=0.3))
    assert time.monotonic() - started < 3  # stop() wakes the sleeping handler


def test_latency_applies_per_request_and_requests_run_concurrently() -> None:
    with Simulator(latency=0.4) as sim:
        api = client(sim)
        started = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            done = list(pool.map(lambda _: ask(api), range(4)))
        elapsed = time.monotonic() - started
    assert len(done) == 4
    assert 0.4 <= elapsed < 1.2


def test_stats_count_requests_items_and_vendors() -> None:
    with Simulator(rpm=60) as sim:
        api = client(sim)
        ask(api)
        with pytest.raises(openai.RateLimitError):
            ask(api, items=ITEMS[:1])
        stats = sim.stats()
    assert stats["requests"] == 2 and stats["ok"] == 1 and stats["rate_limited"] == 1
    assert stats["status_counts"] == {"200": 1, "429": 1}
    assert stats["items"] == 4 and stats["items_answered"] == 3
    assert stats["requests_by_vendor"]["uber *trip 8841"] == 2
    assert stats["answered_by_vendor"]["uber *trip 8841"] == 1
    assert stats["max_requests_in_any_60s_window"] == 1  # the 429 is not an accepted request
    assert [(e["status"], e["items"]) for e in stats["log"]] == [(200, 3), (429, 1)]


def test_requests_sent_before_retry_after_elapsed_count_as_early_retries() -> None:
    with Simulator(rpm=60, early_grace=0.0) as sim:
        api = client(sim)
        ask(api)
        for _ in range(2):
            with pytest.raises(openai.RateLimitError):
                ask(api)
        assert sim.stats()["early_retries"] == 1  # the second 429 ignored the first one's retry-after


def test_a_client_honouring_retry_after_ms_is_never_early() -> None:
    with Simulator(rpm=600, burst_seconds=0.1, early_grace=0.0) as sim:  # one request per 100 ms
        api = client(sim)
        ask(api)
        with pytest.raises(openai.RateLimitError) as caught:
            ask(api)
        time.sleep(int(caught.value.response.headers["retry-after-ms"]) / 1000)  # what the provider asked for
        ask(api)
        stats = sim.stats()
    assert stats["early_retries"] == 0 and stats["ok"] == 2


def test_control_endpoints_configure_report_and_reset_over_http() -> None:
    with Simulator() as sim:
        root = sim.url.removesuffix("/v1")
        assert requests.post(f"{root}/_sim/config", json={"quota_exhausted": True}, timeout=5).json()[
            "quota_exhausted"] is True
        with pytest.raises(openai.RateLimitError):
            ask(client(sim))
        stats = requests.get(f"{root}/_sim/stats", timeout=5).json()
        assert stats["requests"] == 1 and stats["status_counts"] == {"429": 1} and len(stats["log"]) == 1
        assert requests.post(f"{root}/_sim/config", json={"nope": 1}, timeout=5).status_code == 400
        assert requests.post(f"{root}/_sim/reset", timeout=5).status_code == 200
        assert requests.get(f"{root}/_sim/stats?log=0", timeout=5).json()["requests"] == 0


def test_unknown_path_is_a_404_json_error() -> None:
    with Simulator() as sim:
        response = requests.post(sim.url + "/embeddings", json={}, timeout=5)
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_configure_rejects_unknown_settings_and_bad_probabilities() -> None:
    with pytest.raises(ValueError):
        Simulator(rmp=10)
    with pytest.raises(ValueError):
        Simulator(p500=2)


def test_command_line_prints_base_url_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "local.simulator", "--port", "0", "--rpm", "600", "--models",
                             "a,b"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        models = requests.get(url + "/models", timeout=5).json()
        assert [m["id"] for m in models["data"]] == ["a", "b"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
