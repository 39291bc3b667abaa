"""The worker: what the work queue's messages ask for, as a package.

- handler.py: the SQS handler (messages in, one call out) and the dead-letter handler.
- runs.py: a job, a chunk of a fanned-out job, a vendor-cache warm run.
- loop.py: the checkpointed batch loop over a `Scope`; scopes.py: the whole job and one chunk as scopes.
- readahead.py: the lines read past the checkpoint; invocation.py: what one invocation holds and counts.
- completion.py: the one way a job becomes Completed; fanout.py: splitting a job into chunks.
- cancel.py: completing a cancel, and watching for one; recheck.py: flagged lines asked again after a retry.
- rows.py: line results written; seams.py: the performance shortcuts and the settings that switch them off.

What app.py, the tests and the benchmark use is re-exported here.
"""

from chalicelib.worker.cancel import WATCH_SECONDS, CancelWatch
from chalicelib.worker.handler import handle_batch, handle_dead_letters, handle_record
from chalicelib.worker.invocation import Counted, Invocation
from chalicelib.worker.loop import Scope
from chalicelib.worker.recheck import read_flagged
from chalicelib.worker.rows import WRITTEN_KEPT_MAX
from chalicelib.worker.runs import run_chunk, run_job, warm_cache
from chalicelib.worker.scopes import ChunkScope, JobScope
from chalicelib.worker.seams import with_seams

__all__ = ["WATCH_SECONDS", "WRITTEN_KEPT_MAX", "CancelWatch", "ChunkScope", "Counted", "Invocation", "JobScope",
           "Scope", "handle_batch", "handle_dead_letters", "handle_record", "read_flagged", "run_chunk", "run_job",
           "warm_cache", "with_seams"]
