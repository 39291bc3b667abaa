"""SQS record handler: the checkpointed batch loop that categorizes a job's lines."""

from __future__ import annotations

import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from pynamodb.exceptions import UpdateError

from chalicelib import clock, credentials, deps, faults, observability, results
from chalicelib.categorize import pipeline, provider
from chalicelib.categorize.errors import JobFatal, LongWait, QuotaBusy
from chalicelib.categorize.normalize import normalize_vendor
from chalicelib.categorize.retry import DEFAULT_POLICY, RetryLoop
from chalicelib.categorize.types import Answer
from chalicelib.jobs import chunks, runner
from chalicelib.jobs.create import enqueue
from chalicelib.jobs.runner import Lease, Progress
from chalicelib.jobs.states import JobStatus, TransitionRaced, event_item, transition
from chalicelib.lines.store import count_lines, read_lines, whole_period
from chalicelib.settings import Settings, get_settings
from chalicelib.tables import Job, LineResult

log = logging.getLogger(__name__)
# A failed record is reported, not raised: the rest of the batch is deleted either way.
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


def handle_batch(event: dict[str, Any], context: Any, settings: Settings | None = None) -> dict[str, Any]:
    """Lambda entry: one failed record goes back to the queue, never the whole batch."""
    return process_partial_response(event=event, processor=processor, context=context,
                                    record_handler=lambda record: handle_record(record, context, settings))


def handle_dead_letters(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Lambda entry on the DLQ: each message's job becomes Failed with the reason."""
    from chalicelib.reaper import dead_letter

    def one(record: SQSRecord) -> None:
        dead_letter(record.body, record.attributes.approximate_receive_count)

    return process_partial_response(event=event, record_handler=one, processor=processor, context=context)


def handle_record(record: SQSRecord, context: Any, settings: Settings | None = None) -> None:
    try:
        message = json.loads(record.body)
        if message.get("kind") == "warm":
            warm_cache(context, settings, after=str(message.get("after") or ""))
            return
        job_id, reason = str(message["jobId"]), str(message.get("reason", "start"))
        number = int(message["chunk"]) if "chunk" in message else None
    except (ValueError, KeyError, TypeError, AttributeError):
        log.error("dropping a message that is not a job message", extra={"messageId": record.message_id})
        return
    try:
        if number is None:
            run_job(job_id, reason, context, settings)
        else:
            run_chunk(job_id, number, context, settings)
    except Exception:
        # The record goes back to the queue and is redone from the checkpoint.
        log.exception("job invocation failed; the message will be redelivered", extra={"jobId": job_id})
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
        deps.client("sqs").send_message(QueueUrl=deps.work_queue_url(),
                                        MessageBody=json.dumps({"kind": "warm", "after": outcome["after"]}))
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

    def requeue(self, delay: int, reason: str, done: Progress | None = None) -> None:
        if delay:
            runner.note_retries(self.run.job, self.run.lease, done or Progress(), resume_in=delay)
        enqueue(self.run.job.job_id, delay_seconds=delay, reason=reason)

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

    def requeue(self, delay: int, reason: str, done: Progress | None = None) -> None:
        if delay:
            chunks.hold(self.chunk, self.run.lease, delay)
        chunks.send(self.run.job.job_id, [int(self.chunk.chunk)], reason, delay)

    def complete(self) -> None:
        if chunks.finish(self.run.job, self.chunk, self.run.lease):
            _assemble_if_mine(self.run)


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
    try:
        if run.job.recheck_flagged:
            _recheck_flagged(run)
        if int(run.job.chunk_count) or (int(run.job.total_lines) > run.settings.fanout_threshold_lines
                                        and not run.job.cursor):
            _fan_out(run, reason)
        else:
            if not run.job.cursor and not int(run.job.processed_lines):
                run.written = {}  # from the first line: this invocation may do the whole job
            _work(run, JobScope(run))
    finally:
        run.background.wait()  # first: it never raises, and the next holder of the lease may want its answers
        if JobStatus(run.job.status) not in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED):
            runner.release(run.job, run.lease)


def run_chunk(job_id: str, number: int, context: Any, settings: Settings | None = None) -> None:
    """One chunk of a fanned-out job, while the job is live."""
    def claim(lease: Lease) -> Job | None:
        job = runner.load(job_id)
        if job is None or job.status not in (JobStatus.PROCESSING.value, JobStatus.CANCELLATION_REQUESTED.value):
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
    """Split the job into chunks (once), and send a message for each chunk that has work left."""
    job = run.job
    if not int(job.chunk_count):
        ranges = chunks.plan(job.owner_id, job.period, run.settings.chunk_lines)
        chunks.create(job, ranges)
        todo = list(range(len(ranges))) if _record_plan(job, len(ranges)) else []
    elif reason == "retried":
        todo = chunks.reset_unfinished(job)
    else:
        todo = []
    chunks.send(job.job_id, todo, reason="fan-out")
    job.refresh(consistent_read=True)
    if job.status == JobStatus.CANCELLATION_REQUESTED.value:
        return _stop(job)  # cancelled while being split: no chunk may be left to notice it
    if not todo and int(job.chunks_done) >= int(job.chunk_count):
        _finish(run)  # every chunk was done already: the assembler before us died (reaped) or we retry it


def _record_plan(job: Job, count: int) -> bool:
    """Record the chunk count once; False if another planner got there first (it sends the messages)."""
    # not_planned_yet: two planners (a slow one and the one the reaper sent) agree on one plan.
    not_planned_yet = Job.chunk_count.does_not_exist() | (Job.chunk_count == 0)
    try:
        job.update(actions=[Job.chunk_count.set(count), Job.chunks_done.set(0),
                            Job.heartbeat_at.set(clock.iso(clock.now())),
                            Job.status_message.set(f"Categorizing {int(job.total_lines)} lines in "
                                                   f"{count} parallel chunks")],
                   condition=not_planned_yet & (Job.status == JobStatus.PROCESSING.value))
        return True
    except UpdateError as err:
        if err.cause_response_code == "ConditionalCheckFailedException":
            return False
        raise


def _assemble_if_mine(run: Invocation) -> None:
    """The last chunk done: whoever takes the job's lease assembles the report, exactly once."""
    job = runner.load(run.job.job_id)
    if job is not None and runner.take_lease(job, run.lease):
        run.job = job
        try:
            _finish(run)
        finally:
            if JobStatus(job.status) not in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED):
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
            faults.point("before_continuation_send")
            scope.requeue(0, "continuation")
            return None
        lines = _next_batch(run, scope)
        if not lines:
            return scope.complete()
        # The previous batch's cache writes go out now, beside this batch (other chunks of the job want its
        # answers soon); the last batch's wait for the invocation's end, after the job is Completed.
        run.background.release()
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
        scope.checkpoint(lines[-1].line_id, done, eta)
        faults.point("after_checkpoint")
        job.refresh(consistent_read=True)


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
                                   run.job.job_id, run.background, claim_owner=owner)
    except LongWait as wait:
        delay = min(900, max(1, math.ceil(wait.seconds)))
        spent = _progress(run, {})
        # QuotaBusy: the fleet's own limiter had no turn soon (the provider was not asked); the job is not
        # throttled by the provider, so this wait does not count against RATE_LIMIT_CEILING_SECONDS.
        detail = {"waitSeconds": round(wait.seconds, 3), "requeuedWithDelaySeconds": delay,
                  **({"by": "shared limiter"} if isinstance(wait, QuotaBusy) else {})}
        event_item(run.job.job_id, "rate_limited", detail).save()
        scope.requeue(delay, "rate_limited", spent)
        return None
    except JobFatal as fatal:
        runner.fail(run.job, str(fatal))
        return None


def _progress(run: Invocation, answers: dict[str, Answer]) -> Progress:
    """Counts for this batch, with the retries spent since the previous batch."""
    stats = run.loop.stats
    before = run.seen
    run.seen = (stats.retries, stats.rate_limited, stats.rate_limited_seconds)
    limited = stats.rate_limited - before[1]
    if limited:
        event_item(run.job.job_id, "rate_limited", {"count": limited, "inline": True,
                                                    "waitSeconds": round(stats.rate_limited_seconds - before[2], 3)
                                                    }).save()
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
    return LineResult(job.job_id, line.line_id, date=line.date, vendor=line.vendor, amount=line.amount,
                      currency=line.currency, description=line.description or "", category=a.category,
                      confidence=a.confidence, source=a.source, needs_review=a.needs_review,
                      expires_at=job.expires_at)


def _save_all(results: list[LineResult]) -> None:
    with LineResult.batch_write() as batch:
        for result in results:
            batch.save(result)


def _recheck_flagged(run: Invocation) -> None:
    """After a retry: lines flagged for review are asked again once; the rest stay done."""
    job = run.job
    flagged = list(LineResult.query(job.job_id, filter_condition=LineResult.needs_review == True,  # noqa: E712
                                    consistent_read=True))
    fixed = 0
    for start in range(0, len(flagged), run.settings.line_batch_size):
        chunk = flagged[start:start + run.settings.line_batch_size]
        answers = _categorize(run, JobScope(run), chunk)
        if answers is None:
            return
        _write_results(job, chunk, answers)
        fixed += sum(not a.needs_review for a in answers.values())
    job.update(actions=[Job.failed_lines.add(-fixed), Job.recheck_flagged.set(False)],
               condition=Job.lease_owner == run.lease.owner)


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
    key, needs_review = results.assemble(job, version, tick=lambda: _heartbeat(run), written=written)
    try:
        _complete(run, version, key, needs_review, int(job.processed_lines))
    except TransitionRaced:
        job.refresh(consistent_read=True)
        if job.status == JobStatus.CANCELLATION_REQUESTED.value:
            runner.cancel(job)


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
               Job.rate_limited_seconds.add(round(done.rate_limited_seconds, 3)),
               Job.heartbeat_at.set(clock.iso(clock.now()))]
    try:
        _complete(run, version, key, needs_review, processed, counted, Job.cursor == job.cursor)
    except TransitionRaced:
        job.refresh(consistent_read=True)
        run.seen = (before[0], run.seen[1], before[2])  # the usual checkpoint counts this batch's retries
        return False
    observability.lines_done(done.lines, done.failed)
    run.done += done.lines
    faults.point("after_checkpoint")
    return True
