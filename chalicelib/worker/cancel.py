"""Cancels seen by a working invocation: `stop` completes a requested cancel, `CancelWatch` looks for one while a
batch waits on the model or a report is assembled, so that a cancel is final within seconds."""

from __future__ import annotations

import logging
import threading

from chalicelib.jobs import runner
from chalicelib.jobs.states import TERMINAL, JobStatus, TransitionRaced
from chalicelib.tables import Job

log = logging.getLogger(__name__)
# While a batch waits on the model, the job is looked at this often for a cancel (see CancelWatch).
WATCH_SECONDS = 1.0


def stop(job: Job) -> None:
    """Complete the cancel requested on `job` (a no-op if another worker of the job completed it first)."""
    try:
        runner.cancel(job)
    except TransitionRaced:
        pass  # another chunk's worker stopped it first


class CancelWatch:
    """While a batch waits on the model (its requests, an inline 429 wait, another chunk's vendor claim), look at
    the job every WATCH_SECONDS and complete a requested cancel at once.

    The batch's checkpoint is then refused (the job is no longer live), so its lines count nowhere, and the
    cancel is final within seconds however long the batch still takes to come back.
    """

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"cancel-watch-{job_id[:8]}", daemon=True)

    def __enter__(self) -> CancelWatch:
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
                    stop(job)
                    return
            except Exception:  # a missed look is retried at the next tick; the batch must not fail for it
                log.warning("could not look at the job for a cancel", exc_info=True, extra={"jobId": self.job_id})
