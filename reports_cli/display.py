"""How jobs are shown: a live rich progress bar on a terminal, plain progress lines otherwise."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from reports_cli.targets import target_text

LABELS = {"CancellationRequested": "Cancelling"}
ERROR_WIDTH = 100  # a delivery's last error is cut to this in the table (--json has it whole)


def label(status: str | None) -> str:
    return LABELS.get(status or "", status or "?")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def eta_text(job: dict[str, Any], now: datetime | None = None) -> str:
    """'~42s' / '~3m' from estimatedCompletionAt while the job runs; '-' otherwise."""
    when = parse_time(job.get("estimatedCompletionAt"))
    if when is None or job.get("status") != "Processing":
        return "-"
    seconds = max(0, int((when - (now or datetime.now(UTC))).total_seconds()))
    if seconds < 90:
        return f"~{seconds}s"
    if seconds < 5400:
        return f"~{round(seconds / 60)}m"
    return f"~{seconds / 3600:.1f}h"


def counts(job: dict[str, Any], unit: str = "lines") -> str:
    total, done = int(job.get("totalLines") or 0), int(job.get("processedLines") or 0)
    percent = int(job.get("progressPercent") or 0)
    if unit == "rows":  # an import: the file's rows checked and stored, nothing flagged
        return f"{done}/{total or '?'} rows ({percent}%)"
    return f"{done}/{total} lines ({percent}%), {int(job.get('failedLines') or 0)} flagged"


def columns(rows: list[tuple[str, ...]]) -> str:
    """Aligned plain-text columns, the first row the header (readable in a terminal, greppable in a pipe)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def usage_text(usage: dict[str, Any] | None) -> str | None:
    """`12 model requests, 26,112 input tokens (70% cached), 3,310 output; about 0.003091 USD` (None before any)."""
    if not usage or not usage.get("modelRequests"):
        return None
    given = int(usage.get("inputTokens") or 0)
    share = f" ({int(usage.get('cachedTokens') or 0) * 100 // given}% cached)" if given else ""
    cost = f"; about {usage['estimatedCostUsd']} USD" if usage.get("estimatedCostUsd") else ""
    fallbacks = f"; {usage['flexFallbacks']} sent standard (no flex capacity)" if usage.get("flexFallbacks") else ""
    return (f"{usage['modelRequests']} model requests, {given:,} input tokens{share}, "
            f"{int(usage.get('outputTokens') or 0):,} output{cost}{fallbacks}")


def describe(job: dict[str, Any]) -> str:
    """A multi-line, human summary of one job (the `status` command), with its deliveries if it has any."""
    rows = [
        ("Job", job.get("jobId")),
        ("Report", f"{job.get('reportId')} ({job.get('period')})"),
        ("Status", label(job.get("status")) + (f" - {job['statusMessage']}" if job.get("statusMessage") else "")),
        ("Progress", counts(job) + f", {int(job.get('cachedLines') or 0)} from the vendor cache"),
        ("ETA", f"{job['estimatedCompletionAt']} ({eta_text(job)})" if eta_text(job) != "-" else None),
        ("Error", job.get("errorMessage")),
        # retryCount counts model requests sent again (rate limits, transient errors), not retries of the job.
        ("Retries", f"{int(job['retryCount'])} model request retries" if job.get("retryCount") else None),
        ("Lane", job.get("lane")),
        ("Usage", usage_text(job.get("usage"))),
        ("Created", job.get("createdAt")),
        ("Completed", job.get("completedAt")),
        ("Result", job.get("resultUrl")),
    ]
    text = "\n".join(f"{name:<10} {value}" for name, value in rows if value not in (None, ""))
    deliveries = job.get("deliveries") or []
    return f"{text}\n\nDeliveries (retry one: reports retry-delivery JOB_ID N)\n{delivery_table(deliveries)}" \
        if deliveries else text


def delivery_table(deliveries: list[dict[str, Any]]) -> str:
    """A job's deliveries, numbered as `retry-delivery` takes them (from 0)."""
    head = ("N", "TYPE", "DESTINATION", "EVENT", "STATUS", "ATTEMPTS", "AT", "LAST ERROR")

    def status(d: dict[str, Any]) -> str:
        nxt = d.get("nextAttemptAt")
        return f"{d.get('status')} (next {nxt})" if nxt else str(d.get("status"))

    def error(d: dict[str, Any]) -> str:
        text = " ".join(str(d.get("lastError") or "-").split())
        return text if len(text) <= ERROR_WIDTH else text[:ERROR_WIDTH - 3] + "..."

    return columns([head] + [(str(n), str(d.get("type")), str(d.get("destination")), str(d.get("event")), status(d),
                              str(int(d.get("attempts") or 0)), str(d.get("at") or "-"), error(d))
                             for n, d in enumerate(deliveries)])


def table(jobs: list[dict[str, Any]]) -> str:
    """Aligned plain-text columns (readable in a terminal, greppable in a pipe)."""
    head = ("JOB", "REPORT", "PERIOD", "STATUS", "LINES", "FLAGGED", "CREATED")
    return columns([head] + [(
        str(j.get("jobId")), str(j.get("reportId")), str(j.get("period")), label(j.get("status")),
        f"{int(j.get('processedLines') or 0)}/{int(j.get('totalLines') or 0)}", str(int(j.get("failedLines") or 0)),
        str(j.get("createdAt") or ""),
    ) for j in jobs])


def report_table(reports: list[dict[str, Any]]) -> str:
    """Report configurations as aligned columns."""
    head = ("REPORT", "NAME", "OWNER", "TARGETS", "ROLES", "CATEGORIES", "SCHEDULE")

    def targets(r: dict[str, Any]) -> str:
        disabled = {d.get("target") for d in r.get("disabledTargets") or []}
        return ",".join(target_text(t) + (" (disabled)" if i in disabled else "")
                        for i, t in enumerate(r.get("deliveryTargets") or []))

    return columns([head] + [(
        str(r.get("reportId")), str(r.get("name")), str(r.get("ownerId")), targets(r),
        ",".join(r.get("allowedRoles") or []) or "-", str(len(r.get("categories") or [])),
        f"monthly day {r['schedule']['day']}" if r.get("schedule") else "-",
    ) for r in reports])


def outcome(job: dict[str, Any]) -> str:
    """The one line printed when a wait ends."""
    status = job.get("status")
    if status == "Completed":
        flagged = int(job.get("failedLines") or 0)
        review = f", {flagged} flagged for review" if flagged else ""
        return f"Completed: {int(job.get('processedLines') or 0)} lines{review}. Result: reports result {job['jobId']}"
    if status == "Failed":
        return f"Failed: {job.get('errorMessage') or job.get('statusMessage') or 'no reason given'}"
    if status == "Cancelled":
        return f"Cancelled: {job.get('statusMessage') or counts(job)}"
    return f"{label(status)}: {counts(job)}"


class Watch:
    """Shows a job's progress while `Client.wait` polls: a live bar on a terminal, else a line per change."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False, live: bool | None = None,
                 unit: str = "lines") -> None:
        self.stream = stream or sys.stderr
        self.unit = unit  # "rows" for an import job
        self.quiet = quiet
        self.live = self.stream.isatty() if live is None else live
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self.last = ""

    def __enter__(self) -> Watch:
        if self.live and not self.quiet:
            self.progress = Progress(
                SpinnerColumn(), TextColumn("[bold]{task.fields[status]:<10}"), BarColumn(),
                TextColumn("{task.completed:>.0f}/{task.fields[total_lines]} " + self.unit),
                *([] if self.unit == "rows" else [TextColumn("{task.fields[flagged]} flagged")]),
                TextColumn("ETA {task.fields[eta]}"),
                TimeElapsedColumn(), console=Console(file=self.stream), transient=False)
            self.progress.start()
            self.task = self.progress.add_task("job", total=None, status="Queued", total_lines="?", flagged=0,
                                               eta="-")
        return self

    def update(self, job: dict[str, Any]) -> None:
        if self.quiet:
            return
        if self.progress is not None and self.task is not None:
            total = int(job.get("totalLines") or 0)
            self.progress.update(self.task, total=total or None, completed=int(job.get("processedLines") or 0),
                                 status=label(job.get("status")), total_lines=total or "?",
                                 flagged=int(job.get("failedLines") or 0), eta=eta_text(job))
            return
        line = f"{label(job.get('status'))}: {counts(job, self.unit)}, ETA {eta_text(job)}"
        if line != self.last:
            self.last = line
            print(line, file=self.stream, flush=True)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()
