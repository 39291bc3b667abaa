"""Scheduled reports: on its day, a configured report's job for the previous month."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from pynamodb.exceptions import DeleteError, PutError

from chalicelib import clock
from chalicelib.auth import tenant_scope
from chalicelib.errors import ActiveJobExists, Conflict, NotFound, RateLimited, ServiceUnavailable
from chalicelib.jobs.create import create_job
from chalicelib.tables import Control, ReportConfig

log = logging.getLogger(__name__)


def previous_month(today: datetime) -> str:
    return (today.replace(day=1) - timedelta(days=1)).strftime("%Y-%m")


def run_due(today: datetime | None = None) -> dict[str, int]:
    """Create the jobs due today; a second run on the same day creates nothing.

    Every scheduled report gets its job, whatever its targets: the schedule is how a report delivered only by
    email or webhook is generated (the API refuses those with 409); its deliveries follow its completion.
    """
    today = today or clock.now()
    period = previous_month(today)
    counts = {"created": 0, "skipped": 0, "deferred": 0}
    for report in ReportConfig.by_schedule.query(today.day):
        # Per tenant: report ids are unique within a tenant only, and two tenants' report-123 each get their job.
        marker = Control(f"sched#{tenant_scope(report.tenant)}#{report.report_id}#{period}", job_id=None,
                         expires_at=clock.expiry(days=40))
        try:
            # once_per_period: however often this runs (retries, two schedulers), one job per report and month.
            marker.save(condition=Control.pk.does_not_exist())
        except PutError as err:
            if err.cause_response_code != "ConditionalCheckFailedException":
                raise
            counts["skipped"] += 1
            continue
        try:
            job = create_job(report.owner_id, report, period, trigger="schedule")
            marker.update(actions=[Control.job_id.set(job.job_id)])
            counts["created"] += 1
        except ActiveJobExists:
            counts["skipped"] += 1
        except (NotFound, Conflict):  # the report was deleted (or is being deleted) since it was listed
            _forget(marker)
            counts["skipped"] += 1
        except (RateLimited, ServiceUnavailable) as err:
            # Not created: forget the marker so the next run (within the hour) tries again.
            log.warning("scheduled report deferred", extra={"reportId": report.report_id, "reason": err.detail})
            _forget(marker)
            counts["deferred"] += 1
    return counts


def _forget(marker: Control) -> None:
    try:
        marker.delete()
    except DeleteError:
        log.exception("could not forget schedule marker", extra={"pk": marker.pk})
