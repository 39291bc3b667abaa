"""The job store's contract: each operation's rule, the same for the in-memory store and for DynamoDB.

`StoreContract` is run here against `MemoryJobStore` (no moto, no network) and, subclassed, against DynamoDB on
the moto server in tests/integration/test_job_store_dynamo.py: the fake cannot drift from the real store without a
test failing on one side.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

import pytest

from chalicelib import clock
from chalicelib.categorize.usage import Usage
from chalicelib.errors import ActiveJobExists, InvalidTransition
from chalicelib.jobs.states import ChunkStatus, JobStatus, TransitionRaced
from chalicelib.jobs.store import Lease, MemoryJobStore, Progress, moves, use_store
from chalicelib.tables import Job

OLD = "2020-01-01T00:00:00.00Z"  # a heartbeat no write of the test can repeat


def new_job(status: JobStatus = JobStatus.PROCESSING, **fields) -> Job:
    stamp = clock.iso(clock.now())
    fields.setdefault("lock_key", f"lock#{uuid.uuid4().hex}")  # its own report and period unless a test shares one
    return Job(f"job-{uuid.uuid4()}", owner_id="owner-1", tenant="tenant-1", report_id="report-1", period="2026-01",
               status=status.value, created_at=stamp, updated_at=stamp, heartbeat_at=OLD, total_lines=100,
               expires_at=clock.expiry(days=1), **fields)


def lease(owner: str = "worker-a", seconds: float = 60) -> Lease:
    return Lease(owner, time.time() + seconds)


class StoreContract:
    """Subclasses give `store` (a fixture) and `seed(store, job)` (the job stored, as a create would leave it)."""

    def seed(self, store, job: Job) -> Job:
        raise NotImplementedError

    # --- the job's lease ----------------------------------------------------------------------------------------

    def test_one_live_lease_at_a_time_and_a_dead_one_is_taken_over(self, store):
        job = self.seed(store, new_job())
        assert store.take_lease(job, lease("a"))
        assert job.lease_owner == "a"  # the caller's record follows the store
        assert not store.take_lease(store.load(job.job_id), lease("b"))  # lease_free: a's is live
        assert store.take_lease(store.load(job.job_id), lease("a"))  # its own holder may take it again
        expired = self.seed(store, new_job(lease_owner="dead", lease_until=time.time() - 1))
        assert store.take_lease(expired, lease("b")) and store.load(expired.job_id).lease_owner == "b"

    def test_only_a_processing_job_is_leased(self, store):
        for status in (JobStatus.QUEUED, JobStatus.CANCELLATION_REQUESTED, JobStatus.CANCELLED):
            job = self.seed(store, new_job(status))
            assert not store.take_lease(job, lease()) and store.load(job.job_id).lease_owner is None

    def test_two_invocations_racing_for_one_job_one_wins(self, store):
        for _ in range(5):
            job = self.seed(store, new_job())
            start, won = threading.Barrier(2), []

            def take(owner: str, job_id: str = job.job_id, start: threading.Barrier = start,
                     won: list = won) -> None:
                record = store.load(job_id)
                start.wait()
                if store.take_lease(record, lease(owner)):
                    won.append(owner)

            threads = [threading.Thread(target=take, args=(o,)) for o in ("a", "b")]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
            assert len(won) == 1 and store.load(job.job_id).lease_owner == won[0]

    def test_a_checkpoint_counts_a_batch_once_and_only_for_the_lease_holder(self, store):
        job = self.seed(store, new_job())
        mine = lease("a")
        assert store.take_lease(job, mine)
        batch = Progress(lines=20, failed=2, cached=5, retries=1)
        assert store.checkpoint(job, mine, "", "line-20", batch, None)
        stored = store.load(job.job_id)
        assert (stored.cursor, int(stored.processed_lines), int(stored.failed_lines), int(stored.cached_lines),
                int(stored.retry_count)) == ("line-20", 20, 2, 5, 1)
        # cursor_unchanged: the same batch again (a redelivered message) counts nothing.
        assert not store.checkpoint(store.load(job.job_id), mine, "", "line-20", batch, None)
        # lease_is_ours: a stale invocation counts nothing.
        assert not store.checkpoint(store.load(job.job_id), lease("b"), "line-20", "line-40", batch, None)
        assert int(store.load(job.job_id).processed_lines) == 20
        assert job.cursor == "line-20"  # a refused checkpoint leaves the caller holding what the store holds

    def test_a_checkpoint_lands_on_a_live_job_only(self, store):
        job = self.seed(store, new_job(JobStatus.CANCELLED, lease_owner="a", lease_until=time.time() + 60))
        assert not store.checkpoint(job, lease("a"), "", "line-20", Progress(lines=20), None)
        assert int(store.load(job.job_id).processed_lines) == 0

    def test_hand_back_gives_up_the_lease_counts_retries_and_pushes_the_heartbeat(self, store):
        job = self.seed(store, new_job())
        mine = lease("a")
        assert store.take_lease(job, mine)
        assert not store.hand_back(store.load(job.job_id), lease("b"), 3, 60)  # not b's to give
        assert store.hand_back(job, mine, 3, 60)
        stored = store.load(job.job_id)
        assert stored.lease_owner is None and int(stored.retry_count) == 3
        assert stored.heartbeat_at > clock.iso(clock.now() + timedelta(seconds=50))
        assert store.take_lease(stored, lease("b"))  # free for the continuation's receiver at once

    def test_release_and_heartbeat_need_the_lease(self, store):
        job = self.seed(store, new_job())
        mine = lease("a")
        assert store.take_lease(job, mine)
        assert not store.heartbeat(store.load(job.job_id), lease("b"))
        assert store.heartbeat(job, mine) and store.load(job.job_id).heartbeat_at != OLD
        assert not store.release(store.load(job.job_id), lease("b"))
        assert store.release(job, mine) and store.load(job.job_id).lease_owner is None

    def test_a_refused_write_leaves_the_callers_record_as_it_was(self, store):
        job = self.seed(store, new_job())
        assert store.take_lease(job, lease("a"))
        stale = store.load(job.job_id)
        stale.lease_owner = "b"  # an invocation that believes it holds the job
        for refused in (lambda: store.hand_back(stale, lease("b"), 1, 60), lambda: store.release(stale, lease("b")),
                        lambda: store.heartbeat(stale, lease("b")), lambda: store.end_recheck(stale, lease("b"), "")):
            assert not refused()
            assert stale.lease_owner == "b"  # not silently turned into the store's view: it reads again itself
        assert store.load(job.job_id).lease_owner == "a"

    def test_an_owner_without_an_end_holds_the_lease(self, store):
        job = self.seed(store, new_job(lease_owner="someone"))  # lease_until never written
        assert not store.take_lease(job, lease("b"))

    def test_retries_counted_on_a_job_and_chunks_done_set_only_from_the_count_read(self, store):
        job = self.seed(store, new_job())
        store.count_retries(job.job_id, 3)
        assert int(store.load(job.job_id).retry_count) == 3
        store.record_plan(job, ["l-1", ""], "2 chunks")
        assert store.set_chunks_done(store.load(job.job_id), 0, 1)
        assert not store.set_chunks_done(store.load(job.job_id), 0, 2)  # done_count_unchanged: it is 1 now
        assert int(store.load(job.job_id).chunks_done) == 1

    def test_waits_that_overlap_count_once(self, store):
        job = self.seed(store, new_job())
        end = time.time()
        assert store.note_wait(job.job_id, 10, end) == pytest.approx(10, abs=0.01)
        assert store.note_wait(job.job_id, 10, end) == 0  # the same window, noted by a second chunk
        assert store.note_wait(job.job_id, 15, end + 5) == pytest.approx(5, abs=0.01)
        assert float(store.load(job.job_id).rate_limited_seconds) == pytest.approx(15, abs=0.01)

    def test_one_reaper_wins_and_a_job_that_moved_is_left_alone(self, store):
        job = self.seed(store, new_job(lease_owner="dead", lease_until=time.time() - 1))
        seen = store.load(job.job_id)
        assert store.mark_reaped(seen, JobStatus.PROCESSING)
        stored = store.load(job.job_id)
        assert int(stored.reap_count) == 1 and stored.lease_owner is None
        assert not store.mark_reaped(seen_copy(job, OLD), JobStatus.PROCESSING)  # a second reaper, same view
        moved = self.seed(store, new_job())
        stale_view = store.load(moved.job_id)
        mine = lease("a")
        assert store.take_lease(store.load(moved.job_id), mine)  # a worker moved it (heartbeat) since the sweep
        assert not store.mark_reaped(stale_view, JobStatus.PROCESSING)
        assert store.load(moved.job_id).lease_owner == "a"

    def test_a_recheck_batch_takes_its_fixes_off_once_and_only_for_the_lease_holder(self, store):
        job = self.seed(store, new_job(failed_lines=5, recheck_flagged=True))
        mine = lease("a")
        assert store.take_lease(job, mine)
        assert store.recheck_batch(job, mine, "", "l-3", fixed=2, retries=1)
        assert not store.recheck_batch(store.load(job.job_id), mine, "", "l-3", fixed=2, retries=1)  # a redo
        assert not store.recheck_batch(store.load(job.job_id), lease("b"), "l-3", "l-6", fixed=1, retries=0)
        stored = store.load(job.job_id)
        assert (int(stored.failed_lines), stored.recheck_after, int(stored.retry_count)) == (3, "l-3", 1)
        assert not store.end_recheck(store.load(job.job_id), mine, "")  # not where the recheck is
        assert store.end_recheck(store.load(job.job_id), mine, "l-3")
        assert (store.load(job.job_id).recheck_flagged, store.load(job.job_id).recheck_after) == (False, None)

    def test_two_settlements_the_later_report_stays(self, store):
        job = self.seed(store, new_job(JobStatus.COMPLETED, failed_lines=3, needs_review=3))
        first = store.next_result_version(store.load(job.job_id), fixed=1)
        second = store.next_result_version(store.load(job.job_id), fixed=1)
        assert (first, second) == (1, 2)
        assert (int(store.load(job.job_id).failed_lines), int(store.load(job.job_id).needs_review)) == (1, 1)
        assert store.set_result(store.load(job.job_id), second, "v2.json", "2 settled")
        assert not store.set_result(store.load(job.job_id), first, "v1.json", "1 settled")  # older: refused
        assert store.load(job.job_id).result_key == "v2.json"

    # --- status moves (store.move, through the named moves of store/moves.py) ---------------------------------

    @pytest.fixture
    def in_use(self, store):
        previous = use_store(store)
        yield store
        use_store(previous)

    def test_a_start_leases_the_job_and_a_second_start_from_the_same_view_loses(self, in_use):
        job = self.seed(in_use, new_job(JobStatus.QUEUED))
        stale = in_use.load(job.job_id)
        started = moves.start(job, lease("a"), total=40)
        assert (started.status, started.lease_owner, int(started.total_lines)) == ("Processing", "a", 40)
        with pytest.raises(InvalidTransition):
            moves.start(started, lease("b"), total=40)  # Processing cannot start again
        with pytest.raises(TransitionRaced):
            moves.start(stale, lease("b"), total=40)  # status_unchanged: it is no longer Queued
        assert in_use.load(job.job_id).lease_owner == "a"

    def test_a_cancel_the_api_completes_waits_for_no_live_lease(self, in_use):
        job = self.seed(in_use, new_job(lease_owner="a", lease_until=time.time() + 60))
        with pytest.raises(TransitionRaced):
            moves.cancel(job, by="user", unleased_only=True)  # no_live_lease: a worker holds it
        dead = self.seed(in_use, new_job(lease_owner="a", lease_until=time.time() - 1, processed_lines=20))
        cancelled = moves.cancel(dead, by="user", unleased_only=True)
        assert (cancelled.status, cancelled.lease_owner, cancelled.status_message) == (
            "Cancelled", None, "Cancelled after 20 of 100 lines")

    def test_a_reaper_fails_only_the_job_it_judged(self, in_use):
        job = self.seed(in_use, new_job(lease_owner="dead", lease_until=time.time() - 1))
        judged = in_use.load(job.job_id)
        assert in_use.take_lease(in_use.load(job.job_id), lease("a"))  # a worker moved it since (heartbeat)
        with pytest.raises(TransitionRaced):
            moves.fail(judged, "stopped making progress", judged=True)  # as_seen
        assert in_use.load(job.job_id).status == "Processing"
        moves.fail(in_use.load(job.job_id), "bad key")
        assert (in_use.load(job.job_id).status, in_use.load(job.job_id).error_message) == ("Failed", "bad key")

    def test_only_the_lease_holder_completes_and_a_last_batch_counts_once(self, in_use):
        job = self.seed(in_use, new_job(processed_lines=80, cursor="l-80"))
        mine = lease("a")
        assert in_use.take_lease(job, mine)
        report = moves.Report(version=1, key="results/v1.json", lines=100, needs_review=3)
        last = moves.LastBatch("l-80", "l-100", processed=100, cached=5, retries=1)
        with pytest.raises(TransitionRaced):
            moves.complete(in_use.load(job.job_id), lease("b"), report, "done", last)  # lease_is_ours
        with pytest.raises(TransitionRaced):
            moves.complete(in_use.load(job.job_id), mine, report, "done",
                           moves.LastBatch("l-60", "l-80", 80, 0, 0))  # cursor_unchanged: a redone batch
        done = moves.complete(in_use.load(job.job_id), mine, report, "done", last)
        assert (done.status, done.cursor, int(done.processed_lines), int(done.cached_lines),
                done.result_key, done.lease_owner) == ("Completed", "l-100", 100, 5, "results/v1.json", None)

    def test_a_retry_takes_the_lock_back_and_a_second_live_job_is_refused(self, in_use):
        shared = f"lock#{uuid.uuid4().hex}"  # one user, report and period
        first = self.seed(in_use, new_job(JobStatus.FAILED, error_message="boom", lock_key=shared))
        queued = moves.requeue_for_retry(first, self.report_check())
        assert (queued.status, queued.error_message) == ("Queued", None)
        moves.cancel_queued(queued)
        again = moves.requeue_for_retry(in_use.load(first.job_id), self.report_check())
        assert again.status == "Queued"
        other = self.seed(in_use, new_job(JobStatus.CANCELLED, lock_key=shared))
        with pytest.raises(ActiveJobExists):
            moves.requeue_for_retry(other, self.report_check())
        assert in_use.load(other.job_id).status == "Cancelled"

    def report_check(self):
        """The report condition a retry checks in its transaction (DynamoDB: a report item that exists)."""
        return None

    # --- usage and the batch lane ---------------------------------------------------------------------------

    def test_usage_is_added_with_the_checkpoint_that_counts_its_batch_once(self, store):
        job = self.seed(store, new_job())
        mine = lease("a")
        assert store.take_lease(job, mine)
        used = Usage(requests=2, input_tokens=4000, cached_tokens=3072, output_tokens=90, cost_nanos=500_000,
                     flex_fallbacks=1)
        batch = Progress(lines=20, usage=used)
        assert store.checkpoint(job, mine, "", "line-20", batch, None)
        assert not store.checkpoint(store.load(job.job_id), mine, "", "line-20", batch, None)  # redelivered
        assert store.hand_back(store.load(job.job_id), mine, 0, 30, Usage(requests=1, input_tokens=100))
        stored = store.load(job.job_id)
        assert (int(stored.usage_requests), int(stored.usage_input_tokens), int(stored.usage_cached_tokens),
                int(stored.usage_output_tokens), int(stored.usage_cost_nanos), int(stored.flex_fallbacks)) == \
            (3, 4100, 3072, 90, 500_000, 1)

    def test_a_job_waits_on_one_batch_and_its_usage_is_collected_once(self, store):
        job = self.seed(store, new_job())
        mine = lease("a")
        assert store.take_lease(job, mine)
        assert not store.intend_batch(store.load(job.job_id), lease("b"), "plan-1")  # lease_is_ours
        assert store.intend_batch(job, mine, "plan-1")
        assert store.load(job.job_id).batch_intent == "plan-1"  # before the create: a crash leaves it
        assert store.wait_on_batch(job, mine, "batch-1", "plan-1", "Waiting")
        assert store.load(job.job_id).batch_intent is None  # recorded: nothing to look for any more
        assert not store.intend_batch(store.load(job.job_id), mine, "plan-2")  # batch_not_submitted
        # batch_not_submitted: a second invocation of the same start message does not replace the batch.
        assert not store.wait_on_batch(store.load(job.job_id), mine, "batch-2", "plan-2", "Waiting")
        assert not store.wait_on_batch(store.load(job.job_id), lease("b"), "batch-3", "plan-3", "Waiting")
        waiting = store.load(job.job_id)
        assert (waiting.batch_id, waiting.batch_state, waiting.batch_plan_key) == ("batch-1", "submitted", "plan-1")
        assert store.batch_progress(waiting, "Waiting (in_progress)")
        # batch_submitted: two pollers collect it once.
        first, second = store.load(job.job_id), store.load(job.job_id)
        assert store.end_batch(first, "collected", "answers-1", Usage(requests=3, input_tokens=900), "Collected")
        assert not store.end_batch(second, "collected", "answers-1", Usage(requests=3, input_tokens=900), "x")
        assert not store.batch_progress(store.load(job.job_id), "late")
        stored = store.load(job.job_id)
        assert (stored.batch_state, stored.batch_answers_key, int(stored.usage_requests),
                stored.status_message) == ("collected", "answers-1", 3, "Collected")

    def test_a_leftover_batch_intent_is_cleared_only_while_unchanged(self, store):
        job = self.seed(store, new_job())
        mine = lease("a")
        assert store.take_lease(job, mine) and store.intend_batch(job, mine, "plan-1")
        assert not store.clear_batch_intent(store.load(job.job_id), "plan-0")  # intent_unchanged: a newer one stays
        assert store.load(job.job_id).batch_intent == "plan-1"
        assert store.clear_batch_intent(store.load(job.job_id), "plan-1")
        assert store.load(job.job_id).batch_intent is None

    def test_a_stopped_jobs_orphan_batch_is_counted_once_and_only_while_the_job_is_stopped(self, store):
        live = self.seed(store, new_job(batch_intent="plan-1"))
        used = Usage(requests=1, input_tokens=700, output_tokens=40)
        assert not store.settle_intent(live, "plan-1", used)  # job_is_final: a live job takes its batch back
        stopped = self.seed(store, new_job(JobStatus.CANCELLED, batch_intent="plan-1"))
        assert not store.settle_intent(store.load(stopped.job_id), "plan-0", used)  # intent_unchanged
        first, second = store.load(stopped.job_id), store.load(stopped.job_id)
        assert store.settle_intent(first, "plan-1", used)
        assert not store.settle_intent(second, "plan-1", used)  # a second poller: counted once
        stored = store.load(stopped.job_id)
        assert (stored.batch_intent, int(stored.usage_requests), int(stored.usage_input_tokens),
                int(stored.usage_output_tokens), stored.status) == (None, 1, 700, 40, "Cancelled")
        assert store.load(live.job_id).batch_intent == "plan-1" and not store.load(live.job_id).usage_requests

    def test_a_cancelled_batch_may_be_replaced_by_a_retry(self, store):
        job = self.seed(store, new_job())
        mine = lease("a")
        assert store.take_lease(job, mine) and store.wait_on_batch(job, mine, "batch-1", "plan-1", "Waiting")
        assert store.end_batch(store.load(job.job_id), "cancelled", None, Usage(), "")
        assert store.wait_on_batch(store.load(job.job_id), mine, "batch-2", "plan-2", "Waiting")
        assert store.load(job.job_id).batch_id == "batch-2"

    # --- chunks -------------------------------------------------------------------------------------------------

    def test_the_first_plan_stands(self, store):
        job = self.seed(store, new_job())
        assert store.record_plan(job, ["l-10", ""], "2 chunks") == ["l-10", ""]
        assert store.record_plan(store.load(job.job_id), ["l-5", "l-15", ""], "3 chunks") == ["l-10", ""]
        assert int(store.load(job.job_id).chunk_count) == 2

    def test_a_chunk_is_made_once_and_worked_by_one_invocation(self, store):
        job = self.seed(store, new_job())
        store.record_plan(job, ["l-10", ""], "2 chunks")
        assert store.create_chunk(job, 0, "", "l-10") and store.create_chunk(job, 1, "l-10", "")
        first = store.claim_chunk(job.job_id, 0, lease("a"))
        assert first is not None and first.status == ChunkStatus.RUNNING.value
        assert not store.create_chunk(job, 0, "", "l-10")  # chunk_is_new: never reset a started chunk
        assert store.chunks_of(job.job_id)[0].status == ChunkStatus.RUNNING.value
        assert store.claim_chunk(job.job_id, 0, lease("b")) is None  # chunk_free: a's is live

    def one_chunk_claimed(self, store, mine: Lease):
        """A job planned as one chunk, that chunk claimed under `mine`."""
        job = self.seed(store, new_job())
        store.record_plan(job, [""], "1 chunk")
        store.create_chunk(job, 0, "", "")
        return job, store.claim_chunk(job.job_id, 0, mine)

    def test_a_chunk_checkpoint_adds_to_the_job_once(self, store):
        mine = lease("a")
        job, chunk = self.one_chunk_claimed(store, mine)
        stale = store.chunks_of(job.job_id)[0]  # read before the checkpoint: its cursor is ""
        assert store.checkpoint_chunk(job, chunk, mine, "l-20", Progress(lines=20, failed=1), None)
        assert not store.checkpoint_chunk(job, stale, mine, "l-20", Progress(lines=20, failed=1), None)
        assert not store.checkpoint_chunk(job, chunk, lease("b"), "l-40", Progress(lines=20), None)
        stored = store.load(job.job_id)
        assert (int(stored.processed_lines), int(stored.failed_lines)) == (20, 1)
        assert int(store.chunks_of(job.job_id)[0].processed) == 20

    def test_the_last_chunk_to_finish_says_so(self, store):
        job = self.seed(store, new_job())
        store.record_plan(job, ["l-10", ""], "2 chunks")
        for number, (after, upto) in enumerate([("", "l-10"), ("l-10", "")]):
            store.create_chunk(job, number, after, upto)
        a, b = lease("a"), lease("b")
        first, second = store.claim_chunk(job.job_id, 0, a), store.claim_chunk(job.job_id, 1, b)
        assert not store.finish_chunk(job, first, b)  # not b's chunk
        assert store.finish_chunk(job, first, a) is False  # done, but one chunk is left
        assert store.finish_chunk(store.load(job.job_id), second, b) is True
        assert int(store.load(job.job_id).chunks_done) == 2
        assert store.claim_chunk(job.job_id, 0, lease("c")) is None  # a done chunk is never worked again

    def test_a_chunk_handed_back_or_reaped_is_pending_and_free(self, store):
        mine = lease("a")
        job, chunk = self.one_chunk_claimed(store, mine)
        assert not store.hand_back_chunk(chunk, lease("b"), 30)
        assert store.hand_back_chunk(chunk, mine, 30)
        assert store.chunks_of(job.job_id)[0].status == ChunkStatus.PENDING.value
        # Two reapers read the chunk (due back in 30 s, as handed back); the first to write wins.
        first_view, second_view = store.chunks_of(job.job_id)[0], store.chunks_of(job.job_id)[0]
        assert store.mark_chunk_reaped(first_view)
        reaped = store.chunks_of(job.job_id)[0]
        assert (reaped.status, reaped.lease_owner, int(reaped.reap_count)) == (ChunkStatus.PENDING.value, None, 0)
        assert not store.mark_chunk_reaped(second_view)
        claimed = store.claim_chunk(job.job_id, 0, lease("b"))  # free for the message the reaper sends
        assert claimed is not None
        assert not store.release_chunk(claimed, lease("c")) and store.release_chunk(claimed, lease("b"))
        assert store.chunks_of(job.job_id)[0].status == ChunkStatus.PENDING.value
        again = store.claim_chunk(job.job_id, 0, lease("c"))
        store.reset_chunk(again)  # a retry: Pending, no lease, reaps forgotten
        reset = store.chunks_of(job.job_id)[0]
        assert (reset.status, reset.lease_owner, int(reset.reap_count)) == (ChunkStatus.PENDING.value, None, 0)


def seen_copy(job: Job, heartbeat: str) -> Job:
    """A sweep's view of the job: the heartbeat it read."""
    view = Job(job.job_id, **{k: getattr(job, k) for k in ("owner_id", "report_id", "period", "status", "created_at",
                                                           "updated_at", "lock_key", "expires_at")})
    view.heartbeat_at, view.lease_owner = heartbeat, "dead"
    return view


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def store(self):
        return MemoryJobStore()

    def seed(self, store, job: Job) -> Job:
        store.put(job)
        return store.load(job.job_id)


def test_no_module_outside_the_store_writes_a_job_or_a_chunk_item():
    """Every write of a job or chunk item is one of the store's operations, where its condition is named: an
    update expression against them (Job.x.set(...), job.update(...), a transaction's update of a job) anywhere
    else would be a race closed outside the one place that closes them."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "chalicelib"
    store = root / "jobs" / "store"
    writes = re.compile(r"\b(Job|JobChunk)\.\w+\.(set|add|remove|append|prepend|delete)\(|\b(job|chunk|fresh|"
                        r"fanned)\.(update|save|delete)\(|\b(Job|JobChunk)\([^)]*\)\.(update|save|delete)\(|"
                        r"tx\.(update|save|delete)\((job|chunk|Job\(|JobChunk\()")
    found = [f"{path.relative_to(root)}:{n}: {line.strip()}" for path in sorted(root.rglob("*.py"))
             if store not in path.parents and path.name != "tables.py"
             for n, line in enumerate(path.read_text().splitlines(), 1) if writes.search(line)]
    assert found == []
