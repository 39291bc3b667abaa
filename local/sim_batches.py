"""The simulator's Files and Batch API (development only): `/v1/files` and `/v1/batches`, as the openai client calls
them, with a configurable completion delay, partial results, expiry and cancel.

- `POST /v1/files` (multipart, purpose `batch`) stores a JSONL file; `GET /v1/files/{id}/content` returns it.
- `POST /v1/batches` {input_file_id, endpoint, completion_window "24h", metadata} creates a batch;
  `GET /v1/batches/{id}` reads it; `POST /v1/batches/{id}/cancel` cancels it; `GET /v1/batches?limit&after` lists
  them newest first, a page at a time (`has_more`, `last_id` for the next page's `after`), as OpenAI does.
- A batch is `in_progress` until `batch_delay` seconds after its creation, then `completed`: every line answered
  (one output line `{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error": null}`),
  except the custom_ids in `batch_failed_ids`, which go to the error file with a 500. With `batch_expire_after`
  shorter than `batch_delay`, the batch `expired` at that moment: the first half of its lines answered, the rest
  in the error file with code `batch_expired` (OpenAI's shape for an expired batch's unfinished requests).
- A cancelled batch (`cancelling`, then `cancelled` at the next read) keeps the lines answered before the cancel:
  the first `batch_cancel_answered` share of them (none by default).

Answers are the simulator's own (`Simulator.answer`: the same categories and prompt-cache accounting as chat
completions), without latency or rate limits: a batch has its own pool at the provider.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from email.parser import BytesParser
from email.policy import HTTP
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from local.simulator import Reply, Simulator

TERMINAL = ("completed", "expired", "cancelled", "failed")


class Batches:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.cancels: list[str] = []  # batch ids cancelled, in order (tests read this)
        self._lock = threading.Lock()

    # -- routing ---------------------------------------------------------------------------------------------

    def route(self, method: str, path: str, raw: bytes, content_type: str,
              query: dict[str, list[str]] | None = None) -> Reply:
        from local.simulator import Reply, error_reply

        parts = path.strip("/").split("/")  # v1, files|batches, id?, action?
        if parts[1] == "batches" and method == "GET" and len(parts) == 2:
            return self._list(query or {})
        if parts[1] == "files" and method == "POST" and len(parts) == 2:
            return self._upload(raw, content_type)
        if parts[1] == "files" and method == "GET" and len(parts) == 4 and parts[3] == "content":
            data = self.files.get(parts[2])
            if data is None:
                return error_reply(404, f"No such File object: {parts[2]}", "invalid_request_error", None)
            return Reply(200, {}, raw=data)
        if parts[1] == "batches" and method == "POST" and len(parts) == 2:
            return self._create(raw)
        if parts[1] == "batches" and len(parts) >= 3:
            with self._lock:
                batch = self.batches.get(parts[2])
                if batch is None:
                    return error_reply(404, f"No batch found with id '{parts[2]}'.", "invalid_request_error", None)
                if method == "POST" and len(parts) == 4 and parts[3] == "cancel":
                    self.cancels.append(batch["id"])
                    if batch["status"] not in TERMINAL:
                        batch.update(status="cancelling", cancelling_at=int(time.time()))
                    return Reply(200, _public(batch))
                if method == "GET" and len(parts) == 3:
                    self._advance(batch)
                    return Reply(200, _public(batch))
        return error_reply(404, f"Invalid URL ({method} {path})", "invalid_request_error", "unknown_url")

    def _upload(self, raw: bytes, content_type: str) -> Reply:
        from local.simulator import Reply, error_reply

        message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
        fields: dict[str, bytes] = {}
        for part in message.iter_parts() if message.is_multipart() else []:
            name = part.get_param("name", header="content-disposition")
            fields[str(name)] = part.get_payload(decode=True) or b""
        if "file" not in fields or fields.get("purpose", b"").decode() != "batch":
            return error_reply(400, "A file and purpose=batch are required.", "invalid_request_error", None)
        file_id = f"file-sim{uuid.uuid4().hex[:20]}"
        with self._lock:
            self.files[file_id] = fields["file"]
        return Reply(200, {"id": file_id, "object": "file", "bytes": len(fields["file"]), "purpose": "batch",
                           "created_at": int(time.time()), "filename": "input.jsonl", "status": "processed"})

    def _create(self, raw: bytes) -> Reply:
        from local.simulator import Reply, error_reply

        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return error_reply(400, "We could not parse the JSON body of your request.", "invalid_request_error", None)
        file_id = body.get("input_file_id") if isinstance(body, dict) else None
        if file_id not in self.files or body.get("completion_window") != "24h" \
                or body.get("endpoint") != "/v1/chat/completions":
            return error_reply(400, "input_file_id of an uploaded file, endpoint /v1/chat/completions and "
                               "completion_window 24h are required.", "invalid_request_error", None)
        lines = [json.loads(line) for line in self.files[file_id].decode().splitlines() if line.strip()]
        now = int(time.time())
        batch = {"id": f"batch_sim{uuid.uuid4().hex[:20]}", "object": "batch", "endpoint": body["endpoint"],
                 "errors": None, "input_file_id": file_id, "completion_window": "24h", "status": "in_progress",
                 "output_file_id": None, "error_file_id": None, "created_at": now, "in_progress_at": now,
                 "expires_at": now + 86400, "completed_at": None, "expired_at": None, "cancelling_at": None,
                 "cancelled_at": None, "failed_at": None, "finalizing_at": None,
                 "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
                 "metadata": body.get("metadata"), "_lines": lines, "_created": time.monotonic()}
        with self._lock:
            self.batches[batch["id"]] = batch
        return Reply(200, _public(batch))

    def _list(self, query: dict[str, list[str]]) -> Reply:
        from local.simulator import Reply, error_reply

        try:
            limit = int(query.get("limit", ["20"])[0])
        except ValueError:
            limit = 0
        if not 1 <= limit <= 100:
            return error_reply(400, "limit must be between 1 and 100.", "invalid_request_error", None)
        with self._lock:
            newest = sorted(self.batches.values(), key=lambda b: b["_created"], reverse=True)
            after = query.get("after", [None])[0]
            if after is not None:
                ids = [b["id"] for b in newest]
                newest = newest[ids.index(after) + 1:] if after in ids else []
            page = newest[:limit]
            for batch in page:
                self._advance(batch)
            data = [_public(b) for b in page]
        return Reply(200, {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                           "last_id": data[-1]["id"] if data else None, "has_more": len(newest) > limit})

    # -- progress --------------------------------------------------------------------------------------------

    def _advance(self, batch: dict[str, Any]) -> None:
        """Move the batch on as time has passed (callers hold the lock)."""
        cfg = self.sim._config
        if batch["status"] == "cancelling":
            lines = batch["_lines"]
            self._finish(batch, "cancelled", lines[: int(len(lines) * cfg.batch_cancel_answered)])
            return
        if batch["status"] != "in_progress":
            return
        age = time.monotonic() - batch["_created"]
        lines = batch["_lines"]
        if cfg.batch_expire_after is not None and cfg.batch_expire_after < cfg.batch_delay \
                and age >= cfg.batch_expire_after:
            self._finish(batch, "expired", lines[: len(lines) // 2])
        elif age >= cfg.batch_delay:
            self._finish(batch, "completed", lines)

    def _finish(self, batch: dict[str, Any], status: str, answered: list[dict[str, Any]]) -> None:
        from local.simulator import AnswerFaults, ChatRequest

        failed_ids = set(self.sim._config.batch_failed_ids or [])
        done = {line["custom_id"] for line in answered}
        out, errors = [], []
        for line in batch["_lines"]:
            custom_id = line["custom_id"]
            row: dict[str, Any] = {"id": f"batch_req_{uuid.uuid4().hex[:16]}", "custom_id": custom_id}
            if custom_id in done and custom_id not in failed_ids:
                self.sim._sequence += 1
                body = self._answer(self.sim._sequence, ChatRequest.parse(line.get("body") or {}), AnswerFaults())
                row |= {"response": {"status_code": 200, "request_id": f"req_sim_{self.sim._sequence}",
                                     "body": body}, "error": None}
                out.append(row)
            elif custom_id in done:
                row |= {"response": {"status_code": 500, "request_id": None, "body": {"error": {
                    "message": "The server had an error processing your request.", "type": "server_error"}}},
                    "error": None}
                errors.append(row)
            elif status == "expired":
                row |= {"response": None, "error": {"code": "batch_expired",
                                                    "message": "This request could not be executed before the "
                                                               "completion window expired."}}
                errors.append(row)
        now = int(time.time())
        batch.update(status=status, **{f"{status}_at": now})
        batch["request_counts"] = {"total": len(batch["_lines"]), "completed": len(out), "failed": len(errors)}
        if out:
            batch["output_file_id"] = self._store(out)
        if errors:
            batch["error_file_id"] = self._store(errors)

    def _answer(self, sequence: int, req: Any, faults: Any) -> dict[str, Any]:
        # Simulator.answer takes the simulator's lock, which the caller holds for this batch only (ours).
        completion = self.sim._completion(sequence, req, faults)
        usage = completion["usage"]
        with self.sim._lock:
            usage["prompt_tokens_details"] = {"cached_tokens": self.sim._cached(req), "audio_tokens": 0}
            self.sim._stats.prompt_tokens += usage["prompt_tokens"]
            self.sim._stats.completion_tokens += usage["completion_tokens"]
            self.sim._stats.cached_tokens += usage["prompt_tokens_details"]["cached_tokens"]
        completion["service_tier"] = "batch"
        return completion

    def _store(self, rows: list[dict[str, Any]]) -> str:
        file_id = f"file-sim{uuid.uuid4().hex[:20]}"
        self.files[file_id] = "".join(json.dumps(r) + "\n" for r in rows).encode()
        return file_id


def _public(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if not k.startswith("_")}
