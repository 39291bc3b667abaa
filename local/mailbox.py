"""The emails the local stack sent: moto keeps every message SES accepted, and its server lists them.

moto has no SES read API; its server's /moto-api/data.json dumps the tracked models of every service, among
them `ses.RawMessage` (id, source, destinations, raw_data) for each raw send, the kind chalicelib.delivery.email
makes, in the order they were sent. Messages sent with Simple or Template content are not listed.

CLI: `python -m local.mailbox [--limit N] [--raw ID]` against $AWS_ENDPOINT_URL (the moto endpoint `make run`
printed); `make mail` runs it.
"""

from __future__ import annotations

import argparse
import email
import json
import os
import sys
import urllib.request
from email.message import EmailMessage
from email.policy import default
from typing import Any


def _raw_messages(endpoint_url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{endpoint_url.rstrip('/')}/moto-api/data.json", timeout=30) as answer:
        data = json.load(answer)
    return list((data.get("ses") or {}).get("RawMessage") or [])


def _parse(raw_data: str) -> EmailMessage:
    return email.message_from_string(raw_data, policy=default)  # type: ignore[return-value]


def _text(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    return part.get_content() if part is not None else ""


def sent(endpoint_url: str, limit: int = 20) -> list[dict[str, Any]]:
    """The last `limit` raw emails moto accepted, oldest first: {messageId, source, destinations, subject,
    attachments (file names), body (the text part)}."""
    out = []
    for record in _raw_messages(endpoint_url)[-limit:] if limit > 0 else []:
        message = _parse(record.get("raw_data") or "")
        out.append({
            "messageId": record.get("id"),
            "source": record.get("source"),
            # moto lists a recipient twice when it is both in Destination and in the To header.
            "destinations": list(dict.fromkeys(record.get("destinations") or [])),
            "subject": str(message["Subject"] or ""),
            "attachments": [part.get_filename() for part in message.iter_attachments()],
            "body": _text(message),
        })
    return out


def raw(endpoint_url: str, message_id: str) -> str | None:
    """The whole MIME text of the sent email `message_id`, or None when moto has no such message."""
    for record in _raw_messages(endpoint_url):
        if record.get("id") == message_id:
            return record.get("raw_data") or ""
    return None


def _show(mail: dict[str, Any]) -> str:
    lines = [f"{mail['messageId']}", f"  From:    {mail['source']}", f"  To:      {', '.join(mail['destinations'])}",
             f"  Subject: {mail['subject']}"]
    if mail["attachments"]:
        lines.append(f"  Attached: {', '.join(str(name) for name in mail['attachments'])}")
    lines += ["", *("    " + line for line in mail["body"].splitlines()), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.mailbox", description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=20, help="show the last N emails (default 20)")
    parser.add_argument("--raw", metavar="ID", help="print the whole MIME message of this message id")
    args = parser.parse_args(argv)
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        print("AWS_ENDPOINT_URL is not set: export the moto endpoint `make run` printed "
              "(AWS_ENDPOINT_URL=http://127.0.0.1:<moto port> make mail).", file=sys.stderr)
        return 2
    try:
        if args.raw:
            text = raw(endpoint, args.raw)
            if text is None:
                print(f"no sent email has the id {args.raw}", file=sys.stderr)
                return 1
            print(text)
            return 0
        mails = sent(endpoint, args.limit)
    except OSError as err:
        print(f"cannot read the sent emails from {endpoint}: {err}", file=sys.stderr)
        return 1
    if not mails:
        print(f"no email sent yet through {endpoint}", file=sys.stderr)
    for mail in mails:
        print(_show(mail))
    return 0


if __name__ == "__main__":
    sys.exit(main())
