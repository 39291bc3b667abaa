"""Report emails through SES on the moto server, read back over the wire as `make mail` reads them.

Each test assembles a fresh job's report with results.assemble_counted (the worker's own assembly), sends it
with chalicelib.delivery.email and finds its message in local.mailbox by the MessageId SES answered.
"""

from __future__ import annotations

import dataclasses
import email
import re
import time
import urllib.parse
import urllib.request
import uuid
from email.policy import default
from typing import Any

import pytest

from chalicelib import deps, results
from chalicelib.delivery import email as report_email
from chalicelib.settings import get_settings
from chalicelib.tables import Job, LineResult
from local import mailbox

LINK = "https://reports.example.com/api/v1/jobs/"


def _line(job_id: str, n: int, vendor: str, amount: str, currency: str, category: str | None,
          needs_review: bool = False) -> LineResult:
    return LineResult(job_id, f"line-{n:03d}", date="2026-01-02", vendor=vendor, amount=amount, currency=currency,
                      description=f"d{n}", category=category, confidence=0.9, source="rules",
                      needs_review=needs_review)


def _finished_job() -> Job:
    job = Job(str(uuid.uuid4()), owner_id="u", report_id=f"r-{uuid.uuid4().hex[:8]}", period="2026-01",
              status="Processing", created_at="x", updated_at="x", lock_key="x")
    lines = [_line(job.job_id, 1, "Cafe A", "12.50", "USD", "Meals"),
             _line(job.job_id, 2, "Cafe B", "18.25", "USD", "Meals"),
             _line(job.job_id, 3, "=cmd|x", "1234.10", "EUR", "Travel"),
             _line(job.job_id, 4, "Mystery", "9.99", "USD", None, needs_review=True)]
    job.result_key, job.needs_review, job.processed_lines = results.assemble_counted(job, 1, written=lines)
    return job


def _csv_bytes(job: Job) -> bytes:
    key = job.result_key.removesuffix(".json") + ".csv"
    return deps.client("s3").get_object(Bucket=get_settings().results_bucket, Key=key)["Body"].read()


def _mail(endpoint: str, message_id: str) -> dict[str, Any]:
    (mail,) = [m for m in mailbox.sent(endpoint, limit=1000) if m["messageId"] == message_id]
    return mail


def test_report_email_has_the_totals_and_the_csv_attached(aws_endpoint):
    job = _finished_job()
    to = f"{uuid.uuid4().hex[:10]}@example.org"
    message_id = report_email.send(job, to, LINK + job.job_id)

    mail = _mail(aws_endpoint, message_id)
    assert mail["source"] == "reports@example.com"
    assert mail["destinations"] == [to]
    assert mail["subject"] == f"Expense report {job.report_id} for 2026-01 is ready"
    body = mail["body"]
    assert re.search(r"Meals +USD +30\.75 +\(2 lines\)", body), body
    assert re.search(r"Travel +EUR +1,234\.10 +\(1 line\)", body), body
    assert "Lines needing review: 1 of 4" in body
    assert LINK + job.job_id in body
    assert mail["attachments"] == [f"{job.report_id}-2026-01.csv"]

    message = email.message_from_string(mailbox.raw(aws_endpoint, message_id), policy=default)
    assert message["To"] == to
    (attachment,) = message.iter_attachments()
    assert attachment.get_content_type() == "text/csv"
    assert attachment.get_payload(decode=True) == _csv_bytes(job)  # byte for byte, CRLFs and the ' guard kept


def test_a_csv_past_the_attachment_limit_is_linked_for_seven_days(aws_endpoint, monkeypatch):
    job = _finished_job()
    monkeypatch.setattr(report_email, "ATTACHMENT_MAX_BYTES", 100)
    message_id = report_email.send(job, "big@example.org", LINK + job.job_id)

    mail = _mail(aws_endpoint, message_id)
    assert mail["attachments"] == []
    (url,) = re.findall(r"https?://\S+\.csv\?\S+", mail["body"])
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    lasts = int(query["X-Amz-Expires"][0]) if "X-Amz-Expires" in query else int(query["Expires"][0]) - time.time()
    assert 7 * 86400 - 60 < lasts <= 7 * 86400  # SigV4 names the duration, SigV2 (botocore's default here) the moment
    with urllib.request.urlopen(url, timeout=10) as answer:  # the link works, and is the report's CSV
        assert answer.read() == _csv_bytes(job)


def test_the_summary_is_read_from_the_head_of_the_result_only(monkeypatch):
    job = _finished_job()
    s3, reads = deps.client("s3"), []

    class Recording:
        def get_object(self, **kwargs: Any) -> Any:
            reads.append(kwargs)
            return s3.get_object(**kwargs)

    monkeypatch.setattr(report_email.deps, "client", lambda service: Recording())
    summary = report_email.summary(job)
    assert summary == {"totals": [{"category": "Meals", "currency": "USD", "amount": "30.75", "lines": 2},
                                  {"category": "Travel", "currency": "EUR", "amount": "1234.10", "lines": 1}],
                       "needsReview": 1, "lines": 4}
    assert [r["Range"] for r in reads] == [f"bytes=0-{report_email.HEAD_BYTES - 1}"]


def test_the_summary_falls_back_to_the_jobs_counters_without_a_readable_head():
    job = _finished_job()
    job.result_key = f"results/{job.job_id}/v9.json"  # no such object
    assert report_email.summary(job) == {"totals": [], "needsReview": 1, "lines": 4}


def test_sending_from_an_unverified_address_is_rejected(aws_endpoint, settings, monkeypatch):
    job = _finished_job()
    sender = f"{uuid.uuid4().hex[:10]}@unverified.example"
    monkeypatch.setattr(report_email, "get_settings", lambda: dataclasses.replace(settings, ses_from=sender))
    with pytest.raises(report_email.Rejected) as refused:
        report_email.send(job, "someone@example.org", LINK + job.job_id)
    assert refused.value.code == "MessageRejected"
    assert sender not in str(refused.value)  # the text is safe to show the owner
    assert not [m for m in mailbox.sent(aws_endpoint, limit=1000) if m["source"] == sender]
