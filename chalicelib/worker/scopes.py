"""The two ranges of lines an invocation works through the batch loop (loop.Scope): the whole job (`JobScope`,
checkpointed on the job item) and one chunk of a fanned-out job (`ChunkScope`, its own cursor and lease, counts
to the job). What differs between them is here; the loop never asks which one it has."""

from __future__ import annotations

from typing import Any

from chalicelib import faults
from chalicelib.categorize.usage import Usage
from chalicelib.jobs import chunks, runner
from chalicelib.jobs.create import enqueue
from chalicelib.jobs.runner import Progress
from chalicelib.jobs.states import JobStatus
from chalicelib.lines.store import read_lines
from chalicelib.lines.versions import job_partition
from chalicelib.worker import completion, seams
from chalicelib.worker.cancel import stop
from chalicelib.worker.invocation import Invocation


class _Scope:
    run: Invocation

    def hand_back(self, delay: int, retries: int, usage: Usage | None = None) -> bool:
        raise NotImplementedError

    def send(self, delay: int, reason: str) -> None:
        raise NotImplementedError

    def requeue(self, delay: int, reason: str, done: Progress | None = None) -> None:
        """Continue later: give the job (or chunk) up first, then send the message that takes it up again."""
        done = done or Progress()
        if not self.hand_back(delay, done.retries, done.usage):
            return
        # cancel_vs_hand_back: a cancel requested while we still held the lease was left to us (the API saw it
        # live); complete it rather than send a message that may wait up to 15 minutes. One requested after the
        # hand-back the API completes itself: it looks for a live lease again after it writes.
        job = runner.load(self.run.job.job_id)
        if job is not None and job.status == JobStatus.CANCELLATION_REQUESTED.value:
            self.run.job = job
            return stop(job)
        faults.point("before_continuation_send")
        self.send(delay, reason)


class JobScope(_Scope):
    """The whole job as one range of lines, checkpointed on the job item itself."""

    claim_owner: str | None = None  # vendor claims are between the chunks of a job: a whole job has none

    def __init__(self, run: Invocation) -> None:
        self.run = run

    def holds(self) -> bool:
        return self.run.job.lease_owner == self.run.lease.owner

    def cursor(self) -> str:
        return self.run.job.cursor or ""

    def next_lines(self, n: int, after: str | None = None) -> list:
        """Up to `n` lines after the checkpoint (or after `after`), in one read."""
        job = self.run.job
        return read_lines(job_partition(job), job.cursor if after is None else after, n)

    def checkpoint(self, cursor: str, done: Progress, eta: str | None) -> bool:
        return runner.checkpoint(self.run.job, self.run.lease, self.run.job.cursor, cursor, done, eta)

    def hand_back(self, delay: int, retries: int, usage: Usage | None = None) -> bool:
        return runner.hand_back(self.run.job, self.run.lease, retries, resume_in=delay, usage=usage)

    def send(self, delay: int, reason: str) -> None:
        job = self.run.job
        enqueue(job.job_id, delay_seconds=delay, reason=reason, tenant=job.tenant or job.owner_id)

    def complete(self) -> None:
        completion.complete(self.run)


class ChunkScope(_Scope):
    """One chunk of a fanned-out job: its own cursor and lease; counts go to the job."""

    def __init__(self, run: Invocation, chunk: Any) -> None:
        self.run = run
        self.chunk = chunk

    @property
    def claim_owner(self) -> str | None:
        """Who claims vendors for this chunk (the vendor-claims seam): chunks run at once and share vendors, so
        they claim a vendor before asking about it (chalicelib/categorize/claims.py)."""
        return self.run.lease.owner if seams.on(self.run.settings, seams.VENDOR_CLAIMS) else None

    def holds(self) -> bool:
        return chunks.holds(self.chunk, self.run.lease)

    def cursor(self) -> str:
        return self.chunk.cursor or ""

    def next_lines(self, n: int, after: str | None = None) -> list:
        return chunks.next_lines(self.run.job, self.chunk, n, after)

    def checkpoint(self, cursor: str, done: Progress, eta: str | None) -> bool:
        return chunks.checkpoint(self.run.job, self.chunk, self.run.lease, cursor, done, eta)

    def hand_back(self, delay: int, retries: int, usage: Usage | None = None) -> bool:
        if retries or (usage and usage.requests):
            runner.count_retries(self.run.job.job_id, retries, usage)
        return chunks.hand_back(self.chunk, self.run.lease, delay)

    def send(self, delay: int, reason: str) -> None:
        job = self.run.job
        chunks.send(job.job_id, [int(self.chunk.chunk)], reason, delay, tenant=job.tenant or job.owner_id)

    def complete(self) -> None:
        chunks.finish(self.run.job, self.chunk, self.run.lease)
        # Whether or not this was the last chunk: a job whose chunks are all done is assembled (or, if a cancel
        # came meanwhile, cancelled) now, never left for the reaper.
        completion.complete_if_due(self.run)
