"""chalicelib.delivery.email without AWS: build refuses header injection before any call, and send tells a
refusal no retry can fix (Rejected) from one the caller may retry (botocore's error, as raised)."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from chalicelib.delivery import email as report_email
from chalicelib.tables import Job


def _job(report_id: str = "report-123", period: str = "2026-01") -> Job:
    return Job("job-1", owner_id="u", report_id=report_id, period=period, status="Completed", created_at="x",
               updated_at="x", lock_key="x", result_key="results/job-1/v1.json")


@pytest.fixture(autouse=True)
def no_aws(monkeypatch):
    def refuse(service: str) -> None:
        raise AssertionError(f"build called {service} before refusing the message")

    monkeypatch.setattr(report_email.deps, "client", refuse)


@pytest.mark.parametrize("to", ["victim@example.org\r\nBcc: all@example.org", "victim@example.org\nBcc: x@y.z",
                                "victim@example.org\rX-Injected: 1"])
def test_a_recipient_with_a_line_break_is_refused(to):
    with pytest.raises(ValueError, match="line break"):
        report_email.build(_job(), to, "reports@example.com", "https://reports.example.com/jobs/job-1")


@pytest.mark.parametrize("job", [_job(report_id="r\nBcc: all@example.org"), _job(period="2026-01\r\nX: 1")])
def test_a_subject_with_a_line_break_is_refused(job):
    with pytest.raises(ValueError, match="line break"):
        report_email.build(job, "owner@example.org", "reports@example.com", "https://reports.example.com/")


def test_a_sender_with_a_line_break_is_refused():
    with pytest.raises(ValueError, match="line break"):
        report_email.build(_job(), "owner@example.org", "reports@example.com\nBcc: x@y.z", "https://x.example/")


class _RefusingSes:
    def __init__(self, code: str) -> None:
        self.code = code

    def send_email(self, **kwargs: object) -> dict:
        raise ClientError({"Error": {"Code": self.code, "Message": "Email address not verified a@b.c"}}, "SendEmail")


@pytest.mark.parametrize("code", ["MessageRejected", "MailFromDomainNotVerifiedException", "BadRequestException"])
def test_a_refusal_no_retry_can_fix_is_rejected_with_a_safe_message(monkeypatch, code):
    monkeypatch.setattr(report_email, "build", lambda *args: b"raw")
    monkeypatch.setattr(report_email.deps, "client", lambda service: _RefusingSes(code))
    with pytest.raises(report_email.Rejected) as refused:
        report_email.send(_job(), "owner@example.org", "https://x.example/")
    assert refused.value.code == code and "a@b.c" not in str(refused.value)


@pytest.mark.parametrize("code", ["TooManyRequestsException", "SendingPausedException", "InternalFailure"])
def test_other_refusals_propagate_for_the_caller_to_retry(monkeypatch, code):
    monkeypatch.setattr(report_email, "build", lambda *args: b"raw")
    monkeypatch.setattr(report_email.deps, "client", lambda service: _RefusingSes(code))
    with pytest.raises(ClientError) as raised:
        report_email.send(_job(), "owner@example.org", "https://x.example/")
    assert not isinstance(raised.value, report_email.Rejected)
