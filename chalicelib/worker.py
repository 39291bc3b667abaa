"""SQS record handler: the checkpointed batch loop that categorizes a job's lines."""

from __future__ import annotations

import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from pynamodb.exceptions import UpdateError

from chalicelib import clock, credentials, faults, messages, observability, results
from chalicelib.categorize import pipeline, provider
from chalicelib.categorize.errors import JobFatal, LongWait, QuotaBusy
from chalicelib.categorize.normalize import normalize_vendor
from chalicelib.categorize.retry import DEFAULT_POLICY, RetryLoop
from chalicelib.categorize.types import Answer
from chalicelib.jobs import chunks, runner
from chalicelib.jobs.create import enqueue
from chalicelib.jobs.runner import Lease, Progress
from chalicelib.jobs.states import TERMINAL, WORKED, JobStatus, TransitionRaced, event_item, transition
from chalicelib.lines.store import count_lines, read_lines, whole_period
from chalicelib.messages import MAX_DELAY_SECONDS, Deliver, NotAWorkMessage, RunChunk, WarmCache
from chalicelib.settings import Settings, get_settings
from chalicelib.tables import Job, LineResult

log = logging.getLogger(__name__)
# While a batch waits on the model, the job is looked at this often for a cancel (see _CancelWatch).
WATCH_SECONDS = 1.0


def _processor() -> BatchProcessor:
    """One per call: a processor collects its batch's failures, so a shared one (the local poller runs handlers
    on several threads) would report one thread's failures in another's response."""
    # A failed record is reported, not raised: the rest of the batch is deleted either way.
    return BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


def handle_batch(event: dict[str, Any], context: Any, settings: Settings | None = None) -> dict[str, Any]:
    """Lambda entry: one failed record goes back to the queue, never the whole batch."""
    return process_partial_response(event=event, processor=_processor(), context=context,
                                    record_handler=lambda record: handle_record(record, context, settings))


def handle_dead_letters(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Lambda entry on the DLQ: each message's job becomes Failed with the reason."""
    from chalicelib.reaper import dead_letter

    def one(record: SQSRecord) -> None:
        dead_letter(record.body, record.attributes.approximate_receive_count)

    return process_partial_response(event=event, record_handler=one, processor=_processor(), context=context)


def handle_record(record: SQSRecord, context: Any, settings: Settings | None = None) -> None:
    try:
        message = messages.parse(record.body)
    except NotAWorkMessage:
        log.error("dropping a message that is not a job message", extra={"messageId": record.message_id})
        return
    if isinstance(message, Deliver):
        from chalicelib.delivery import service as delivery  # only a delivery needs it (cold start)

        outcome = delivery.handle(message, settings)  # a store error raises: the message is redelivered
        log.info("delivery message handled", extra={"jobId": message.job_id, "n": message.n, "outcome": outcome})
        return
    if isinstance(message, WarmCache):
        try:
            warm_cache(context, settings, after=message.after)
        except (ValueError, KeyError, TypeError, AttributeError):
            # Kept as it was before typed messages (the body was parsed in the same `try`): a warm run failing
            # with one of these drops its message instead of having it redelivered.
            log.error("dropping a message that is not a job message", extra={"messageId": record.message_id})
        return
    try:
        if isinstance(message, RunChunk):
            run_chunk(message.job_id, message.chunk, context, settings)
        else:
            run_job(message.job_id, message.reason, context, settings)
    except Exception:
        # The record goes back to the queue and is redone from the checkpoint.
        log.exception("job invocation failed; the message will be redelivered", extra={"jobId": message.job_id})
        raise


@dataclass
class Invocation:
    job: Job
    lease: Lease
    settings: Settings
    deadline: float  # time.monotonic() by which we checkpoint and hand over
    loop: RetryLoop
    backend: pipeline.ModelBackend | None
    started: float
    done: int = 0
    seen: tuple[int, int, float] = (0, 0, 0.0)  # retry stats already counted in a checkpoint
    memo: dict[str, Answer] = field(default_factory=dict)  # this invocation's answers by normalized vendor
    background: pipeline.Background = field(default_factory=pipeline.Background)
    ahead: list = field(default_factory=list)  # lines read past the cursor, not yet worked (see _next_batch)
    ahead_after: str | None = None  # the cursor `ahead` continues from
    ahead_whole: bool = False  # `ahead` holds every line left: no read past it
    # Every line result this invocation wrote, when it started the job from its first line (see _finish).
    written: dict[str, LineResult] | None = None


def _backend(settings: Settings, loop: RetryLoop) -> pipeline.ModelBackend | None:
    key = credentials.openai_api_key(settings)  # SSM in deployed stages (cached), OPENAI_API_KEY locally
    if not key:
        return None
    limiter = None
    if settings.openai_rpm or settings.openai_tpm:
        from chalicelib.categorize.limiter import SharedLimiter, key_for

        limiter = SharedLimiter(settings.openai_rpm, settings.openai_tpm, wait_max=settings.limiter_wait_max_seconds,
                                key=key_for(settings.openai_base_url, key))
    api = provider.client(key, settings.openai_base_url, settings.openai_timeout_seconds)
    return pipeline.ModelBackend(api, settings.openai_model, loop, settings.model_batch_size,
                                 settings.model_concurrency, limiter)


def _loop(settings: Settings, remaining: float, limited_so_far: float = 0.0) -> RetryLoop:
    deadline = time.monotonic() + max(0.0, remaining - settings.lambda_time_reserve_seconds)
    return RetryLoop(settings.retry_policy or DEFAULT_POLICY, deadline=deadline,
                     inline_wait_max=settings.inline_wait_max_seconds,
                     ceiling_seconds=settings.rate_limit_ceiling_seconds, already_limited_seconds=limited_so_far)


def warm_cache(context: Any, settings: Settings | None = None, after: str = "") -> dict[str, Any]:
    """One warm run within this invocation's time; what is left goes on in a continuation message."""
    from chalicelib.categorize import warmer

    settings = settings or get_settings()
    remaining = context.get_remaining_time_in_millis() / 1000.0
    loop = _loop(settings, remaining)
    outcome = warmer.warm(_backend(settings, loop), max(1.0, remaining - settings.lambda_time_reserve_seconds),
                          after)
    if outcome.get("after"):
        messages.send(WarmCache(after=outcome["after"]))
    log.info("cache warm run", extra={k: v for k, v in outcome.items() if k != "after"})
    return outcome


class JobScope:
    """The whole job as one range of lines, checkpointed on the job item itself."""

    def __init__(self, run: Invocation) -> None:
        self.run = run

    def holds(self) -> bool:
        return self.run.job.lease_owner == self.run.lease.owner

    def cursor(self) -> str:
        return self.run.job.cursor or ""

    def next_lines(self, n: int, after: str | None = None) -> list:
        """Up to `n` lines after the checkpoint (or after `after`), in one read."""
        job = self.run.job
        return read_lines(job.owner_id, job.period, job.cursor if after is None else after, n)

    def checkpoint(self, cursor: str, done: Progress, eta: str | None) -> bool:
        return runner.checkpoint(self.run.job, self.run.lease, self.run.job.cursor, cursor, done, eta)

    def hand_back(self, delay: int, retries: int) -> bool:
        return runner.hand_back(self.run.job, self.run.lease, retries, resume_in=delay)

    def send(self, delay: int, reason: str) -> None:
        enqueue(self.run.job.job_id, delay_seconds=delay, reason=reason)

    def requeue(self, delay: int, reason: str, done: Progress | None = None) -> None:
        """Continue later: give the job (or chunk) up first, then send the message that takes it up again."""
        if not self.hand_back(delay, (done or Progress()).retries):
            return
        # cancel_vs_hand_back: a cancel requested while we still held the lease was left to us (the API saw it
        # live); complete it rather than send a message that may wait up to 15 minutes. One requested after the
        # hand-back the API completes itself: it looks for a live lease again after it writes.
        job = runner.load(self.run.job.job_id)
        if job is not None and job.status == JobStatus.CANCELLATION_REQUESTED.value:
            self.run.job = job
            return _stop(job)
        faults.point("before_continuation_send")
        self.send(delay, reason)

    def complete(self) -> None:
        _finish(self.run)


class ChunkScope(JobScope):
    """One chunk of a fanned-out job: its own cursor and lease; counts go to the job."""

    def __init__(self, run: Invocation, chunk: Any) -> None:
        super().__init__(run)
        self.chunk = chunk

    def holds(self) -> bool:
        return chunks.holds(self.chunk, self.run.lease)

    def cursor(self) -> str:
        return self.chunk.cursor or ""

    def next_lines(self, n: int, after: str | None = None) -> list:
        return chunks.next_lines(self.run.job, self.chunk, n, after)

    def checkpoint(self, cursor: str, done: Progress, eta: str | None) -> bool:
        return chunks.checkpoint(self.run.job, self.chunk, self.run.lease, cursor, done, eta)

    def hand_back(self, delay: int, retries: int) -> bool:
        if retries:
            runner.count_retries(self.run.job.job_id, retries)
        return chunks.hand_back(self.chunk, self.run.lease, delay)

    def send(self, delay: int, reason: str) -> None:
        chunks.send(self.run.job.job_id, [int(self.chunk.chunk)], reason, delay)

    def complete(self) -> None:
        chunks.finish(self.run.job, self.chunk, self.run.lease)
        # Whether or not this was the last chunk: a job whose chunks are all done is assembled (or, if a cancel
        # came meanwhile, cancelled) now, never left for the reaper.
        _assemble_if_due(self.run)


def _start(job_id: str, context: Any, settings: Settings | None, claim: Any) -> Invocation | None:
    settings = settings or get_settings()
    remaining = context.get_remaining_time_in_millis() / 1000.0
    lease = Lease(owner=str(getattr(context, "aws_request_id", "local")), until=time.time() + remaining + 5)
    job = claim(lease)
    if job is None:
        return None
    loop = _loop(settings, remaining, float(job.rate_limited_seconds))
    return Invocation(job, lease, settings, loop.deadline, loop, _backend(settings, loop), time.time())


def run_job(job_id: str, reason: str, context: Any, settings: Settings | None = None) -> None:
    whole: list = []
    known = settings or get_settings()
    read_ahead = known.line_batch_size * known.line_read_ahead

    def count(job: Job) -> int:
        """A starting job that fits one read-ahead is counted by reading it: those lines are its first batch."""
        lines = whole_period(job.owner_id, job.period, read_ahead)
        whole.clear()  # a claim that raced counts again: only the latest read may stand
        if lines is None:
            return count_lines(job.owner_id, job.period)
        whole.extend(lines)
        return len(lines)

    run = _start(job_id, context, settings, lambda lease: runner.claim(job_id, lease, reason, count))
    if run is None:
        return
    if whole and len(whole) == int(run.job.total_lines) and not run.job.cursor and not int(run.job.processed_lines):
        # Every line the job had when it started: the job is those lines (its total was counted from them).
        run.ahead, run.ahead_after, run.ahead_whole = whole, "", True
    # A retry that rechecks flagged lines first may take several invocations: the recheck's flag stands for
    # the retry until then, so the chunks the retry must re-send are still re-sent (see _fan_out).
    retried = reason == "retried" or bool(run.job.recheck_flagged)
    try:
        if run.job.recheck_flagged and not _recheck_flagged(run):
            return
        if int(run.job.chunk_count) or (int(run.job.total_lines) > run.settings.fanout_threshold_lines
                                        and not run.job.cursor):
            _fan_out(run, "retried" if retried else reason)
        else:
            if not run.job.cursor and not int(run.job.processed_lines):
                run.written = {}  # from the first line: this invocation may do the whole job
            _work(run, JobScope(run))
    finally:
        run.background.wait()  # first: it never raises, and the next holder of the lease may want its answers
        if JobStatus(run.job.status) not in TERMINAL:
            runner.release(run.job, run.lease)
            if int(run.job.chunk_count):
                _assemble_if_due(run)  # the last chunk may have finished while we held the lease


def run_chunk(job_id: str, number: int, context: Any, settings: Settings | None = None) -> None:
    """One chunk of a fanned-out job, while the job is live."""
    def claim(lease: Lease) -> Job | None:
        job = runner.load(job_id)
        if job is None or JobStatus(job.status) not in WORKED:
            return None
        return job

    run = _start(job_id, context, settings, claim)
    chunk = chunks.claim(job_id, number, run.lease) if run else None
    if run is None or chunk is None:
        return
    try:
        _work(run, ChunkScope(run, chunk))
    finally:
        run.background.wait()
        chunks.release(chunk, run.lease)


def _fan_out(run: Invocation, reason: str) -> None:
    """Split the job into chunks by its one recorded plan, and send a message for each chunk that needs one.

    The plan is recorded on the job before any chunk exists (chunks.record_plan), and chunks are only ever made
    from it, so a second planner (a reaped or duplicate start, a retry) can never make overlapping chunks. The
    job's lease is given up before the chunk messages go out: the last chunk's worker must be able to take it
    to assemble the report.
    """
    job = run.job
    bounds = list(job.chunk_bounds or [])
    planned_before = bool(int(job.chunk_count))
    if not planned_before:
        bounds = chunks.record_plan(job, chunks.plan(job.owner_id, job.period, run.settings.chunk_lines))
        faults.point("after_plan")
    todo = chunks.create(job, bounds) if bounds else []  # only what a planner that died before it left undone
    if reason == "retried":
        todo = sorted(set(todo) | set(chunks.reset_unfinished(job)))
    elif planned_before:
        # A planner whose send failed after it made the chunks: its message comes back, and the chunks that
        # never started are sent again (a second message for a chunk is dropped by its lease).
        todo = sorted(set(todo) | set(chunks.never_started(job.job_id)))
    runner.release(job, run.lease)
    chunks.send(job.job_id, todo, reason="fan-out")
    job.refresh(consistent_read=True)
    if job.status == JobStatus.CANCELLATION_REQUESTED.value:
        return _stop(job)  # cancelled while being split: no chunk may be left to notice it
    if not todo:
        _assemble_if_due(run)  # every chunk was done already: the assembler before us died, or we retry it


def _assemble_if_due(run: Invocation) -> None:
    """A fanned-out job whose chunks are all done: whoever takes the job's lease assembles the report, once.

    Called by the chunk that finished last and by every job invocation after it gives the lease up, so the
    report is made whichever of them held the lease when the last chunk finished.
    """
    job = runner.load(run.job.job_id)
    if job is None or not int(job.chunk_count) or int(job.chunks_done) < int(job.chunk_count):
        return
    if job.status == JobStatus.CANCELLATION_REQUESTED.value:
        return _stop(job)
    if job.status == JobStatus.PROCESSING.value and runner.take_lease(job, run.lease):
        run.job = job
        try:
            _finish(run)
        finally:
            if JobStatus(job.status) not in TERMINAL:
                runner.release(job, run.lease)


def _work(run: Invocation, scope: JobScope) -> None:
    job = run.job  # as the claim has just read it; later rounds read it again at the end of each batch
    while True:
        status = JobStatus(job.status)
        if status is JobStatus.CANCELLATION_REQUESTED:
            return _stop(job)
        if status is not JobStatus.PROCESSING or not scope.holds():
            return None
        # At least one batch per invocation, so a short budget still makes progress.
        if run.done and time.monotonic() > run.deadline:
            scope.requeue(0, "continuation", _progress(run, {}))
            return None
        lines = _next_batch(run, scope)
        if not lines:
            return scope.complete()
        # The previous batch's cache writes go out now, beside this batch (other chunks of the job want its
        # answers soon); the last batch's wait for the invocation's end, after the job is Completed.
        run.background.release()
        with _CancelWatch(job.job_id):
            answers = _categorize(run, scope, lines)
        if answers is None:
            return None
        faults.point("after_model_call")
        if _last_of_whole(run, lines) and _complete_with_last_batch(run, lines, answers):
            return None
        _keep(run, _write_results(job, lines, answers))
        faults.point("after_result_writes")
        done = _progress(run, answers)
        observability.lines_done(done.lines, done.failed)
        run.done += done.lines
        remaining = int(job.total_lines) - int(job.processed_lines) - done.lines
        eta = runner.eta(remaining, job.started_at, int(job.processed_lines) + done.lines)
        if scope.checkpoint(lines[-1].line_id, done, eta):
            _announce_progress(job)
        faults.point("after_checkpoint")
        job.refresh(consistent_read=True)


def _announce_progress(job: Job) -> None:
    """job.progress webhooks for the targets that asked (at most one every 10 s per job, fleet-wide)."""
    from chalicelib.delivery import service as delivery

    try:
        delivery.progress(job.job_id, job.tenant or job.owner_id, job.report_id)
    except Exception:  # progress webhooks are best effort: the job goes on
        log.warning("could not announce progress", extra={"jobId": job.job_id}, exc_info=True)


def _next_batch(run: Invocation, scope: JobScope) -> list:
    """The next batch: LINE_BATCH_SIZE lines, and more (up to LINE_READ_AHEAD times that) while they bring no vendor
    beyond one wave of model requests (MODEL_BATCH_SIZE x MODEL_CONCURRENCY) that this invocation has not
    answered yet. A small job whose vendors fit one wave is one batch: one checkpoint, not one per 100 lines;
    a batch still costs at most one wave, so progress shows as often as before. A crash redoes that batch, and
    asks the model again for it: its cache writes, held until the next batch starts, are lost with it (a
    chunk's are not held: the job's other chunks wait on them, see pipeline._single_flight)."""
    settings, limit = run.settings, run.settings.line_batch_size
    if run.ahead_after != scope.cursor():
        # the checkpoint did not move where the buffer expected: read again from where it is
        run.ahead, run.ahead_whole = [], False
    if not run.ahead:
        run.ahead_after = scope.cursor()
    if len(run.ahead) < limit and not run.ahead_whole:
        after = run.ahead[-1].line_id if run.ahead else None
        run.ahead += scope.next_lines(limit * settings.line_read_ahead - len(run.ahead), after)
    wave = settings.model_batch_size * max(1, settings.model_concurrency)
    new: set[str] = set()
    take = 0
    for line in run.ahead:
        vendor = normalize_vendor(line.vendor)
        fresh = vendor not in run.memo and vendor not in new
        if take >= limit and fresh and len(new) >= wave:
            break
        if fresh:
            new.add(vendor)
        take += 1
    batch, run.ahead = run.ahead[:take], run.ahead[take:]
    if batch:
        run.ahead_after = batch[-1].line_id  # where a successful checkpoint of this batch puts the cursor
    return batch


def _stop(job: Job) -> None:
    try:
        runner.cancel(job)
    except TransitionRaced:
        pass  # another chunk's worker stopped it first


def _categorize(run: Invocation, scope: JobScope, lines: list) -> dict[str, Answer] | None:
    """Answers for `lines`, or None when the job was re-enqueued or failed meanwhile."""
    try:
        # Chunks run at once and share vendors: they claim a vendor before asking about it (claims.py).
        owner = run.lease.owner if isinstance(scope, ChunkScope) else None
        return pipeline.categorize(lines, list(run.job.categories), run.settings, run.backend, run.memo,
                                   run.job.job_id, run.background, claim_owner=owner,
                                   # A job from before tenants: its owner key, a bare sub, is its tenant key.
                                   tenant=run.job.tenant or run.job.owner_id)
    except LongWait as wait:
        delay = min(MAX_DELAY_SECONDS, max(1, math.ceil(wait.seconds)))
        limited = run.loop.stats.rate_limited - run.seen[1]
        spent = _progress(run, {}, waits_until=time.time() + wait.seconds)
        # QuotaBusy: the fleet's own limiter had no turn soon (the provider was not asked); the job is not
        # throttled by the provider, so this wait does not count against RATE_LIMIT_CEILING_SECONDS.
        # One long wait is one event, with the 429s that led to it.
        detail = {"waitSeconds": round(wait.seconds, 3), "requeuedWithDelaySeconds": delay,
                  **({"count": limited} if limited else {}),
                  **({"by": "shared limiter"} if isinstance(wait, QuotaBusy) else {})}
        event_item(run.job.job_id, "rate_limited", detail).save()
        scope.requeue(delay, "rate_limited", spent)
        return None
    except JobFatal as fatal:
        runner.fail(run.job, str(fatal))
        return None


def _progress(run: Invocation, answers: dict[str, Answer], waits_until: float | None = None) -> Progress:
    """Counts for this batch, with the retries spent since the previous batch.

    Rate-limited time goes to the job at once, in wall-clock (runner.note_wait): waits that ended now, or with
    `waits_until`, one that the job is about to sit out in the queue. Inline waits get one event here; a long
    wait gets its own (see _categorize).
    """
    stats = run.loop.stats
    before = run.seen
    run.seen = (stats.retries, stats.rate_limited, stats.rate_limited_seconds)
    limited = stats.rate_limited - before[1]
    waited = stats.rate_limited_seconds - before[2]
    if waited > 0:
        runner.note_wait(run.job.job_id, waited, waits_until if waits_until is not None else time.time())
    if limited and waits_until is None:
        event_item(run.job.job_id, "rate_limited", {"count": limited, "inline": True,
                                                    "waitSeconds": round(waited, 3)}).save()
    values = answers.values()
    return Progress(lines=len(answers), failed=sum(a.needs_review for a in values),
                    cached=sum(a.source == "cache" for a in values), retries=stats.retries - before[0],
                    rate_limited_seconds=stats.rate_limited_seconds - before[2])


WRITTEN_KEPT_MAX = 5000  # line results an invocation keeps to assemble the report from (jobs up to this size)


def _keep(run: Invocation, results: list[LineResult]) -> None:
    if run.written is None:
        return
    run.written.update((r.line_id, r) for r in results)
    if len(run.written) > WRITTEN_KEPT_MAX:
        run.written = None


def _write_results(job: Job, lines: list, answers: dict[str, Answer]) -> list[LineResult]:
    results = [_result(job, line, answers[line.line_id]) for line in lines]
    _save_rows(results)
    return results


def _save_rows(results: list[LineResult]) -> None:
    # Puts keyed by (job, line): a redone batch overwrites, never adds.
    groups = [results[i:i + 25] for i in range(0, len(results), 25)]  # one BatchWriteItem each
    # Side by side: a 400-line batch is 16 requests, and the checkpoint waits for all of them.
    with ThreadPoolExecutor(max_workers=max(1, min(4, len(groups))), thread_name_prefix="results") as pool:
        list(pool.map(_save_all, groups))


def _result(job: Job, line: Any, a: Answer) -> LineResult:
    # `line` is an ExpenseLine, or a LineResult asked again (_recheck_flagged): either carries its import order.
    return LineResult(job.job_id, line.line_id, date=line.date, vendor=line.vendor, amount=line.amount,
                      currency=line.currency, description=line.description or "", category=a.category,
                      confidence=a.confidence, source=a.source, needs_review=a.needs_review,
                      import_seq=getattr(line, "import_seq", None), expires_at=job.expires_at)


def _save_all(results: list[LineResult]) -> None:
    with LineResult.batch_write() as batch:
        for result in results:
            batch.save(result)


def _recheck_flagged(run: Invocation) -> bool:
    """After a retry: lines flagged for review are asked again once; the rest stay done.

    Bounded like the main loop: a batch at a time, each checkpointed (`recheckAfter`, the fixed lines off
    `failedLines`) under the lease, a look for a cancel before each, and a continuation past the deadline.
    True when the recheck is over and the job goes on; False when this invocation stopped (the job was handed
    back, cancelled or failed).
    """
    job = run.job
    while True:
        if job.status == JobStatus.CANCELLATION_REQUESTED.value:
            _stop(job)
            return False
        if job.status != JobStatus.PROCESSING.value or job.lease_owner != run.lease.owner:
            return False
        if run.done and time.monotonic() > run.deadline:
            JobScope(run).requeue(0, "continuation", _progress(run, {}))
            return False
        after = job.recheck_after or ""
        flagged = read_flagged(job.job_id, after, run.settings.line_batch_size)
        # recheck_unchanged + lease_is_ours: a stale or duplicate worker never takes the same fixes off twice.
        recheck_unchanged = (Job.recheck_after == after) if after else Job.recheck_after.does_not_exist()
        lease_is_ours = Job.lease_owner == run.lease.owner
        if not flagged:
            job.update(actions=[Job.recheck_flagged.set(False), Job.recheck_after.remove()],
                       condition=lease_is_ours & recheck_unchanged)
            return True
        with _CancelWatch(job.job_id):
            answers = _categorize(run, JobScope(run), flagged)
        if answers is None:
            return False
        _write_results(job, flagged, answers)
        fixed = sum(not a.needs_review for a in answers.values())
        done = _progress(run, {})
        run.done += len(flagged)
        try:
            job.update(actions=[Job.failed_lines.add(-fixed), Job.recheck_after.set(flagged[-1].line_id),
                                Job.retry_count.add(done.retries), Job.heartbeat_at.set(clock.iso(clock.now())),
                                Job.reap_count.set(0)],
                       condition=lease_is_ours & recheck_unchanged & (Job.status == JobStatus.PROCESSING.value))
        except UpdateError as err:
            if err.cause_response_code != "ConditionalCheckFailedException":
                raise
        job.refresh(consistent_read=True)


def read_flagged(job_id: str, after: str, n: int) -> list[LineResult]:
    """Up to `n` of the job's lines flagged for review, after `after` in lineId order."""
    condition = LineResult.line_id > after if after else None
    query = LineResult.query(job_id, range_key_condition=condition,
                             filter_condition=LineResult.needs_review == True,  # noqa: E712
                             consistent_read=True, page_size=max(n, 100))
    return list(islice(query, n))


class _CancelWatch:
    """While a batch waits on the model (its requests, an inline 429 wait, another chunk's vendor claim), look at
    the job every WATCH_SECONDS and complete a requested cancel at once.

    The batch's checkpoint is then refused (the job is no longer live), so its lines count nowhere, and the
    cancel is final within seconds however long the batch still takes to come back.
    """

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"cancel-watch-{job_id[:8]}", daemon=True)

    def __enter__(self) -> _CancelWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=15)

    def _watch(self) -> None:
        while not self._done.wait(WATCH_SECONDS):
            try:
                job = runner.load(self.job_id)
                if job is None or JobStatus(job.status) in TERMINAL:
                    return
                if job.status == JobStatus.CANCELLATION_REQUESTED.value:
                    _stop(job)
                    return
            except Exception:  # a missed look is retried at the next tick; the batch must not fail for it
                log.warning("could not look at the job for a cancel", exc_info=True, extra={"jobId": self.job_id})


def _heartbeat(run: Invocation) -> None:
    """Assembling a large report takes a while: show the reaper it is still moving."""
    try:
        run.job.update(actions=[Job.heartbeat_at.set(clock.iso(clock.now()))],
                       condition=Job.lease_owner == run.lease.owner)
    except UpdateError:
        pass  # lease lost: the completing transition will say so


def _finish(run: Invocation) -> None:
    job = run.job
    version = int(job.result_version) + 1
    written = None
    # This invocation wrote every line of the job (and the checkpoints counted each once): the report is built
    # from what it holds, not read back. Anything else (a resumed, chunked or retried job) reads the table.
    if run.written is not None and len(run.written) == int(job.processed_lines) == int(job.total_lines):
        written = [run.written[k] for k in sorted(run.written)]
    with _CancelWatch(job.job_id):  # a large report takes a while: a cancel meanwhile is final at once
        key, needs_review, reported = results.assemble_counted(job, version, tick=lambda: _heartbeat(run),
                                                               written=written)
    if reported != int(job.processed_lines):
        # The report is the truth a user reads: counts that disagree with it would hide a lost or doubled line.
        log.error("report and counts disagree", extra={"jobId": job.job_id, "reported": reported,
                                                       "processed": int(job.processed_lines)})
        runner.fail(job, f"The job counted {int(job.processed_lines)} lines but its report holds {reported}, so "
                         "it was stopped rather than report wrong totals. Contact support with the job id.",
                    {"reportedLines": reported, "processedLines": int(job.processed_lines)})
        return
    try:
        _complete(run, version, key, needs_review, reported)
    except TransitionRaced:
        job.refresh(consistent_read=True)
        if job.status == JobStatus.CANCELLATION_REQUESTED.value:
            _stop(job)


def _complete(run: Invocation, version: int, key: str, needs_review: int, processed: int,
              actions: list | None = None, condition: Any = None) -> None:
    """The Completed transition (TransitionRaced if the job moved meanwhile or the lease is gone)."""
    job = run.job
    message = (f"Categorized {processed} lines; {needs_review} need review" if processed
               else f"No expense lines for {job.period}; the report is empty")
    lease_is_ours = Job.lease_owner == run.lease.owner
    transition(job, JobStatus.COMPLETED, "completed", {"lines": processed, "needsReview": needs_review},
               actions=[Job.completed_at.set(clock.iso(clock.now())), Job.result_key.set(key),
                        Job.result_version.set(version), Job.needs_review.set(needs_review),
                        Job.failed_lines.set(needs_review), Job.total_lines.set(processed),
                        Job.estimated_completion_at.remove(), Job.status_message.set(message), *(actions or [])],
               condition=lease_is_ours if condition is None else lease_is_ours & condition)


def _last_of_whole(run: Invocation, lines: list) -> bool:
    """This batch ends a job this invocation has held whole since its first line (see run_job)."""
    job = run.job
    return (run.ahead_whole and not run.ahead and run.written is not None
            and len(run.written) == int(job.processed_lines)
            and len(run.written) + len(lines) == int(job.total_lines))


def _complete_with_last_batch(run: Invocation, lines: list, answers: dict[str, Answer]) -> bool:
    """Write the last batch's results and the report side by side, then checkpoint and complete in one write.

    The write is conditioned on the cursor as a checkpoint is, so a redone batch still never counts twice. If
    it races (a cancel came in, the lease was lost), False sends the caller on with the batch the usual way
    (its rows are put again, idempotently); the report put in S3 is written again, or never pointed to.
    """
    job = run.job
    rows = [_result(job, line, answers[line.line_id]) for line in lines]
    held = {**run.written, **{r.line_id: r for r in rows}}
    version = int(job.result_version) + 1
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="report") as beside:
        report = beside.submit(results.assemble, job, version, written=[held[k] for k in sorted(held)])
        _save_rows(rows)
        faults.point("after_result_writes")
        key, needs_review = report.result()
    run.written = held
    before = run.seen
    done = _progress(run, answers)
    processed = int(job.processed_lines) + done.lines
    counted = [Job.cursor.set(lines[-1].line_id), Job.processed_lines.set(processed),
               Job.cached_lines.add(done.cached), Job.retry_count.add(done.retries),
               Job.heartbeat_at.set(clock.iso(clock.now()))]
    try:
        _complete(run, version, key, needs_review, processed, counted, Job.cursor == job.cursor)
    except TransitionRaced:
        job.refresh(consistent_read=True)
        run.seen = (before[0], *run.seen[1:])  # the usual checkpoint counts this batch's retries (the wait is noted)
        return False
    observability.lines_done(done.lines, done.failed)
    run.done += done.lines
    faults.point("after_checkpoint")
    return True
