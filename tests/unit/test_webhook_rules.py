"""Webhook rules without a network: signatures checked by the independent `standardwebhooks` package, the
URL guard, the retry schedule and the payload shape."""

from __future__ import annotations

import base64
import json
import socket
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from chalicelib.delivery import webhook
from chalicelib.delivery.webhook import PRIVATE, Blocked, check_url

BODY = b'{"type":"job.completed","timestamp":"2026-01-02T03:04:05.678Z","data":{"jobId":"j-1"}}'


def _headers(secrets: list[str], msg_id: str = "msg_test") -> dict[str, str]:
    # standardwebhooks refuses timestamps more than 5 minutes from its clock, so sign with the current one.
    timestamp = int(time.time())
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": webhook.sign(secrets, msg_id, timestamp, BODY)}


def test_signature_verifies_with_the_reference_library():
    secret = webhook.new_secret()
    assert Webhook(secret).verify(BODY, _headers([secret]))["data"] == {"jobId": "j-1"}


def test_signature_matches_a_known_vector():
    # Pins the exact bytes signed ("<id>.<timestamp>.<body>"); the value came from standardwebhooks' own sign().
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    assert webhook.sign([secret], "msg_1", 1700000000, b"{}") == (
        "v1,3sOcjp9LSFloZNG4djSBtbk6gHDplP0wungD5l+W7DU=")


def test_during_a_rotation_each_secret_alone_verifies():
    newest, previous = webhook.new_secret(), webhook.new_secret()
    headers = _headers([newest, previous])
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert headers["webhook-signature"].split(" ")[0] == webhook.sign([newest], "msg_test",
                                                                     int(headers["webhook-timestamp"]), BODY)
    Webhook(newest).verify(BODY, headers)
    Webhook(previous).verify(BODY, headers)


def test_a_wrong_secret_or_a_changed_body_fails_verification():
    headers = _headers([webhook.new_secret()])
    with pytest.raises(WebhookVerificationError):
        Webhook(webhook.new_secret()).verify(BODY, headers)
    secret = webhook.new_secret()
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace(b"j-1", b"j-2"), _headers([secret]))


def test_sign_refuses_a_bare_string_and_a_secret_without_prefix():
    with pytest.raises(ValueError):
        webhook.sign(webhook.new_secret(), "msg_1", 1, b"{}")  # a str is a Sequence of characters
    with pytest.raises(ValueError):
        webhook.sign(["not-a-secret"], "msg_1", 1, b"{}")
    with pytest.raises(ValueError):
        webhook.sign([], "msg_1", 1, b"{}")


def test_secrets_and_message_ids_have_the_documented_shape():
    secret = webhook.new_secret()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:], validate=True)) == 32
    assert secret != webhook.new_secret()
    msg_id = webhook.new_message_id()
    assert msg_id.startswith("msg_") and len(msg_id) == 30
    assert set(msg_id[4:]) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


ACCEPTED = [
    "https://example.com/hooks",
    "https://hooks.example.com:8443/a/b?x=1",
    "https://8.8.8.8/hook",
    "https://[2606:4700:4700::1111]/hook",
]

REFUSED = [
    ("http://example.com/hook", "must be an https URL"),
    ("ftp://example.com/hook", "must be an https URL"),
    ("example.com/hook", "must be an https URL"),
    ("https:///hook", "must have a host"),
    ("https://user:pass@example.com/hook", "must not carry credentials"),
    ("https://token@example.com/hook", "must not carry credentials"),
    ("https://example.com/" + "a" * 2048, "must be at most 2048 characters"),
    ("https://example.com/a b", "must not contain spaces or control characters"),
    ("https://example.com:70000/", "is not a valid URL"),
    ("https://10.0.0.1/hook", PRIVATE),
    ("https://172.16.5.4/hook", PRIVATE),
    ("https://192.168.1.1/hook", PRIVATE),
    ("https://169.254.169.254/latest/meta-data/", PRIVATE),
    ("https://100.64.0.1/hook", PRIVATE),
    ("https://0.0.0.0/hook", PRIVATE),
    ("https://224.0.0.1/hook", PRIVATE),
    ("https://255.255.255.255/hook", PRIVATE),
    ("https://127.0.0.1/hook", PRIVATE),
    ("https://[::1]/hook", PRIVATE),
    ("https://[::]/hook", PRIVATE),
    ("https://[fc00::1]/hook", PRIVATE),
    ("https://[fe80::1]/hook", PRIVATE),
    ("https://[::ffff:127.0.0.1]/hook", PRIVATE),
    ("https://[::ffff:10.0.0.1]/hook", PRIVATE),
    ("https://[2002:a00:1::]/hook", PRIVATE),  # 6to4 of 10.0.0.1
    ("https://2130706433/hook", PRIVATE),  # 127.0.0.1 as one decimal number
    ("https://0x7f.1/hook", PRIVATE),
    ("https://0177.0.0.1/hook", PRIVATE),  # octal
    ("https://0xa9fea9fe/hook", PRIVATE),  # 169.254.169.254
    ("https://10.1/hook", PRIVATE),
    ("https://1.2.3.999/hook", "must have a valid host name"),
    ("https://localhost/hook", PRIVATE),
    ("https://api.localhost/hook", PRIVATE),
    ("https://printer.local/hook", PRIVATE),
    ("https://metadata.google.internal/hook", PRIVATE),
    ("https://LOCALHOST./hook", PRIVATE),
    ("http://127.0.0.1:8080/hook", "must be an https URL"),
    ("http://localhost:8080/hook", "must be an https URL"),
]


@pytest.mark.parametrize("url", ACCEPTED)
def test_public_https_urls_are_accepted(url):
    assert check_url(url, allow_loopback=False) is None


@pytest.mark.parametrize(("url", "reason"), REFUSED)
def test_refused_urls_say_why(url, reason):
    assert check_url(url, allow_loopback=False) == reason


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/hook", "http://localhost:8080/hook",
                                 "https://127.0.0.1:8443/hook", "https://localhost/hook", "https://0x7f.1/hook"])
def test_loopback_is_allowed_only_with_the_allowance(url):
    assert check_url(url, allow_loopback=True) is None


@pytest.mark.parametrize(("url", "reason"), [
    ("http://10.0.0.1:8080/hook", "must be an https URL"),
    ("http://[::1]:8080/hook", "must be an https URL"),
    ("http://example.com/hook", "must be an https URL"),
    ("http://user:pw@127.0.0.1:8080/hook", "must not carry credentials"),
    ("https://10.0.0.1/hook", PRIVATE),
    ("https://169.254.169.254/hook", PRIVATE),
    ("https://printer.local/hook", PRIVATE),
])
def test_the_loopback_allowance_opens_nothing_else(url, reason):
    assert check_url(url, allow_loopback=True) == reason


def _resolving_to(monkeypatch, *addresses):
    def fake(host, port, *args, **kwargs):
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in addresses]
    monkeypatch.setattr(webhook.socket, "getaddrinfo", fake)


def test_resolution_to_a_public_address_returns_it_preferring_ipv4(monkeypatch):
    _resolving_to(monkeypatch, "2606:4700::1111", "93.184.216.34")
    assert webhook.resolve_allowed("example.com", 443, allow_loopback=False) == "93.184.216.34"


def test_one_private_answer_among_public_ones_blocks(monkeypatch):
    _resolving_to(monkeypatch, "93.184.216.34", "10.0.0.5")
    with pytest.raises(Blocked, match="resolves to a private"):
        webhook.resolve_allowed("example.com", 443, allow_loopback=False)


def test_https_to_a_name_resolving_to_a_private_address_is_blocked_before_connecting(monkeypatch):
    _resolving_to(monkeypatch, "10.0.0.5")

    def no_connection(*args, **kwargs):
        raise AssertionError("post() opened a connection pool for a blocked destination")

    monkeypatch.setattr(webhook.urllib3, "HTTPSConnectionPool", no_connection)
    monkeypatch.setattr(webhook.urllib3, "HTTPConnectionPool", no_connection)
    outcome = webhook.post("https://hooks.example.com/x", b"{}", {}, allow_loopback=False)
    assert outcome == webhook.Outcome(ok=False, status=None, retry_after=None, gone=False,
                                      error="blocked: resolves to a private, loopback or link-local address")


def test_a_name_that_does_not_resolve_is_blocked(monkeypatch):
    def fail(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(webhook.socket, "getaddrinfo", fail)
    with pytest.raises(Blocked, match="does not resolve"):
        webhook.resolve_allowed("nowhere.example", 443, allow_loopback=False)


def test_post_refuses_a_url_that_check_url_refuses():
    outcome = webhook.post("http://example.com/hook", b"{}", {}, allow_loopback=False)
    assert (outcome.ok, outcome.status, outcome.error) == (False, None, "blocked: must be an https URL")


def test_backoff_follows_the_standard_webhooks_schedule():
    bases = [5, 300, 1800, 7200, 18000, 36000, 36000]
    for attempt, base in enumerate(bases, start=1):
        delay = webhook.backoff_seconds(attempt)
        assert delay is not None and 0.9 * base <= delay <= 1.1 * base, (attempt, delay)
    assert webhook.MAX_ATTEMPTS == 8
    assert webhook.backoff_seconds(8) is None
    assert webhook.backoff_seconds(9) is None
    with pytest.raises(ValueError):
        webhook.backoff_seconds(0)


def test_the_whole_schedule_spans_about_a_day():
    total = sum(webhook.backoff_seconds(attempt) for attempt in range(1, webhook.MAX_ATTEMPTS))
    assert timedelta(hours=24) < timedelta(seconds=total) < timedelta(hours=31)


def test_backoff_is_jittered():
    assert len({webhook.backoff_seconds(3) for _ in range(20)}) > 1


def test_payload_is_compact_json_in_the_recommended_shape():
    moment = datetime(2026, 1, 2, 4, 4, 5, 678000, tzinfo=timezone(timedelta(hours=1)))
    body = webhook.payload("job.completed", {"jobId": "j-1", "lines": 3}, moment)
    assert body == b'{"type":"job.completed","timestamp":"2026-01-02T03:04:05.678Z","data":{"jobId":"j-1","lines":3}}'


def test_payload_refuses_an_unknown_event_a_naive_time_and_an_oversized_body():
    now = datetime.now(UTC)
    with pytest.raises(ValueError, match="unknown webhook event"):
        webhook.payload("job.exploded", {}, now)
    with pytest.raises(ValueError, match="timezone-aware"):
        webhook.payload("job.failed", {}, datetime(2026, 1, 1))
    envelope = len(webhook.payload("job.progress", {"x": ""}, now))
    fits = {"x": "a" * (webhook.MAX_PAYLOAD_BYTES - envelope)}
    assert len(webhook.payload("job.progress", fits, now)) == webhook.MAX_PAYLOAD_BYTES
    with pytest.raises(ValueError, match="over the 20000 byte limit"):
        webhook.payload("job.progress", {"x": "a" * (webhook.MAX_PAYLOAD_BYTES - envelope + 1)}, now)
    assert json.loads(webhook.payload("job.cancelled", {}, now))["type"] == "job.cancelled"


@pytest.mark.parametrize(("value", "expected"), [("120", 120.0), ("0", 0.0), (" 7 ", 7.0), ("soon", None),
                                                 ("-5", None), ("1.5", None)])
def test_retry_after_delta_seconds(value, expected):
    assert webhook._outcome(429, value).retry_after == expected


def test_retry_after_http_date_and_only_on_429_and_503():
    in_two_minutes = datetime.now(UTC) + timedelta(seconds=120)
    date = in_two_minutes.strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert 110 <= webhook._outcome(503, date).retry_after <= 121
    assert webhook._outcome(503, "Wed, 21 Oct 2015 07:28:00 GMT").retry_after == 0.0
    assert webhook._outcome(500, "120").retry_after is None
    assert webhook._outcome(410, None).gone is True
