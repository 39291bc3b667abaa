"""Delivery targets on the command line (`--target`), and the webhook signing secret the API shows once."""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

EVENTS = ("job.completed", "job.failed", "job.cancelled", "job.progress")  # the API's order
FINAL_EVENTS = EVENTS[:3]  # what `webhook:URL` subscribes to
TARGET_HELP = ("a delivery target: api:async, api:sync, email:ADDRESS, webhook:URL (job.completed, job.failed and "
               "job.cancelled) or webhook:EVENT,EVENT:URL (any of " + ", ".join(EVENTS) + ")")


def target(value: str) -> dict[str, Any]:
    """`api:async`, `api:sync`, `email:ADDRESS`, `webhook:URL` or `webhook:EVENT,...:URL` as a delivery target."""
    kind, _, rest = value.partition(":")
    if kind == "api" and rest in ("async", "sync"):
        return {"type": "api", "mode": rest}
    if kind == "email" and rest:
        return {"type": "email", "to": rest}
    if kind == "webhook" and rest:
        return _webhook(rest)
    raise argparse.ArgumentTypeError(f"must be api:async, api:sync, email:ADDRESS, webhook:URL or "
                                     f"webhook:EVENT,EVENT:URL, not {value!r}")


def _webhook(rest: str) -> dict[str, Any]:
    if rest.startswith(("http://", "https://")):
        return {"type": "webhook", "url": rest, "events": list(FINAL_EVENTS)}
    names, _, url = rest.partition(":")  # event names hold no ':'; the URL starts at the first one
    events = [e.strip() for e in names.split(",") if e.strip()]
    unknown = [e for e in events if e not in EVENTS]
    if unknown or not events:
        raise argparse.ArgumentTypeError(f"{unknown[0] if unknown else names!r} is not an event; the events are "
                                         + ", ".join(EVENTS))
    if not url.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"webhook:{names}: must be followed by :URL (https://...), not {url!r}")
    return {"type": "webhook", "url": url, "events": [e for e in EVENTS if e in events]}


def target_text(t: dict[str, Any]) -> str:
    """A target as `--target` spells it."""
    if t.get("type") == "webhook":
        events = t.get("events") or []
        return f"webhook:{','.join(events)}:{t.get('url')}" if list(events) != list(FINAL_EVENTS) \
            else f"webhook:{t.get('url')}"
    return f"{t.get('type')}:{t.get('mode') or t.get('to')}"


def warn_secret(stream: TextIO | None = None, previous_expires_at: str | None = None) -> None:
    """The warning that goes with a secret: always printed (to stderr), whatever --quiet says."""
    out = stream or sys.stderr
    print("reports: the webhook signing secret above is shown this once: copy it now, it is not shown again.",
          file=out, flush=True)
    if previous_expires_at:
        print(f"reports: the previous secret keeps signing beside it until {previous_expires_at}; switch your "
              "receivers over before then.", file=out, flush=True)
