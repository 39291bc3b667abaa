"""A local stand-in for EventBridge schedules: fires each `@app.schedule` handler on its schedule.

Schedules: `rate(N minute|minutes|hour|hours|day|days)` and `cron(min hour day-of-month month day-of-week year)`
in UTC, as EventBridge reads them (numbers, names, `*`, `?`, lists, ranges and `/` steps; not `L`, `W`, `#`).
Per-handler override, in seconds: `<HANDLER_NAME_UPPER>_INTERVAL_SECONDS`, and the documented aliases
REAPER_INTERVAL_SECONDS (reap_stale_jobs) and CACHE_WARM_INTERVAL_SECONDS (warm_vendor_cache); `0` disables the
handler. SCHEDULED_TIMEOUT_SECONDS (default 300) is the remaining time each invocation starts with.

Each handler gets its own thread, so a slow one does not delay the others; a run that overlaps its next due
time skips it (EventBridge would start a concurrent invocation). A handler exception is logged, and the
schedule goes on.

CLI (against the stack at $AWS_ENDPOINT_URL):
    python -m local.scheduler list            the handlers and their schedules
    python -m local.scheduler run HANDLER     run one scheduled handler now, print its result
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from local.deploy import DEFAULT_REGION
from local.poller import ACCOUNT_ID, Handler, LambdaContext, env_float, function_name, memory_size, resolve_handler

log = logging.getLogger("local.scheduler")

DEFAULT_TIMEOUT_SECONDS = 300.0
# Documented names for the intervals of handlers other engineers own (README / design).
INTERVAL_ALIASES = {
    "reap_stale_jobs": "REAPER_INTERVAL_SECONDS",
    "warm_vendor_cache": "CACHE_WARM_INTERVAL_SECONDS",
    "poll_provider_batches": "BATCH_POLL_INTERVAL_SECONDS",
}

_RATE = re.compile(r"^rate\(\s*(\d+)\s+(minute|minutes|hour|hours|day|days)\s*\)$", re.IGNORECASE)
_CRON = re.compile(r"^cron\((.*)\)$", re.IGNORECASE)
_UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}
_MONTHS = {m: i + 1 for i, m in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())}
_DAYS = {d: i + 1 for i, d in enumerate("SUN MON TUE WED THU FRI SAT".split())}  # EventBridge: 1 = Sunday


# --- schedule expressions ----------------------------------------------------------------------------------


def _field(text: str, low: int, high: int, names: dict[str, int] | None = None) -> set[int] | None:
    """The values a cron field allows; None for `*` / `?` (anything)."""
    text = text.strip().upper()
    if text in ("*", "?"):
        return None
    values: set[int] = set()

    def number(token: str) -> int:
        if names and token in names:
            return names[token]
        if not token.isdigit():
            raise ValueError(f"unsupported cron token {token!r}")
        return int(token)

    for part in text.split(","):
        base, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if step < 1:
            raise ValueError(f"bad cron step in {part!r}")
        if base == "*":
            start, end = low, high
        elif "-" in base:
            a, b = base.split("-", 1)
            start, end = number(a), number(b)
        else:
            start = number(base)
            end = high if step_text else start
        if not (low <= start <= high and low <= end <= high) or start > end:
            raise ValueError(f"cron value out of range in {part!r} ({low}-{high})")
        values.update(range(start, end + 1, step))
    return values


@dataclass(frozen=True)
class Cron:
    minutes: set[int] | None
    hours: set[int] | None
    days_of_month: set[int] | None
    months: set[int] | None
    days_of_week: set[int] | None  # 1 = Sunday
    years: set[int] | None

    @classmethod
    def parse(cls, body: str) -> Cron:
        fields = body.split()
        if len(fields) != 6:
            raise ValueError(f"cron() needs 6 fields, got {len(fields)}: {body!r}")
        return cls(_field(fields[0], 0, 59), _field(fields[1], 0, 23), _field(fields[2], 1, 31),
                   _field(fields[3], 1, 12, _MONTHS), _field(fields[4], 1, 7, _DAYS), _field(fields[5], 1970, 2199))

    def _day_matches(self, day: datetime) -> bool:
        weekday = (day.weekday() + 1) % 7 + 1  # Monday=0 in Python -> 2 here; Sunday -> 1
        return ((self.years is None or day.year in self.years)
                and (self.months is None or day.month in self.months)
                and (self.days_of_month is None or day.day in self.days_of_month)
                and (self.days_of_week is None or weekday in self.days_of_week))

    def next_after(self, now: datetime) -> datetime:
        """The first matching minute strictly after `now` (UTC)."""
        start = now.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        hours = sorted(self.hours) if self.hours is not None else list(range(24))
        minutes = sorted(self.minutes) if self.minutes is not None else list(range(60))
        day = start.replace(hour=0, minute=0)
        for _ in range(366 * 5):
            if self._day_matches(day):
                for hour in hours:
                    for minute in minutes:
                        candidate = day.replace(hour=hour, minute=minute)
                        if candidate >= start:
                            return candidate
            day += timedelta(days=1)
        raise ValueError("cron expression never fires in the next five years")


@dataclass(frozen=True)
class Schedule:
    """When a handler fires: every `interval` seconds, or on a cron."""

    expression: str
    interval: float | None = None
    cron: Cron | None = None

    @classmethod
    def parse(cls, expression: Any) -> Schedule:
        text = expression.to_string() if hasattr(expression, "to_string") else str(expression)
        text = text.strip()
        rate = _RATE.match(text)
        if rate:
            value, unit = int(rate.group(1)), rate.group(2).lower().rstrip("s")
            if value < 1:
                raise ValueError(f"rate must be positive: {text!r}")
            return cls(text, interval=float(value * _UNIT_SECONDS[unit]))
        cron = _CRON.match(text)
        if cron:
            return cls(text, cron=Cron.parse(cron.group(1)))
        raise ValueError(f"unsupported schedule expression {text!r}")

    def next_after(self, now: datetime) -> datetime:
        if self.interval is not None:
            return now + timedelta(seconds=self.interval)
        assert self.cron is not None
        return self.cron.next_after(now)


def override_names(handler_name: str) -> list[str]:
    names = [f"{re.sub(r'[^A-Za-z0-9]', '_', handler_name).upper()}_INTERVAL_SECONDS"]
    if handler_name in INTERVAL_ALIASES:
        names.append(INTERVAL_ALIASES[handler_name])
    return names


def interval_override(handler_name: str) -> float | None:
    """Seconds from the handler's env override (the name-derived variable wins over the alias), if set."""
    for name in override_names(handler_name):
        raw = os.environ.get(name, "").strip()
        if raw:
            try:
                return max(0.0, float(raw))
            except ValueError:
                log.warning("ignoring %s=%r: not a number of seconds", name, raw)
    return None


def scheduled_event(rule_arn: str, region: str, when: datetime | None = None) -> dict[str, Any]:
    """The event EventBridge sends a scheduled target."""
    when = (when or datetime.now(UTC)).astimezone(UTC)
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT_ID,
        "time": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [rule_arn],
        "detail": {},
    }


# --- the scheduler -----------------------------------------------------------------------------------------


@dataclass
class ScheduledHandler:
    name: str
    handler: Handler
    schedule: Schedule | None  # None: disabled, or an expression we cannot read
    function_name: str
    memory_limit_in_mb: int = 128
    runs: int = 0
    failures: int = 0
    next_run: datetime | None = None

    @property
    def rule_arn(self) -> str:
        region = os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
        return f"arn:aws:events:{region}:{ACCOUNT_ID}:rule/{self.function_name}"

    def fire(self, timeout_seconds: float | None = None, when: datetime | None = None) -> Any:
        """Invoke the handler once as EventBridge + Lambda would; exceptions propagate."""
        region = os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
        timeout = timeout_seconds if timeout_seconds is not None else env_float("SCHEDULED_TIMEOUT_SECONDS",
                                                                                 DEFAULT_TIMEOUT_SECONDS)
        context = LambdaContext(self.function_name, timeout, memory_limit_in_mb=self.memory_limit_in_mb,
                                region=region)
        self.runs += 1
        return self.handler(scheduled_event(self.rule_arn, region, when), context)


def scheduled_handlers(app: Any) -> list[ScheduledHandler]:
    """Every `@app.schedule` handler of `app`, with its effective schedule (env overrides applied)."""
    from chalice.app import ScheduledEventConfig

    found = []
    for config in getattr(app, "event_sources", []):
        if not isinstance(config, ScheduledEventConfig):
            continue
        override = interval_override(config.name)
        schedule: Schedule | None
        if override is not None:
            schedule = Schedule(f"every {override:g}s (env override)", interval=override) if override > 0 else None
        else:
            try:
                schedule = Schedule.parse(config.schedule_expression)
            except ValueError as err:
                log.error("%s: %s; it will not be fired (set %s to fire it)", config.name, err,
                          override_names(config.name)[0])
                schedule = None
        found.append(ScheduledHandler(config.name, resolve_handler(app, config), schedule,
                                      function_name(app, config.name), memory_size(config.name)))
    return found


class Scheduler:
    """Runs every scheduled handler of `app` on its schedule, one thread each, until `stop_event` is set."""

    def __init__(self, app: Any, stop_event: threading.Event | None = None) -> None:
        self.stop_event = stop_event or threading.Event()
        self.handlers = scheduled_handlers(app)
        self._threads: list[threading.Thread] = []

    def start(self) -> list[threading.Thread]:
        for item in self.handlers:
            if item.schedule is None:
                log.info("scheduler: %s is disabled", item.name)
                continue
            thread = threading.Thread(target=self._loop, args=(item,), name=f"schedule-{item.name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self._threads

    def stop(self, timeout: float | None = None) -> bool:
        self.stop_event.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def _loop(self, item: ScheduledHandler) -> None:
        assert item.schedule is not None
        item.next_run = item.schedule.next_after(datetime.now(UTC))
        log.info("scheduler: %s %s, first run %s", item.name, item.schedule.expression,
                 item.next_run.strftime("%Y-%m-%dT%H:%M:%SZ"))
        while True:
            delay = (item.next_run - datetime.now(UTC)).total_seconds()
            if self.stop_event.wait(max(0.0, delay)):
                return
            started = time.monotonic()
            try:
                result = item.fire(when=item.next_run)
                log.info("scheduler: %s done in %.2fs: %s", item.name, time.monotonic() - started,
                         _short(result))
            except Exception:
                item.failures += 1
                log.exception("scheduler: %s raised; the schedule goes on", item.name)
            now = datetime.now(UTC)
            nxt = item.schedule.next_after(item.next_run)
            while nxt <= now:  # overran its period: skip the missed fire times
                nxt = item.schedule.next_after(nxt)
            item.next_run = nxt


def _short(value: Any, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# --- CLI ---------------------------------------------------------------------------------------------------


def _load_app(attach: bool) -> Any:
    """Import app.py with the environment of the local stack (deploying or attaching when `attach`)."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", DEFAULT_REGION)
    from local.deploy import PROJECT_ROOT, deploy, resolve_prefix

    prefix = resolve_prefix()
    os.environ["APP_PREFIX"] = prefix
    if attach:
        os.environ.update(deploy(os.environ["AWS_ENDPOINT_URL"], prefix)["env"])
    if str(PROJECT_ROOT) not in sys.path:
        sys.path.insert(0, str(PROJECT_ROOT))
    import app as app_module  # settings are read here, once: the environment must be complete by now

    return app_module.app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.scheduler",
                                     description="Scheduled handlers of app.py, run locally.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="print the scheduled handlers and their schedules")
    run = sub.add_parser("run", help="run one scheduled handler now against the stack at $AWS_ENDPOINT_URL")
    run.add_argument("handler", help="the handler's name (see `list`)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("botocore", "pynamodb"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    if args.command == "list":
        handlers = scheduled_handlers(_load_app(attach=False))
        if not handlers:
            print("no scheduled handlers in app.py")
        now = datetime.now(UTC)
        for item in handlers:
            when = item.schedule.next_after(now).strftime("%Y-%m-%dT%H:%M:%SZ") if item.schedule else "-"
            expression = item.schedule.expression if item.schedule else "disabled"
            print(f"{item.name:<28} {expression:<36} next {when}   override: {' or '.join(override_names(item.name))}")
        return 0

    if not os.environ.get("AWS_ENDPOINT_URL"):
        print("AWS_ENDPOINT_URL is not set: point it at the local stack's moto server (printed by `make run`).",
              file=sys.stderr)
        return 2
    handlers = {h.name: h for h in scheduled_handlers(_load_app(attach=True))}
    item = handlers.get(args.handler)
    if item is None:
        print(f"no scheduled handler {args.handler!r}; known: {', '.join(sorted(handlers)) or 'none'}",
              file=sys.stderr)
        return 2
    try:
        result = item.fire()
    except Exception:
        traceback.print_exc()
        return 1
    print(json.dumps(result, indent=2, default=str, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
