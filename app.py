"""Chalice entry point: middleware, blueprints and one-line event handlers."""

from chalice import Chalice, CORSConfig, Cron, Rate

from chalicelib import observability
from chalicelib.api import imports, jobs, meta, middleware, reports, results
from chalicelib.settings import get_settings

settings = get_settings()
app = Chalice(app_name="async-reports")
app.api.cors = CORSConfig(
    allow_origin=settings.cors_allow_origin,
    allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "If-None-Match", "If-Match"],
    expose_headers=["Location", "Retry-After", "ETag"],
    max_age=600,
)
# Outermost: correlation keys, a trace subsegment and one metrics flush for every event type.
app.register_middleware(observability.middleware, "all")
app.register_middleware(middleware.guard, "http")
app.register_blueprint(meta.bp)
app.register_blueprint(reports.bp, url_prefix="/api/v1")
app.register_blueprint(jobs.bp, url_prefix="/api/v1")
app.register_blueprint(results.bp, url_prefix="/api/v1")
app.register_blueprint(imports.bp, url_prefix="/api/v1")


# One message per invocation: each is a unit of minutes (a job or a chunk of one), and a batch
# would work them one after another in a single invocation instead of in parallel.
@app.on_sqs_message(queue=f"{settings.prefix}-work", batch_size=1)
def process_work(event):
    from chalicelib import worker  # the API function never imports the worker (cold start)

    return worker.handle_batch(event.to_dict(), event.context)


@app.on_sqs_message(queue=f"{settings.prefix}-work-dlq", batch_size=10)
def handle_dead_letters(event):
    from chalicelib import worker

    return worker.handle_dead_letters(event.to_dict(), event.context)


@app.schedule(Rate(5, unit=Rate.MINUTES))
def reap_stale_jobs(event):
    from chalicelib import reaper

    return reaper.reap()


# Hourly, so a deferred run (rate limit, outage) is retried the same day; at most one job per report and month.
@app.schedule(Rate(1, unit=Rate.HOURS))
def run_scheduled_reports(event):
    from chalicelib import clock, schedules

    # The time EventBridge scheduled this run for (a late or retried invocation still runs that day's reports).
    return schedules.run_due(clock.parse(getattr(event, "time", None)))


# The batch lane: jobs waiting on the provider's Batch API are collected (or their cancel forwarded) here.
@app.schedule(Rate(1, unit=Rate.MINUTES))
def poll_provider_batches(event):
    from chalicelib.worker import batchlane

    return batchlane.poll()


@app.schedule(Cron(0, 2, "*", "*", "?", "*"))
def warm_vendor_cache(event):
    from chalicelib import worker

    return worker.warm_cache(event.context)
