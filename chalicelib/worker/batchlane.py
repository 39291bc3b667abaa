"""The batch lane: a job's model requests go to the provider's Batch API, and a scheduled poller collects them.

1. `submit` (the job's first invocation, before its lines are worked): every vendor of the job's lines that the
   tenant's cache does not answer goes into one JSONL file of requests (categorize/batch.py); the plan (which
   vendors each custom_id asks about) goes to S3; the plan's key is written on the job as its intent
   (`intend_batch`) and the job listed in the pending-batches item, then the batch is created (its metadata names
   the job and the plan) and the job records it (`wait_on_batch`, one write under its lease, refused if a batch is
   already there; it clears the intent). The invocation ends: the job stays Processing with no lease and no
   message, its status message "Waiting on the provider's batch". An invocation killed between the create and the
   record leaves the batch running (and billed) at the provider: the job's next invocation finds it by its
   metadata (categorize/batch.find) and takes it back instead of paying for a second; if the job stops first
   (cancelled, or failed by the reaper), the poller cancels it.
2. `poll` (the `poll_provider_batches` schedule): for each pending job, a job that became final meanwhile
   (cancelled) has its cancel forwarded to its batch, and once the batch stopped, what it answered before (billed
   by the provider) is counted on the job and kept in the tenant's cache. A finished batch (completed, expired,
   cancelled, failed) is collected: its answers go to S3 and through to the tenant's cache, its usage to the job
   at batch prices, in one write conditioned on the batch still being the job's pending one (two pollers collect
   it once); then the job's work message is sent. A batch still running moves the job's heartbeat and message
   (the reaper leaves it).
3. The job's invocations then start with the batch's answers (`answers`, into the invocation's memo): the lines
   are worked, counted and checkpointed as on every lane, once each. Vendors the batch left unanswered (a failed
   request, an expired batch's unfinished half) are asked on the standard lane then: never lost, never counted
   twice (the batch itself counts no line).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from pynamodb.exceptions import PutError

from chalicelib import credentials, deps, faults
from chalicelib.categorize import batch as provider_batch
from chalicelib.categorize import cache, prompt
from chalicelib.categorize.normalize import normalize_vendor
from chalicelib.categorize.types import Answer, Item
from chalicelib.jobs import store
from chalicelib.jobs.create import enqueue
from chalicelib.jobs.states import TERMINAL, JobStatus
from chalicelib.lines.store import iter_lines
from chalicelib.lines.versions import job_partition
from chalicelib.settings import Settings, get_settings
from chalicelib.tables import Control, Job

log = logging.getLogger(__name__)
PENDING = "batches#pending"  # Control item: {jobId: epoch submitted} of the jobs waiting on a provider batch
WAITING = "Waiting on the provider's batch"


def _api(settings: Settings) -> Any:
    from chalicelib.categorize import provider

    key = credentials.openai_api_key(settings)
    return provider.client(key, settings.openai_base_url, settings.openai_timeout_seconds) if key else None


def _put(key: str, value: Any) -> None:
    deps.client("s3").put_object(Bucket=get_settings().results_bucket, Key=key, Body=json.dumps(value).encode(),
                                 ContentType="application/json")


def _get(key: str) -> Any:
    return json.loads(deps.client("s3").get_object(Bucket=get_settings().results_bucket, Key=key)["Body"].read())


def submit(run: Any) -> bool:
    """Send a batch-lane job's requests to the provider's Batch API; True when the job now waits on the batch
    (the invocation stops), False when there is nothing to send (offline, or every vendor cached): work on."""
    job, settings = run.job, run.settings
    api = _api(settings) if run.backend is not None else None
    if api is None:
        return False
    tenant = job.tenant or job.owner_id
    categories = list(job.categories)
    groups: dict[str, tuple[str, str]] = {}
    for line in iter_lines(job_partition(job), page=1000):  # the version the job pinned
        groups.setdefault(normalize_vendor(line.vendor), (line.vendor, line.description or ""))
    known = cache.lookup(categories, list(groups), settings.openai_model, job.job_id, tenant=tenant)
    misses = [v for v in groups if v not in known]
    # An invocation that died between creating the batch and recording it left one at the provider, running and
    # billed: the job's intent (its plan, written just before the create) says so, and the job takes that batch
    # back instead of creating a second (the first would never be collected nor cancelled). Only then is the
    # provider's list read. A batch the poller cancelled meanwhile (the job was cancelled, then retried before
    # the poller saw the batch stop) is taken back too: collected, what it answered is counted and kept, and the
    # vendors it did not answer are asked on the standard lane, as for an expired batch.
    orphan = _orphan(api, job) if job.batch_intent else None
    if orphan is None and not misses:
        if job.batch_intent:  # nothing at the provider: later invocations need not read its list again
            store.current().clear_batch_intent(job, job.batch_intent)
        return False
    if orphan is not None:
        batch_id, plan_key = str(orphan.id), str(job.batch_intent)
        plan = _get(plan_key)
        list_pending(job.job_id)  # listed at the intent; again, in case the poller let it go meanwhile
        log.info("took back a provider batch created for the job", extra={"jobId": job.job_id, "batchId": batch_id})
    else:
        size, key = settings.model_batch_size, prompt.cache_key(tenant, categories)
        plan = {f"r{n // size}": [[v, *groups[v]] for v in misses[n:n + size]] for n in range(0, len(misses), size)}
        lines = [provider_batch.request_line(custom_id, settings.openai_model,
                                             [Item(f"v{i}", vendor, description)
                                              for i, (_, vendor, description) in enumerate(items)], categories, key)
                 for custom_id, items in plan.items()]
        plan_key = f"results/batches/{job.job_id}/{int(time.time() * 1000)}/plan.json"
        _put(plan_key, plan)
        if not store.current().intend_batch(job, run.lease, plan_key):
            return True  # the lease is lost, or the job waits on a batch already: nothing to send, nor to work
        list_pending(job.job_id)  # so that the poller cancels the batch if the job stops before recording it
        batch_id = provider_batch.submit(api, lines, {"jobId": job.job_id, "plan": plan_key})
        faults.point("after_batch_create")
    vendors = sum(len(items) for items in plan.values())
    message = f"{WAITING} ({len(plan)} requests for {vendors} vendors)"
    if not store.current().wait_on_batch(job, run.lease, batch_id, plan_key, message):
        # Another invocation of the job submitted first (or the job moved on): unless the job records this very
        # batch (taken back by both) or intends it (this invocation's lease lapsed: the next one takes it back,
        # or the poller cancels it if the job stopped), it is not the job's.
        current = store.current().load(job.job_id)
        if current is None or (current.batch_id != batch_id and current.batch_intent != plan_key):
            _cancel(api, batch_id)
        return True
    log.info("job waits on a provider batch", extra={"jobId": job.job_id, "batchId": batch_id,
                                                     "requests": len(plan)})
    return True


def _orphan(api: Any, job: Job) -> Any | None:
    """The batch the job's leftover intent names, if it is at the provider and alive. A failed list is read as
    none (a second batch at worst, as before intents), not as a crash that would fail the job."""
    try:
        return provider_batch.find(api, {"jobId": job.job_id, "plan": job.batch_intent or ""}, time.time())
    except Exception:
        log.warning("could not look for a batch of the job at the provider", exc_info=True,
                    extra={"jobId": job.job_id})
        return None


def list_pending(job_id: str) -> None:
    try:
        # pending_item_exists: the map is made once; a second maker's put is refused and it only adds its entry.
        Control(PENDING, stamps={}).save(condition=Control.pk.does_not_exist())
    except PutError as err:
        if err.cause_response_code != "ConditionalCheckFailedException":
            raise
    Control(PENDING).update(actions=[Control.stamps[job_id].set(int(time.time()))])


def _forget(job_id: str) -> None:
    Control(PENDING).update(actions=[Control.stamps[job_id].remove()])


def _cancel(api: Any, batch_id: str) -> None:
    try:
        api.batches.cancel(batch_id)
    except Exception:  # already final at the provider, or unreachable: the next poll tries again if the job is listed
        log.warning("could not cancel a provider batch", extra={"batchId": batch_id}, exc_info=True)


def answers(job: Job) -> dict[str, Answer]:
    """The collected batch's answers by normalized vendor (source `model`: the model answered them)."""
    if not job.batch_answers_key:
        return {}
    return {vendor: Answer("", category, float(confidence), "model", False)
            for vendor, (category, confidence) in _get(job.batch_answers_key).items()}


def poll(settings: Settings | None = None) -> dict[str, int]:
    """One round over the jobs waiting on a provider batch (the poll_provider_batches schedule)."""
    settings = settings or get_settings()
    counts = {"waiting": 0, "collected": 0, "cancelling": 0, "cancelled": 0}
    try:
        item = Control.get(PENDING, consistent_read=True)
        pending = item.stamps.as_dict() if item.stamps is not None else {}
    except Control.DoesNotExist:
        return counts
    api = _api(settings) if pending else None
    for job_id in pending:
        job = store.current().load(job_id)
        if job is not None and job.batch_intent and job.batch_state != "submitted" and api is not None:
            try:
                if kind := _poll_intent(api, job, settings):
                    counts[kind] += 1
            except Exception:  # the provider's list: the job stays listed, and the next poll looks again
                log.exception("could not look for a job's intended batch", extra={"jobId": job_id})
            continue
        if job is None or job.batch_state != "submitted" or not job.batch_id or api is None:
            _forget(job_id)
            continue
        try:
            counts[_poll_one(api, job, settings)] += 1
        except Exception:  # one job's failure (the provider, S3) must not stop the others; the next poll retries
            log.exception("could not poll a provider batch", extra={"jobId": job_id, "batchId": job.batch_id})
    return counts


def _poll_intent(api: Any, job: Job, settings: Settings) -> str | None:
    """A job that was about to create a batch and has not recorded one: while it lives, its next invocation takes
    the batch back; once it is final (cancelled, or failed by the reaper), the batch, if any, is cancelled, and
    once it has stopped, what it answered is counted on the job (the provider bills it) and kept in the tenant's
    cache, as for a batch the job recorded (`_stop`)."""
    if JobStatus(job.status) not in TERMINAL:
        return "waiting"
    plan_key = job.batch_intent or ""
    # Not _orphan: a failed list must not read as "none" here, or the job would be let go with its batch running.
    orphan = provider_batch.find(api, {"jobId": job.job_id, "plan": plan_key}, time.time())
    if orphan is None:
        _forget(job.job_id)  # none made
        return None
    if orphan.status not in provider_batch.FINISHED:
        if orphan.status != "cancelling":
            if _taken_back(job.job_id, str(orphan.id), intent=plan_key):
                return "waiting"  # retried meanwhile: its invocation takes the batch back
            _cancel(api, str(orphan.id))
        return "cancelling"  # listed still: a later poll finds it stopped and counts it
    got = _collect(api, job, orphan, settings, plan_key)
    # intent_unchanged & job_is_final: two pollers count it once; a job retried meanwhile takes the batch back
    # (cancelled or not: `submit`), and counts it when the poller collects it as the batch the job records.
    if store.current().settle_intent(job, plan_key, got.usage):
        _forget(job.job_id)
        return "cancelled"
    return None  # the next poll reads the job again: retried (it waits), or settled by another poller (let go)


def _poll_one(api: Any, job: Job, settings: Settings) -> str:
    found = api.batches.retrieve(job.batch_id)
    if JobStatus(job.status) in TERMINAL:
        return _stop(api, job, found, settings)
    if found.status not in provider_batch.FINISHED:
        counts = found.request_counts
        done = f": {counts.completed} of {counts.total} requests answered" if counts else ""
        store.current().batch_progress(job, f"{WAITING} ({found.status}{done})")
        return "waiting"
    got = _collect(api, job, found, settings)
    answers_key = (job.batch_plan_key or "").replace("plan.json", "answers.json")
    _put(answers_key, {vendor: [a.category, a.confidence] for vendor, a in got.answers.items()})
    left = f"; {got.unanswered} requests unanswered, asked on the standard lane" if got.unanswered else ""
    message = f"The provider's batch {found.status} with answers for {len(got.answers)} vendors{left}"
    if store.current().end_batch(job, "collected", answers_key, got.usage, message):
        enqueue(job.job_id, reason="batch_collected", tenant=job.tenant or job.owner_id)
    _forget(job.job_id)
    return "collected"


def _stop(api: Any, job: Job, found: Any, settings: Settings) -> str:
    """A job that became final (cancelled, failed) while it waited: its cancel is forwarded to the batch; once the
    batch has stopped, what it answered before is counted (the provider bills it) and kept in the tenant's cache
    (a retry asks again only for the rest), and the job no longer waits on it."""
    if found.status not in provider_batch.FINISHED:
        if found.status != "cancelling":
            if _taken_back(job.job_id, job.batch_id or ""):
                return "waiting"  # retried meanwhile: the job goes on waiting on its batch
            _cancel(api, job.batch_id or "")
        return "cancelling"
    got = _collect(api, job, found, settings)
    store.current().end_batch(job, "cancelled", None, got.usage, "")
    _forget(job.job_id)
    return "cancelled"


def _taken_back(job_id: str, batch_id: str, intent: str | None = None) -> bool:
    """Is the job live again and still on this batch (recording it, or intending it: its next invocation takes it
    back)? Read just before the poller cancels the batch: the read the poll began with is a provider call (seconds)
    old, and a user may have retried the job meanwhile. Cancelling its batch then would lose no line, but would send
    what the batch had yet to answer to the standard lane at twice the price. Anything else (the job gone, final
    still, or on another batch) and the batch is cancelled: nobody else would ever cancel or collect it. The
    provider's cancel cannot be conditioned on the job, so this narrows the window to this read."""
    now = store.current().load(job_id)
    if now is None or JobStatus(now.status) in TERMINAL:
        return False
    return now.batch_id == batch_id or (intent is not None and now.batch_intent == intent)


def _collect(api: Any, job: Job, found: Any, settings: Settings,
             plan_key: str | None = None) -> provider_batch.Collected:
    """A finished batch's answers (its plan: the job's recorded one, or `plan_key`), written through to the
    tenant's cache as the job's own model answers are."""
    got = provider_batch.collect(api, found, _get(plan_key or job.batch_plan_key or ""), settings.openai_model,
                                 list(job.categories))
    cache.remember_many(list(job.categories), [(v, a.category, a.confidence) for v, a in got.answers.items()
                                               if a.category], settings.openai_model, job.job_id,
                        tenant=job.tenant or job.owner_id)
    return got
