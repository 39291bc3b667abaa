"""The model provider through the openai SDK: one structured-output request per batch of vendors.

The answer's shape is one pydantic model per taxonomy (`answer_model`): the SDK's `chat.completions.parse` sends it
as the strict json_schema and validates the answer against it. A provider without strict decoding (or a proxy in
front of one) can still answer rows off the schema; the SDK validates the answer as a whole, so then the answer is
read row by row against the same model, and a bad row is a bad answer for its item only (`parse_answer`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import Annotated, Any, Literal, cast

import openai
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from chalicelib import observability
from chalicelib.categorize import prompt, usage
from chalicelib.categorize.errors import ProviderError
from chalicelib.categorize.retry import RATE_LIMIT_FLOOR_SECONDS, RATE_LIMITED
from chalicelib.categorize.types import Answer, Item

log = logging.getLogger(__name__)

@lru_cache(maxsize=4)
def client(api_key: str, base_url: str | None, timeout: float = 30.0) -> openai.OpenAI:
    # max_retries=0: the declared retry policy is the one layer that retries.
    return openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout)


class AnswerRow(BaseModel):
    """One row of the model's answer. Strict: a number is not an id, "0.9" or true is not a confidence."""

    model_config = ConfigDict(strict=True)

    id: str
    category: str  # narrowed to the request's taxonomy by answer_model
    confidence: Annotated[float, Field(allow_inf_nan=False)]  # kept within 0..1 when read, not refused outside


class ModelAnswer(BaseModel):
    model_config = ConfigDict(strict=True)

    items: list[AnswerRow]


@lru_cache(maxsize=64)
def row_model(categories: tuple[str, ...]) -> type[AnswerRow]:
    """A row for one taxonomy: its categories are the `category` enum of the schema the provider decodes to."""
    # Literal[...] of a runtime tuple: the subscription is made at run time, where a type checker cannot follow.
    category: Any = Literal.__getitem__(categories) if categories else str
    return create_model("ExpenseCategory", __base__=AnswerRow, category=(category, ...))


@lru_cache(maxsize=64)
def answer_model(categories: tuple[str, ...]) -> type[ModelAnswer]:
    """The answer for one taxonomy, as `chat.completions.parse` sends it (response_format) and reads it back."""
    rows: Any = list.__class_getitem__(row_model(categories))  # list[<the taxonomy's row>], made at run time
    return create_model("ExpenseCategories", __base__=ModelAnswer, items=(rows, ...))


def answer_schema(categories: list[str]) -> dict[str, Any]:
    """The response_format that `ask` sends for `categories` (the SDK derives it from answer_model)."""
    return cast("dict[str, Any]", openai.lib.type_to_response_format_param(answer_model(tuple(categories))))


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


def _number(text: str | None, scale: float) -> float | None:
    """A non-negative number of seconds; None for text that is none (nan and inf are no wait to act on)."""
    if text is None:
        return None
    try:
        value = float(text) * scale
    except (TypeError, ValueError):
        return None
    return max(0.0, value) if math.isfinite(value) else None


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
            try:
                total += float(number) * scale
            except ValueError:  # "1.2.3s"
                return None
            number = ""
            i += len(unit) - 1
        i += 1
    try:
        total += float(number) if number else 0.0
    except ValueError:
        return None
    return total if math.isfinite(total) else None


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


@lru_cache(maxsize=64)
def schema_text(categories: tuple[str, ...]) -> str:
    """The response schema of a taxonomy as the request carries it (made once per taxonomy, for estimate_tokens)."""
    return json.dumps(answer_schema(list(categories)))


def estimate_tokens(messages: list[dict[str, str]], max_tokens: int, schema: str = "") -> int:
    """What the provider counts against tokens-per-minute before it answers: prompt plus max output.

    The prompt is counted from the request itself, with no tokenizer to download: about 4 characters a token for
    ASCII (English, JSON), a token for every other character (most scripts take 1 to 3 bytes a token: counting one
    per character errs high), a few tokens of framing per message, and the response schema, which structured
    outputs put in front of the prompt. The answer's `usage` settles the difference (limiter.answered).
    """
    text = "".join(m["content"] for m in messages) + schema
    ascii_chars = len(text.encode("ascii", "ignore"))
    return -(-ascii_chars // 4) + (len(text) - ascii_chars) + 4 * len(messages) + 3 + max_tokens


def _used(raw: Any) -> int | None:
    """The tokens the provider says the request used (`usage.total_tokens`), None when it does not say."""
    try:
        usage = raw.parse().usage
    except Exception:  # an answer the SDK cannot read (cut off, filtered, not a completion): read the body
        usage = _field(_body(raw), "usage")
    total = _field(usage, "total_tokens")
    return total if isinstance(total, int) and not isinstance(total, bool) and total >= 0 else None


def _tell(limiter: Any, what: str, *args: Any, **kwargs: Any) -> None:
    """Advice to the fleet's limiter (a hold, an answer's headers): a failure to record it is logged, never raised
    in place of the answer or the error it is about."""
    try:
        getattr(limiter, what)(*args, **kwargs)
    except Exception:
        log.warning("could not record %s at the shared limiter; other workers find out on their own", what,
                    exc_info=True)


def _hold_fleet(limiter: Any, retry_after: float | None, tokens: int, headers: Any = None) -> None:
    """Tell the fleet's limiter about a 429, so every worker's next request waits out the provider's window.

    The window as exactly as the provider says it: retry-after-ms when it is there (a rolling window reopens in
    tens of milliseconds; the whole-second retry-after would idle the fleet up to a second for each 429), else the
    hint the retry loop waits for. No hint: the first backoff (RATE_LIMIT_FLOOR_SECONDS). The request that met the
    429 still waits its own retry out, never less than that floor (retry.rate_limit_wait); the fleet's pace after
    the hold keeps the others from spinning.
    """
    exact = _number(headers.get("retry-after-ms"), 0.001) if headers is not None else None
    seconds = exact if exact else retry_after if retry_after else RATE_LIMIT_FLOOR_SECONDS
    _tell(limiter, "hold", seconds, tokens)


FLEX_UNAVAILABLE = "resource_unavailable"  # flex processing's 429 when it has no capacity (not billed)


def _flex_unavailable(err: Exception) -> bool:
    """The flex tier's "429 Resource Unavailable": no capacity for flex now, not a rate limit of the account."""
    body = getattr(err, "body", None)
    code = body.get("code") if isinstance(body, dict) else None
    return isinstance(err, openai.RateLimitError) and FLEX_UNAVAILABLE in (code, getattr(err, "code", None))


def ask(api: openai.OpenAI, model: str, items: list[Item], categories: list[str], limiter: Any = None, *,
        lane: str = "standard", cache_key: str | None = None, meter: usage.Meter | None = None,
        timeout: float | None = None) -> list[Answer]:
    """One request; returns the answers that are valid (missing or invalid ones are left out).

    The stable part of the prompt comes first (prompt.py) with `cache_key` as the provider's `prompt_cache_key`.
    On the `flex` lane the request asks for the flex service tier; when flex has no capacity (429
    resource_unavailable, not billed) it is sent once more at once on the standard tier, counted as a flex
    fallback: the lane trades speed for price, never lines. `meter` adds up each answer's usage, priced at the
    lane that served it. `timeout` (flex: longer than the client's) applies to the flex request only.
    """
    payload = [{"id": i.id, "vendor": i.vendor, "description": i.description} for i in items]
    messages: list[Any] = prompt.messages(categories, payload)
    budget = completion_budget(items, categories)
    tokens = estimate_tokens(messages, budget, schema_text(tuple(categories)))
    if limiter is not None:
        # The client is made (a lazily made one, ~0.1 s at a worker's first request) and the answer's model built
        # before the turn, not between the turn and the send: a request that leaves late crowds the next ones.
        _ = api.chat
        answer_model(tuple(categories))
        limiter.acquire(tokens)
    served, fallbacks = lane, 0
    while True:
        try:
            # with_raw_response: the x-ratelimit-remaining-* headers of the answer feed the fleet's limiter.
            sender = api.with_options(timeout=timeout) if timeout and served == "flex" else api
            raw = sender.chat.completions.with_raw_response.parse(
                model=model, temperature=0, messages=messages, max_completion_tokens=budget,
                response_format=answer_model(tuple(categories)),
                prompt_cache_key=cache_key if cache_key else openai.omit,
                service_tier="flex" if served == "flex" else openai.omit)
            break
        except openai.OpenAIError as err:
            if served == "flex" and _flex_unavailable(err):
                # The same request again on the standard tier, within the turn the limiter gave: flex refused it
                # without doing any work.
                served, fallbacks = "standard", 1
                continue
            observability.model_request(rate_limited=isinstance(err, openai.RateLimitError))
            error = classify(err)
            if limiter is not None:
                # A 429 advertises the limits too. No answer at all (a timeout, a dropped connection) teaches
                # nothing, but still frees a probe: it must not hold every other request for PROBE_SECONDS.
                headers = err.response.headers if isinstance(err, openai.APIStatusError) else None
                _tell(limiter, "answered", headers, ok=False)
                if error.name == RATE_LIMITED:
                    _hold_fleet(limiter, error.retry_after, tokens, headers)
            if meter is not None and fallbacks:
                meter.add(usage.Usage(flex_fallbacks=fallbacks))
            raise error from err
    observability.model_request()
    if limiter is not None:
        # The answer's headers (the limits, what is left) and its usage, which settles the tokens reserved.
        _tell(limiter, "answered", raw.headers, reserved=tokens, used=_used(raw))
    if meter is not None:
        meter.add(usage.of_answer(_body(raw), model, served) + usage.Usage(flex_fallbacks=fallbacks))
    return read_answer(raw, items, categories)


def read_answer(raw: Any, items: list[Item], categories: list[str]) -> list[Answer]:
    """The valid answers of a 200 (`raw`, the SDK's raw response to `chat.completions.parse`); never raises.

    Every item of the request gets a bad answer (asked again once, then flagged by pipeline._ask_chunk) when the
    model refused, the answer was cut off at the token budget or filtered, or the body is not a completion at all
    (a gateway's page).
    """
    try:
        completion = raw.parse()
    except (openai.LengthFinishReasonError, openai.ContentFilterFinishReasonError):
        return []
    except (ValueError, TypeError, AttributeError):
        # The SDK could not read the answer as one ExpenseCategories (pydantic's ValidationError is a ValueError),
        # or the body is not a completion: read the body's rows one by one.
        return _from_message(_message(_body(raw)), items, categories)
    return _from_message(_message(completion), items, categories)


def _from_message(message: Any, items: list[Item], categories: list[str]) -> list[Answer]:
    """The answers of the completion's first message (the SDK's object, or its JSON when the SDK could not read it).

    A refusal (`message.refusal`) means the model declined the request: whatever content came with it is not an
    answer, so every item of the request is a bad answer, exactly as for an answer that is not the schema.
    """
    refusal = _field(message, "refusal")
    if refusal:
        log.info("the model refused a request of %d items: %.200s", len(items), refusal)
        return []
    parsed = _field(message, "parsed")
    if isinstance(parsed, ModelAnswer):  # the SDK validated every row against the taxonomy's model
        return _answers(((row.id, row) for row in parsed.items), items)
    return parse_answer(_field(message, "content"), items, categories)


def _body(raw: Any) -> Any:
    try:
        return raw.http_response.json()
    except (AttributeError, ValueError):
        return None


def _field(obj: Any, name: str) -> Any:
    """A field of the SDK's completion objects, or of the same completion as JSON (a dict); None when missing.

    The completion is data from outside: any field may be missing or of another type.
    """
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def _message(completion: Any) -> Any:
    choices = _field(completion, "choices")
    if not isinstance(choices, list) or not choices:
        return None
    return _field(choices[0], "message")


def parse_answer(content: Any, items: list[Item], categories: list[str]) -> list[Answer]:
    """The valid answers in `content`, read row by row; never raises.

    The answer is data from outside: anything that is not the schema is a bad answer for the items it touches,
    which are left out (pipeline._ask_chunk asks again once for them, then flags them). A row is valid when the
    taxonomy's row model (row_model) validates it: an `id` string this request asked about, a
    `category` string of the taxonomy and a finite number `confidence` (kept within 0..1).
    """
    if not isinstance(content, str):
        return []
    try:
        data = json.loads(content)
    except (ValueError, RecursionError):  # not JSON, or nested past what the parser takes
        return []
    rows = data.get("items") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        return []
    return _answers(_rows(rows, row_model(tuple(categories))), items)


def _rows(rows: list[Any], model: type[AnswerRow]) -> Iterator[tuple[str, AnswerRow | None]]:
    """Each row that names an item by a string id, with the row validated (None: a bad row for that item)."""
    for row in rows:
        item_id = row.get("id") if isinstance(row, dict) else None
        if not isinstance(item_id, str):
            continue  # a row that names no item answers none
        try:
            yield item_id, model.model_validate(row)
        except ValidationError:
            yield item_id, None


def _answers(rows: Iterable[tuple[str, AnswerRow | None]], items: list[Item]) -> list[Answer]:
    """The answers of valid rows about items of this request, each id answered exactly once.

    An id answered more than once is a bad answer even when the rows agree: the prompt asks for each id once, so a
    repeat is not an answer to trust; a bad row spoils its id too (a later row for it is a repeat, not an answer).
    """
    wanted = {i.id for i in items}
    out: dict[str, Answer] = {}
    spoiled: set[str] = set()
    for item_id, row in rows:
        if item_id not in wanted:
            continue  # a row that names no item of this request answers none
        if row is None or item_id in out or item_id in spoiled:
            spoiled.add(item_id)
            continue
        out[item_id] = Answer(item_id, row.category, round(min(1.0, max(0.0, float(row.confidence))), 3), "model",
                              False)
    return [answer for item_id, answer in out.items() if item_id not in spoiled]
