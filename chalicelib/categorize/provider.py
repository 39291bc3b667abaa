"""The model provider through the openai SDK: one strict-JSON request per batch of vendors."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import openai

from chalicelib import observability
from chalicelib.categorize.errors import ProviderError
from chalicelib.categorize.types import Answer, Item

SYSTEM_PROMPT = (
    "You categorize business expense lines. For every item in the user's JSON array, answer one object "
    "with the item's id, the best category from the allowed list, and your confidence from 0 to 1. "
    "Answer every id exactly once."
)


@lru_cache(maxsize=4)
def client(api_key: str, base_url: str | None, timeout: float = 30.0) -> openai.OpenAI:
    # max_retries=0: the declared retry policy is the one layer that retries.
    return openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout)


def answer_schema(categories: list[str]) -> dict[str, Any]:
    item = {"type": "object", "additionalProperties": False, "required": ["id", "category", "confidence"],
            "properties": {"id": {"type": "string"}, "category": {"type": "string", "enum": list(categories)},
                           "confidence": {"type": "number"}}}
    return {"type": "object", "additionalProperties": False, "required": ["items"],
            "properties": {"items": {"type": "array", "items": item}}}


def _wait_hint(headers: Any) -> float | None:
    """The provider's own wait, from retry-after-ms, retry-after or x-ratelimit-reset-*."""
    if headers is None:
        return None
    waits = []
    if headers.get("retry-after-ms"):
        waits.append(_number(headers["retry-after-ms"], 0.001))
    if headers.get("retry-after"):
        waits.append(_number(headers["retry-after"], 1.0))
    if not [w for w in waits if w is not None]:
        waits += [_duration(headers.get(h)) for h in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")]
    known = [w for w in waits if w is not None]
    return max(known) if known else None


def _number(text: str, scale: float) -> float | None:
    try:
        return max(0.0, float(text) * scale)
    except (TypeError, ValueError):
        return None


def _duration(text: str | None) -> float | None:
    """'1.5s', '120ms', '1m30s' as OpenAI writes reset times."""
    if not text:
        return None
    total, number, rest = 0.0, "", text.strip()
    i = 0
    while i < len(rest):
        ch = rest[i]
        if ch.isdigit() or ch == ".":
            number += ch
        else:
            unit = "ms" if rest[i:i + 2] == "ms" else ch
            scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}.get(unit)
            if scale is None or not number:
                return None
            total += float(number) * scale
            number = ""
            i += len(unit) - 1
        i += 1
    return total if not number else total + float(number)


def classify(err: Exception) -> ProviderError:
    """Map an openai SDK exception to a named ProviderError."""
    body = getattr(err, "body", None)
    code = (body or {}).get("code") if isinstance(body, dict) else getattr(err, "code", None)
    if isinstance(err, openai.RateLimitError):
        if code == "insufficient_quota" or getattr(err, "code", None) == "insufficient_quota":
            return ProviderError("Provider.QuotaExhausted", "The model provider account has no quota left. Add "
                                 "credit or raise the quota, then retry the job.", fatal=True)
        return ProviderError("Provider.RateLimited", str(err), retry_after=_wait_hint(err.response.headers))
    if isinstance(err, (openai.AuthenticationError, openai.PermissionDeniedError)):
        return ProviderError("Provider.AuthFailed", "The model provider rejected the API key (401/403). Check "
                             "OPENAI_API_KEY, then retry the job.", fatal=True)
    if isinstance(err, openai.NotFoundError):
        return ProviderError("Provider.ModelNotFound", "The model provider does not know the configured model. "
                             "Check OPENAI_MODEL, then retry the job.", fatal=True)
    if isinstance(err, openai.APITimeoutError):
        return ProviderError("Provider.Timeout", "The model request timed out.")
    if isinstance(err, openai.APIConnectionError):
        return ProviderError("Provider.Connection", "The model provider could not be reached.")
    if isinstance(err, openai.APIStatusError) and err.status_code >= 500:
        return ProviderError("Provider.ServerError", f"The model provider answered {err.status_code}.")
    return ProviderError("Provider.BadRequest", f"The model provider refused the request: {err}")


def completion_budget(items: list[Item], categories: list[str]) -> int:
    """max_completion_tokens for a request, from the longest answer the taxonomy allows.

    Providers count max_completion_tokens against tokens-per-minute when a request arrives, so a loose budget
    spends quota that no answer uses. An answer row (`{"id":"v12","category":"…","confidence":0.95},`) is about
    15 tokens plus its category's: 20 plus one token per 2 UTF-8 bytes of the longest category leaves room to
    spare for English (about 4 characters a token) and for scripts of 1 to 3 bytes a token.
    """
    longest = max((len(c.encode()) for c in categories), default=0)
    return 16 + (20 + -(-longest // 2)) * len(items)


def estimate_tokens(messages: list[dict[str, str]], max_tokens: int) -> int:
    """What the provider counts against tokens-per-minute before it answers: prompt plus max output."""
    return sum(len(m["content"]) for m in messages) // 4 + 8 * len(messages) + max_tokens


def _remaining(headers: Any, name: str) -> float | None:
    return _number(headers.get(f"x-ratelimit-remaining-{name}"), 1.0) if headers is not None else None


def ask(api: openai.OpenAI, model: str, items: list[Item], categories: list[str], limiter: Any = None) -> list[Answer]:
    """One request; returns the answers that are valid (missing or invalid ones are left out)."""
    payload = [{"id": i.id, "vendor": i.vendor, "description": i.description} for i in items]
    messages = [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": "Allowed categories: " + json.dumps(categories)},
                {"role": "user", "content": json.dumps(payload)}]
    budget = completion_budget(items, categories)
    if limiter is not None:
        limiter.acquire(estimate_tokens(messages, budget))
    try:
        raw = api.chat.completions.with_raw_response.create(
            model=model, temperature=0, messages=messages, max_completion_tokens=budget,
            response_format={"type": "json_schema", "json_schema": {
                "name": "expense_categories", "strict": True, "schema": answer_schema(categories)}},
        )
        completion = raw.parse()
    except openai.OpenAIError as err:
        observability.model_request(rate_limited=isinstance(err, openai.RateLimitError))
        raise classify(err) from err
    observability.model_request()
    if limiter is not None:
        limiter.observe(_remaining(raw.headers, "requests"), _remaining(raw.headers, "tokens"))
    return parse_answer(completion.choices[0].message.content if completion.choices else None, items, categories)


def parse_answer(content: str | None, items: list[Item], categories: list[str]) -> list[Answer]:
    try:
        data = json.loads(content or "")
        rows = data["items"] if isinstance(data, dict) else None
    except (ValueError, KeyError, TypeError):
        rows = None
    if not isinstance(rows, list):
        return []
    wanted, allowed, out = {i.id for i in items}, set(categories), {}
    for row in rows:
        if not isinstance(row, dict) or row.get("id") not in wanted or row.get("category") not in allowed:
            continue
        confidence = row.get("confidence")
        if not isinstance(confidence, (int, float)) or isinstance(confidence, bool):
            continue
        out[row["id"]] = Answer(row["id"], row["category"], round(min(1.0, max(0.0, float(confidence))), 3),
                                "model", False)
    return list(out.values())
