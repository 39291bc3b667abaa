"""Work messages (chalicelib/messages.py): each kind's body round-trips, bodies written before typed messages
still parse, anything else is a named error, and the send helpers own the delay cap."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chalicelib import messages
from chalicelib.messages import (
    MAX_DELAY_SECONDS,
    NotAWorkMessage,
    RunChunk,
    SendFailed,
    StartJob,
    WarmCache,
    parse,
)


@pytest.mark.parametrize("message", [
    StartJob("9b2f6a1e-8c1d-4c55-9a51-2f0f5f3f8d11"), StartJob("j-1", "rate_limited"), StartJob("j-1", "reaped"),
    RunChunk("j-1", 0, "fan-out"), RunChunk("j-1", 17, "continuation"),
    StartJob("j-1", "start", "t-1", deferrals=3), RunChunk("j-1", 2, "fan-out", "t-1", deferrals=1),
    StartJob("j-1", "start", "t-1", deferrals=2, deferred_since=1764800000.125),
    RunChunk("j-1", 2, "fan-out", "t-1", deferrals=5, deferred_since=1764800000.5),
    WarmCache(), WarmCache("vendor#acme"),
])
def test_each_message_round_trips(message):
    assert parse(message.to_body()) == message


def test_bodies_keep_the_wire_format_of_before():
    """Byte for byte what the producers wrote before typed messages: messages in flight during a deploy."""
    assert StartJob("j-1", "retried").to_body() == json.dumps({"jobId": "j-1", "reason": "retried"})
    assert RunChunk("j-1", 3, "reaped").to_body() == json.dumps({"jobId": "j-1", "chunk": 3, "reason": "reaped"})
    assert WarmCache("v#1").to_body() == json.dumps({"kind": "warm", "after": "v#1"})


def test_older_and_sparser_bodies_parse_as_before():
    assert parse('{"jobId": "j-1"}') == StartJob("j-1", "start")  # no reason: a start
    assert parse('{"kind": "warm"}') == WarmCache("")  # no after: from the beginning
    assert parse('{"kind": "warm", "after": null}') == WarmCache("")
    assert parse('{"jobId": "j-1", "chunk": "4", "reason": "fan-out"}') == RunChunk("j-1", 4, "fan-out")
    assert parse('{"jobId": "j-1", "reason": "start", "extra": 1}') == StartJob("j-1", "start")


@pytest.mark.parametrize("body", [
    "", "not json", "[]", '["jobId"]', "42", '"jobId"', "null", "{}", '{"reason": "start"}',
    '{"jobId": "j-1", "chunk": "two"}', '{"jobId": "j-1", "chunk": null}', '{"kind": "other"}',
])
def test_anything_else_is_a_named_error(body):
    with pytest.raises(NotAWorkMessage, match="not a work message"):
        parse(body)
    assert issubclass(NotAWorkMessage, ValueError)


class FakeSqs:
    def __init__(self, refuse: set[str] = frozenset()) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.refuse = refuse

    def send_message(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("send_message", kwargs))
        return {"MessageId": "m"}

    def send_message_batch(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("send_message_batch", kwargs))
        failed = [{"Id": e["Id"]} for e in kwargs["Entries"] if e["Id"] in self.refuse]
        return {"Successful": [], **({"Failed": failed} if failed else {})}


@pytest.fixture
def sqs(monkeypatch):
    fake = FakeSqs()
    monkeypatch.setattr(messages.deps, "client", lambda name: fake)
    monkeypatch.setattr(messages.deps, "work_queue_url", lambda: "https://queue/work")
    return fake


def test_send_caps_the_delay_at_the_one_constant(sqs):
    assert MAX_DELAY_SECONDS == 900
    for delay in (0, 5, 899.6, 900, 901, 86_400, -3):
        messages.send(StartJob("j-1", "rate_limited"), delay)
    delays = [kwargs["DelaySeconds"] for _, kwargs in sqs.calls]
    assert delays == [0, 5, 899, 900, 900, 900, 0]
    assert {kwargs["QueueUrl"] for _, kwargs in sqs.calls} == {"https://queue/work"}
    assert sqs.calls[0][1]["MessageBody"] == '{"jobId": "j-1", "reason": "rate_limited"}'


def test_send_batch_sends_ten_a_request_and_names_what_was_refused(sqs):
    batch = [RunChunk("j-1", n, "fan-out") for n in range(23)]
    messages.send_batch(batch, 2_000, ids=[str(n) for n in range(23)])
    assert [len(kwargs["Entries"]) for _, kwargs in sqs.calls] == [10, 10, 3]
    entries = [e for _, kwargs in sqs.calls for e in kwargs["Entries"]]
    assert [parse(e["MessageBody"]) for e in entries] == batch
    assert {e["DelaySeconds"] for e in entries} == {MAX_DELAY_SECONDS}
    sqs.refuse, sqs.calls = {"1"}, []
    with pytest.raises(SendFailed) as refused:
        messages.send_batch([StartJob("a"), StartJob("b"), StartJob("c")])
    assert refused.value.ids == ["1"] and len(sqs.calls) == 1


def test_the_chunk_sender_keeps_its_error(sqs):
    from chalicelib.jobs import chunks

    sqs.refuse = {"2"}
    with pytest.raises(RuntimeError, match=r"could not enqueue chunks \['2'\] of job j-1"):
        chunks.send("j-1", [1, 2, 3], "fan-out")
    assert [e["Id"] for e in sqs.calls[0][1]["Entries"]] == ["1", "2", "3"]


