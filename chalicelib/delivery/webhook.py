"""Standard Webhooks transport: secrets, signatures, payloads, the SSRF guard, one HTTP POST, the retry schedule.

Pure transport: no DynamoDB, no SQS. The caller owns attempts, their records and the target's state.
Spec: https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import random
import re
import socket
import string
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from secrets import choice, token_bytes
from urllib.parse import urlsplit

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from chalicelib import clock

SECRET_PREFIX = "whsec_"
EVENTS = ("job.completed", "job.failed", "job.cancelled", "job.progress")
TIMEOUT_SECONDS = 15.0
MAX_PAYLOAD_BYTES = 20_000
MAX_URL_LENGTH = 2048
USER_AGENT = "async-reports-webhooks/1"
# The receiver's answer is never used; reading a little of it lets a well-behaved receiver finish its write.
MAX_ANSWER_BYTES = 64 * 1024
# Standard Webhooks / Svix: the delay after failed attempt n is _SCHEDULE[n - 1] (about 27 h in all).
_SCHEDULE = (5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 10 * 3600)
MAX_ATTEMPTS = len(_SCHEDULE) + 1  # 8
_JITTER = 0.10

_ID_ALPHABET = string.ascii_letters + string.digits + "-_"
PRIVATE = "must not point at a private, loopback or link-local address"
_INTERNAL_SUFFIXES = (".localhost", ".local", ".internal")
_HTTP_LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
_NUMBER = re.compile(r"0x[0-9a-f]*|[0-9]+")
_Ip = ipaddress.IPv4Address | ipaddress.IPv6Address


class Blocked(Exception):
    """The SSRF guard refused the destination; str(err) is a user-facing reason."""


@dataclass(frozen=True)
class Outcome:
    ok: bool
    status: int | None
    error: str | None
    retry_after: float | None
    gone: bool


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(token_bytes(32)).decode()


def new_message_id() -> str:
    """The webhook-id: one per message, kept across its retries so receivers can deduplicate."""
    return "msg_" + "".join(choice(_ID_ALPHABET) for _ in range(26))


def sign(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The webhook-signature header: one `v1,<sig>` per secret (newest first during a rotation)."""
    if isinstance(secrets, str) or not secrets:
        raise ValueError("sign() takes a non-empty sequence of secrets")
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(_key(secret), signed, hashlib.sha256).digest()).decode()
        for secret in secrets)


def _key(secret: str) -> bytes:
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"a webhook secret starts with {SECRET_PREFIX}")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except binascii.Error as err:
        raise ValueError("a webhook secret is base64 after its prefix") from err
    if not key:
        raise ValueError("a webhook secret may not be empty")
    return key


def payload(event: str, data: dict, timestamp: datetime) -> bytes:
    """The body in the spec's recommended shape; raises ValueError for an unknown event or an oversized body."""
    if event not in EVENTS:
        raise ValueError(f"unknown webhook event {event!r}")
    if timestamp.tzinfo is None:
        raise ValueError("the payload timestamp must be timezone-aware")
    body = json.dumps({"type": event, "timestamp": clock.iso(timestamp), "data": data},
                      separators=(",", ":"), allow_nan=False).encode()
    if len(body) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"webhook payload is {len(body)} bytes, over the {MAX_PAYLOAD_BYTES} byte limit")
    return body


def check_url(url: str, allow_loopback: bool) -> str | None:
    """None when `url` may be saved as a webhook target, else a short user-facing reason. No DNS lookup."""
    if len(url) > MAX_URL_LENGTH:
        return f"must be at most {MAX_URL_LENGTH} characters"
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        return "must not contain spaces or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port out of range or not a number
    except ValueError:
        return "is not a valid URL"
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        return "must be an https URL"
    if "@" in parts.netloc:
        return "must not carry credentials"
    host = (parts.hostname or "").rstrip(".")
    if not host:
        return "must have a host"
    if scheme == "http":
        # Plain http only for a receiver on this machine (local stack, tests): nothing else may see the body.
        return None if allow_loopback and host in _HTTP_LOOPBACK_HOSTS else "must be an https URL"
    if not host.isascii():
        return "must use an ASCII (punycode) host name"
    return _host_refusal(host, allow_loopback)


def resolve_allowed(host: str, port: int, allow_loopback: bool) -> str:
    """The one address to connect to; Blocked if the name is refused, does not resolve, or any answer is private."""
    name = host.strip("[]")
    reason = _host_refusal(name.rstrip(".").lower(), allow_loopback)
    if reason is not None:
        raise Blocked(reason)
    try:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as err:
        raise Blocked("the host name does not resolve") from err
    addresses = [str(info[4][0]).split("%")[0] for info in infos]
    if not addresses:
        raise Blocked("the host name does not resolve")
    # Every answer must pass, not just the one we pick: round-robin DNS could mix a public and a private record.
    if not all(_allowed(ipaddress.ip_address(address), allow_loopback) for address in addresses):
        raise Blocked("resolves to a private, loopback or link-local address")
    # IPv4 first: a Lambda outside a dual-stack VPC has no IPv6 route.
    return next((address for address in addresses if ":" not in address), addresses[0])


def _host_refusal(host: str, allow_loopback: bool) -> str | None:
    try:
        ip = _ip_literal(host)
    except ValueError:
        return "must have a valid host name"
    if ip is not None:
        return None if _allowed(ip, allow_loopback) else PRIVATE
    if host == "localhost":
        return None if allow_loopback else PRIVATE
    if host.endswith(_INTERNAL_SUFFIXES):
        return PRIVATE
    return None


def _ip_literal(host: str) -> _Ip | None:
    """The address a host spells, including the inet_aton forms (0x7f.1, 2130706433, 0177.0.0.1) that
    resolvers and browsers accept; ValueError for a host that looks numeric but is no address."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if ":" in host:
        raise ValueError(host)
    labels = host.split(".")
    if not _NUMBER.fullmatch(labels[-1]):
        return None  # a real name: its last label (the TLD) is never numeric
    if len(labels) > 4 or not all(_NUMBER.fullmatch(label) for label in labels):
        raise ValueError(host)
    numbers = [int(label[2:] or "0", 16) if label.startswith("0x")
               else int(label, 8) if len(label) > 1 and label.startswith("0") else int(label) for label in labels]
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (4 - len(head)):
        raise ValueError(host)
    value = sum(n << (8 * (3 - i)) for i, n in enumerate(head)) + last
    return ipaddress.IPv4Address(value)


def _allowed(ip: _Ip, allow_loopback: bool) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv4 address carried in IPv6 (::ffff:10.0.0.1, 2002:0a00:0001::) is judged as that IPv4 address.
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is not None:
            return _allowed(embedded, allow_loopback)
    if ip.is_loopback:
        return allow_loopback
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:  # fec0::/10: deprecated, still routed inside
        return False
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified or ip.is_link_local
                                 or ip.is_private)


def post(url: str, body: bytes, headers: Mapping[str, str], allow_loopback: bool,
         timeout: float = TIMEOUT_SECONDS) -> Outcome:
    """POST one signed message within `timeout` seconds of wall-clock time, DNS included; never raises for a
    network failure, the Outcome says what happened.

    urllib3's timeouts bound each socket operation, not the exchange: a receiver sending its answer a byte a
    second would hold the worker (and outlive the attempt's lease). So the exchange runs on a daemon thread and
    is given up at the deadline; the thread ends with its socket's own timeouts.
    """
    import threading

    done: list[Outcome] = []
    raised: list[BaseException] = []

    def run() -> None:
        try:
            done.append(_post(url, body, headers, allow_loopback, timeout))
        except BaseException as err:  # handed to the caller's thread: a bug is not a timeout
            raised.append(err)

    thread = threading.Thread(target=run, name="webhook-post", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    if raised:
        raise raised[0]
    if not done:
        return _failed(f"timed out after {timeout:g} s")
    return done[0]


def _post(url: str, body: bytes, headers: Mapping[str, str], allow_loopback: bool, timeout: float) -> Outcome:
    reason = check_url(url, allow_loopback)
    if reason is not None:
        return _failed(f"blocked: {reason}")
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), str(parts.hostname)
    port = parts.port or (443 if scheme == "https" else 80)
    try:
        # Connect to the address we checked: a second lookup by the HTTP client could be rebound to 10.0.0.1.
        address = resolve_allowed(host, port, allow_loopback)
    except Blocked as err:
        return _failed(f"blocked: {err}")
    request_headers = urllib3.HTTPHeaderDict(dict(headers))
    request_headers["User-Agent"] = USER_AGENT
    request_headers["Host"] = parts.netloc  # the name, not the pinned address; no userinfo (check_url)
    limit = urllib3.Timeout(total=timeout)
    if scheme == "https":
        # SNI and certificate verification against the name, over the pinned address.
        pool: urllib3.HTTPConnectionPool = urllib3.HTTPSConnectionPool(
            address, port=port, maxsize=1, retries=False, timeout=limit, cert_reqs="CERT_REQUIRED",
            server_hostname=host, assert_hostname=host)
    else:
        pool = urllib3.HTTPConnectionPool(address, port=port, maxsize=1, retries=False, timeout=limit)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    deadline = time.monotonic() + timeout
    try:
        response = pool.urlopen("POST", path, body=body, headers=request_headers, redirect=False,
                                assert_same_host=False, preload_content=False, release_conn=False)
    except (HTTPError, OSError) as err:
        pool.close()
        return _failed(_describe(err, timeout))
    try:
        _discard_answer(response, deadline)
    finally:
        response.close()
        pool.close()
    return _outcome(response.status, response.headers.get("Retry-After"))


def _failed(error: str) -> Outcome:
    return Outcome(ok=False, status=None, error=error, retry_after=None, gone=False)


def _discard_answer(response: urllib3.BaseHTTPResponse, deadline: float) -> None:
    # The status is all we need: a failure here (a slow or broken body) must not turn an answer into an error.
    remaining = MAX_ANSWER_BYTES
    try:
        while remaining > 0 and time.monotonic() < deadline:
            chunk = response.read(min(remaining, 8192))
            if not chunk:
                return
            remaining -= len(chunk)
    except (HTTPError, OSError):
        return


def _describe(err: BaseException, timeout: float) -> str:
    """A user-safe text: never the URL's address, a header or str(err) (which can carry both)."""
    if isinstance(err, MaxRetryError) and err.reason is not None:
        err = err.reason
    # NewConnectionError subclasses ConnectTimeoutError in urllib3 2, so it goes first.
    if isinstance(err, NewConnectionError):
        refused = isinstance(err.__cause__, ConnectionRefusedError)
        return "connection refused" if refused else "connection failed"
    if isinstance(err, ConnectTimeoutError | ReadTimeoutError | TimeoutError):
        return f"timed out after {timeout:g} s"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, SSLError):
        return "TLS handshake failed (certificate not valid for the host, or not trusted)"
    if isinstance(err, ProtocolError):
        return "connection closed without an answer"
    return "connection failed"


def _outcome(status: int, retry_after: str | None) -> Outcome:
    if 200 <= status < 300:
        return Outcome(ok=True, status=status, error=None, retry_after=None, gone=False)
    if 300 <= status < 400:
        error = f"redirected (HTTP {status}); webhooks do not follow redirects"
    else:
        error = f"HTTP {status}"
    delay = _retry_after(retry_after) if status in (429, 503) else None
    return Outcome(ok=False, status=status, error=error, retry_after=delay, gone=status == 410)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header, delta-seconds or HTTP-date (RFC 9110 10.2.3); None if unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # HTTP-dates are GMT; "-0000" parses naive
    return max(0.0, (when - clock.now()).total_seconds())


def backoff_seconds(attempt: int) -> float | None:
    """The delay before the next attempt after `attempt` failed ones (+-10% jitter); None when none is left."""
    if attempt < 1:
        raise ValueError("attempt counts failed attempts, from 1")
    if attempt >= MAX_ATTEMPTS:
        return None
    # Jitter spreads the retries of many messages that failed together (a receiver outage) over time.
    return _SCHEDULE[attempt - 1] * random.uniform(1 - _JITTER, 1 + _JITTER)
