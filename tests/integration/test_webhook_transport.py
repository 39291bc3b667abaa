"""post() against a real HTTP receiver on 127.0.0.1 (no moto): what arrives, and what each answer becomes."""

from __future__ import annotations

import datetime as dt
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from standardwebhooks.webhooks import Webhook

from chalicelib.delivery import webhook
from chalicelib.delivery.webhook import Blocked
from local.stack import free_port


class Receiver(ThreadingHTTPServer):
    """Records every connection and request; answers with the status and headers the test set."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.connections = 0
        self.requests: list[dict[str, Any]] = []
        self.status, self.headers, self.hang = 200, {}, False
        self.release = threading.Event()  # set at teardown, so a hanging handler thread ends
        self.server_names: list[str | None] = []

    @property
    def port(self) -> int:
        return self.server_address[1]

    def answer(self, status: int, headers: dict[str, str] | None = None, hang: bool = False) -> None:
        self.status, self.headers, self.hang = status, headers or {}, hang

    def process_request(self, request: Any, client_address: Any) -> None:
        self.connections += 1
        super().process_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and hung up is what some tests do on purpose


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.requests.append({"path": self.path, "headers": dict(self.headers.items()), "body": body})
        if self.server.hang:
            self.server.release.wait(timeout=30)
            return
        self.send_response(self.server.status)
        for name, value in self.server.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _signed(body: bytes, secrets: list[str]) -> dict[str, str]:
    msg_id, timestamp = webhook.new_message_id(), int(time.time())
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "content-type": "application/json",
            "webhook-signature": webhook.sign(secrets, msg_id, timestamp, body)}


BODY = webhook.payload("job.completed", {"jobId": "j-1", "status": "COMPLETED"}, dt.datetime.now(dt.UTC))


def test_a_2xx_answer_is_ok_and_the_receiver_gets_the_exact_signed_message(receiver):
    secret = webhook.new_secret()
    headers = _signed(BODY, [secret])
    outcome = webhook.post(f"http://127.0.0.1:{receiver.port}/hooks?tenant=t1", BODY, headers, allow_loopback=True)
    assert outcome == webhook.Outcome(ok=True, status=200, error=None, retry_after=None, gone=False)
    [got] = receiver.requests
    assert got["path"] == "/hooks?tenant=t1"
    assert got["body"] == BODY
    received = {name.lower(): value for name, value in got["headers"].items()}
    for name, value in headers.items():
        assert received[name] == value
    assert received["user-agent"] == "async-reports-webhooks/1"
    assert received["host"] == f"127.0.0.1:{receiver.port}"
    assert Webhook(secret).verify(got["body"], got["headers"])["data"]["jobId"] == "j-1"


def test_a_host_name_keeps_its_host_header_over_the_pinned_address(receiver):
    outcome = webhook.post(f"http://localhost:{receiver.port}/h", BODY, _signed(BODY, [webhook.new_secret()]),
                           allow_loopback=True)
    assert outcome.ok, outcome
    assert {k.lower(): v for k, v in receiver.requests[0]["headers"].items()}["host"] == f"localhost:{receiver.port}"


def test_a_500_answer_is_a_failure_named_by_its_status(receiver):
    receiver.answer(500)
    outcome = webhook.post(f"http://127.0.0.1:{receiver.port}/", BODY, {}, allow_loopback=True)
    assert outcome == webhook.Outcome(ok=False, status=500, error="HTTP 500", retry_after=None, gone=False)


def test_a_410_answer_means_the_target_is_gone(receiver):
    receiver.answer(410)
    outcome = webhook.post(f"http://127.0.0.1:{receiver.port}/", BODY, {}, allow_loopback=True)
    assert (outcome.ok, outcome.status, outcome.gone, outcome.error) == (False, 410, True, "HTTP 410")


def test_a_429_answer_carries_its_retry_after(receiver):
    receiver.answer(429, {"Retry-After": "120"})
    outcome = webhook.post(f"http://127.0.0.1:{receiver.port}/", BODY, {}, allow_loopback=True)
    assert (outcome.ok, outcome.status, outcome.retry_after, outcome.gone) == (False, 429, 120.0, False)


def test_a_redirect_is_a_failure_and_is_not_followed(receiver):
    receiver.answer(302, {"Location": f"http://127.0.0.1:{receiver.port}/elsewhere"})
    outcome = webhook.post(f"http://127.0.0.1:{receiver.port}/hooks", BODY, {}, allow_loopback=True)
    assert (outcome.ok, outcome.status) == (False, 302)
    assert outcome.error == "redirected (HTTP 302); webhooks do not follow redirects"
    assert [request["path"] for request in receiver.requests] == ["/hooks"]


def test_a_hanging_receiver_times_out_on_time(receiver):
    receiver.answer(200, hang=True)
    started = time.monotonic()
    outcome = webhook.post(f"http://127.0.0.1:{receiver.port}/", BODY, {}, allow_loopback=True, timeout=1)
    elapsed = time.monotonic() - started
    assert (outcome.ok, outcome.status, outcome.error) == (False, None, "timed out after 1 s")
    assert elapsed < 3.0, elapsed
    assert len(receiver.requests) == 1  # it did arrive; the answer never came


def test_nothing_listening_is_connection_refused():
    outcome = webhook.post(f"http://127.0.0.1:{free_port()}/", BODY, {}, allow_loopback=True)
    assert (outcome.ok, outcome.status, outcome.error) == (False, None, "connection refused")


@pytest.mark.parametrize(("scheme", "reason"), [
    ("http", "must be an https URL"),
    ("https", "must not point at a private, loopback or link-local address"),
])
def test_without_the_loopback_allowance_the_receiver_gets_nothing(receiver, scheme, reason):
    outcome = webhook.post(f"{scheme}://127.0.0.1:{receiver.port}/", BODY, {}, allow_loopback=False)
    assert (outcome.ok, outcome.status, outcome.error) == (False, None, f"blocked: {reason}")
    assert receiver.connections == 0


def test_localhost_resolves_to_a_blocked_address_without_the_allowance():
    with pytest.raises(Blocked):
        webhook.resolve_allowed("localhost", 443, allow_loopback=False)
    assert webhook.resolve_allowed("localhost", 443, allow_loopback=True) in ("127.0.0.1", "::1")


def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_https_sends_the_host_name_as_sni_and_verifies_the_certificate(receiver, tmp_path):
    # The receiver's certificate is self-signed, so a verifying client must refuse it after the handshake
    # started; the SNI it sent shows the name, not the pinned 127.0.0.1, went into TLS.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*_self_signed(tmp_path, "localhost"))
    context.sni_callback = lambda sock, name, ctx: receiver.server_names.append(name)
    receiver.socket = context.wrap_socket(receiver.socket, server_side=True, do_handshake_on_connect=False)
    outcome = webhook.post(f"https://localhost:{receiver.port}/", BODY, {}, allow_loopback=True, timeout=5)
    assert (outcome.ok, outcome.status) == (False, None)
    assert outcome.error == "TLS handshake failed (certificate not valid for the host, or not trusted)"
    assert receiver.server_names == ["localhost"]
    assert receiver.requests == []


def test_the_development_receiver_prints_each_webhook_and_checks_its_signature(capsys):
    """`python -m local.webhook_receiver`, the receiver the README points developers at."""
    from local import webhook_receiver

    secret = webhook.new_secret()
    server = webhook_receiver.serve(0, secret, 200)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        body = webhook.payload("job.completed", {"jobId": "j-1", "status": "Completed"},
                               dt.datetime.now(dt.UTC))
        for key in (secret, webhook.new_secret()):
            stamp = int(time.time())
            headers = {"webhook-id": "msg_1", "webhook-timestamp": str(stamp), "content-type": "application/json",
                       "webhook-signature": webhook.sign([key], "msg_1", stamp, body)}
            assert webhook.post(url, body, headers, allow_loopback=True).ok
    finally:
        server.shutdown()
        server.server_close()
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "msg_1  job.completed job j-1 Completed  (signature valid; answered 200)"
    assert "SIGNATURE INVALID" in printed[1]
