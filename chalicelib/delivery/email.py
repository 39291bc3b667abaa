"""Email delivery: a finished job's totals and its CSV report, sent as one raw MIME message through SES (v2)."""

from __future__ import annotations

import contextlib
import json
from decimal import Decimal, InvalidOperation
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from typing import Any

from botocore.exceptions import ClientError

from chalicelib import clock, deps
from chalicelib.settings import get_settings
from chalicelib.tables import Job

# The CSV is attached up to this size (SES's 10 MB message limit, base64 adds a third); past it, the email
# carries a presigned link to it instead, valid 7 days.
ATTACHMENT_MAX_BYTES = 7 * 1024 * 1024
LINK_EXPIRES_SECONDS = 7 * 24 * 3600  # SigV4's longest presigned URL
HEAD_BYTES = 256 * 1024
# Where the head of the result JSON ends (results.assemble_counted writes it compact, the lines after it).
_LINES_START = b',"lines":['

# SES error codes that a retry cannot fix, with what the job's owner may be told (never SES's own text, which
# can name the account's identities).
_PERMANENT = {
    "MessageRejected": "The mail service rejected the message.",
    "MailFromDomainNotVerified": "The sender's MAIL FROM domain is not verified with the mail service.",
    "MailFromDomainNotVerifiedException": "The sender's MAIL FROM domain is not verified with the mail service.",
    "BadRequestException": "The mail service refused the message as invalid (check the recipient address).",
    "InvalidParameterValue": "The mail service refused the message as invalid (check the recipient address).",
}


class Rejected(Exception):
    """SES refused the message for good: sending it again cannot succeed. The text is safe to show the owner."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def _csv_key(json_key: str) -> str:
    return json_key.removesuffix(".json") + ".csv"


def summary(job: Job) -> dict[str, Any]:
    """{"totals": [...], "needsReview": n, "lines": n} from the head of the job's result JSON.

    Reads the first HEAD_BYTES only: a report's lines can run to hundreds of megabytes, its head is a few
    hundred bytes. When the head cannot be read (no result, a head past HEAD_BYTES), the job's own counters
    stand in, without totals.
    """
    fallback = {"totals": [], "needsReview": int(job.needs_review or 0), "lines": int(job.processed_lines or 0)}
    if not job.result_key:
        return fallback
    try:
        answer = deps.client("s3").get_object(Bucket=get_settings().results_bucket, Key=job.result_key,
                                              Range=f"bytes=0-{HEAD_BYTES - 1}")
        with contextlib.closing(answer["Body"]) as body:
            start = body.read()
    except ClientError:
        return fallback
    cut = start.find(_LINES_START)
    if cut < 0:
        return fallback
    try:
        head = json.loads(start[:cut] + b"}")
        totals = [{**t, "amount": str(Decimal(t["amount"]))} for t in head["totals"]]
        needs_review = int(head["needsReview"])
    except (ValueError, KeyError, TypeError, InvalidOperation):
        return fallback
    # Every line of a report is either counted in one total or needs review (results.assemble_counted).
    return {"totals": totals, "needsReview": needs_review, "lines": sum(t["lines"] for t in totals) + needs_review}


def _refuse_line_breaks(**fields: str) -> None:
    # A CR or LF in a header value would let its text add headers (Bcc:) or a body of its own.
    for name, value in fields.items():
        if "\r" in value or "\n" in value:
            raise ValueError(f"{name} must not contain a line break")


def _body(job: Job, head: dict[str, Any], result_link: str, csv_note: str) -> str:
    lines = [f"Expense report {job.report_id} for {job.period} is ready.", ""]
    if head["totals"]:
        lines.append("Totals:")
        amounts = [f"{Decimal(t['amount']):,f}" for t in head["totals"]]
        width, figures = max(len(t["category"]) for t in head["totals"]), max(len(a) for a in amounts)
        for t, amount in zip(head["totals"], amounts, strict=True):
            count = f"{t['lines']} line{'' if t['lines'] == 1 else 's'}"
            lines.append(f"  {t['category']:<{width}}  {t['currency']}  {amount:>{figures}}  ({count})")
    else:
        lines.append("Totals: see the report.")
    lines += ["", f"Lines needing review: {head['needsReview']} of {head['lines']}", "",
              f"Report: {result_link}", "", csv_note, ""]
    return "\n".join(lines)


def build(job: Job, to: str, sender: str, result_link: str) -> bytes:
    """The raw MIME message for `job`: its totals, a link to it, and its CSV attached (or linked, when large)."""
    _refuse_line_breaks(to=to, sender=sender, report_id=job.report_id, period=job.period)
    if not job.result_key:
        raise ValueError(f"job {job.job_id} has no result to send")
    s3, bucket = deps.client("s3"), get_settings().results_bucket
    csv_key = _csv_key(job.result_key)
    filename = f"{job.report_id}-{job.period}.csv"
    size = s3.head_object(Bucket=bucket, Key=csv_key)["ContentLength"]
    attachment = None
    if size <= ATTACHMENT_MAX_BYTES:
        attachment = s3.get_object(Bucket=bucket, Key=csv_key)["Body"].read()
        csv_note = f"The report is attached as {filename}."
    else:
        # A presigned URL lasts no longer than the credentials that signed it: in Lambda, the role's session.
        url = s3.generate_presigned_url(
            "get_object", ExpiresIn=LINK_EXPIRES_SECONDS,
            Params={"Bucket": bucket, "Key": csv_key,
                    "ResponseContentDisposition": f'attachment; filename="{filename}"'})
        csv_note = (f"The CSV report ({size / 1_000_000:.1f} MB) is too large to attach. "
                    f"Download it within 7 days: {url}")
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = f"Expense report {job.report_id} for {job.period} is ready"
    message["Date"] = format_datetime(clock.now())
    message.set_content(_body(job, summary(job), result_link, csv_note))
    if attachment is not None:
        message.add_attachment(attachment, maintype="text", subtype="csv", filename=filename)
    return message.as_bytes(policy=SMTP)  # CRLF line ends, as RFC 5322 has them


def send(job: Job, to: str, result_link: str) -> str:
    """Send the job's report email to `to` through SES; returns SES's MessageId.

    Raises Rejected when SES refuses the message for good; any other botocore error propagates (retryable).
    """
    sender = get_settings().ses_from
    raw = build(job, to, sender, result_link)
    try:
        answer = deps.client("sesv2").send_email(FromEmailAddress=sender, Destination={"ToAddresses": [to]},
                                                 Content={"Raw": {"Data": raw}})
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        if code in _PERMANENT:
            raise Rejected(_PERMANENT[code], code) from err
        raise
    return answer["MessageId"]
