"""The provider's Batch API (OpenAI `/v1/files` + `/v1/batches`) for the batch lane: one JSONL file of chat
completion requests keyed by `custom_id`, a 24 h completion window, and the answers read back by custom_id.

Each request is the one `provider.ask` sends (the same prompt, schema, prompt_cache_key and token budget), as a
line `{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}`. The output file holds a line
`{"custom_id", "response": {"status_code", "body"}, "error"}` per answered request; the error file those that
failed or expired (`error.code` "batch_expired"). A request in neither file was never answered.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from chalicelib.categorize import prompt, provider, usage
from chalicelib.categorize.types import Answer, Item

ENDPOINT = "/v1/chat/completions"
WINDOW = "24h"
FINISHED = ("completed", "expired", "cancelled", "failed")  # the batch will answer nothing more
# A batch that answered nothing (its input refused) and bills nothing: `find` passes over it. A cancelled one is
# found: what it answered before the cancel is billed, and its job counts it and keeps its answers.
UNANSWERED = ("failed",)
# How far back `find` looks: the provider lists batches newest first, so this bounds the pages read (an orphan is
# looked for when its job's message comes back: the queue's visibility timeout, or the reaper, minutes later).
FIND_LOOKBACK_SECONDS = 24 * 3600


def request_line(custom_id: str, model: str, items: list[Item], categories: list[str], cache_key: str) -> dict:
    payload = [{"id": i.id, "vendor": i.vendor, "description": i.description} for i in items]
    body = {"model": model, "temperature": 0, "messages": prompt.messages(categories, payload),
            "max_completion_tokens": provider.completion_budget(items, categories),
            "response_format": provider.answer_schema(categories), "prompt_cache_key": cache_key}
    return {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}


def submit(api: Any, lines: list[dict], metadata: dict[str, str]) -> str:
    """Upload the requests and create the batch; returns the batch id."""
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = api.files.create(file=("requests.jsonl", data, "application/jsonl"), purpose="batch")
    created = api.batches.create(input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window=WINDOW,
                                 metadata=metadata)
    return str(created.id)


def find(api: Any, metadata: dict[str, str], now: float, skip: tuple[str, ...] = UNANSWERED) -> Any | None:
    """The newest batch created in the last FIND_LOOKBACK_SECONDS whose metadata holds all of `metadata` and whose
    status is not in `skip`: the one a job's invocation created (metadata: the job and its plan) and died before
    recording."""
    for batch in api.batches.list(limit=100):  # newest first; the SDK fetches the next page as the loop goes on
        if (getattr(batch, "created_at", 0) or 0) < now - FIND_LOOKBACK_SECONDS:
            return None
        theirs = getattr(batch, "metadata", None) or {}
        if batch.status not in skip and all(theirs.get(k) == v for k, v in metadata.items()):
            return batch
    return None


@dataclass(frozen=True)
class Collected:
    answers: dict[str, Answer]  # by the item's key (the plan's vendor)
    usage: usage.Usage
    unanswered: int  # requests without an answer (failed, expired, cancelled or missing)


def collect(api: Any, batch: Any, plan: dict[str, list[list[str]]], model: str, categories: list[str]) -> Collected:
    """The answers of a finished batch. `plan` maps each custom_id to its items ([key, vendor, description]);
    an item whose request has no valid answer is left out (the caller asks it again)."""
    bodies: dict[str, Any] = {}
    if getattr(batch, "output_file_id", None):
        for text in api.files.content(batch.output_file_id).text.splitlines():
            row = _json(text)
            response = row.get("response") if isinstance(row, dict) else None
            if isinstance(response, dict) and response.get("status_code") == 200 and row.get("custom_id") in plan:
                bodies[row["custom_id"]] = response.get("body")
    answers: dict[str, Answer] = {}
    used = usage.Usage()
    for custom_id, body in bodies.items():
        used = used + usage.of_answer(body, model, "batch")
        items = [Item(f"v{n}", vendor, description) for n, (_, vendor, description) in enumerate(plan[custom_id])]
        keys = {f"v{n}": key for n, (key, _, _) in enumerate(plan[custom_id])}
        for a in provider._from_message(provider._message(body), items, categories):
            answers[keys[a.id]] = a
    return Collected(answers, used, len(plan) - len(bodies))


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None
