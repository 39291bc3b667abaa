"""The worker: what the work queue's messages ask for, as a package.

- handler.py: the SQS handler (messages in, one call out) and the dead-letter handler.
- runs.py: a job, a chunk of a fanned-out job, a vendor-cache warm run.
- loop.py: the checkpointed batch loop over a `Scope`; scopes.py: the whole job and one chunk as scopes.
- readahead.py: the lines read past the checkpoint; invocation.py: what one invocation holds and counts.
- completion.py: the one way a job becomes Completed; fanout.py: splitting a job into chunks.
- cancel.py: completing a cancel, and watching for one; recheck.py: flagged lines asked again after a retry.
- rows.py: line results written; seams.py: the performance shortcuts and the settings that switch them off.
- deferred.py: openai imported on first use, not at the worker's import (cold start).

What app.py, the tests and the benchmark use is re-exported here.
"""

from chalicelib.worker import deferred

with deferred.binding("openai"):  # before anything imports chalicelib.categorize.provider
    from chalicelib.categorize import provider  # noqa: F401 - bound here, within the deferral

from chalicelib.worker.cancel import WATCH_SECONDS, CancelWatch  # noqa: E402
from chalicelib.worker.handler import handle_batch, handle_dead_letters, handle_record  # noqa: E402
from chalicelib.worker.invocation import Counted, Invocation  # noqa: E402
from chalicelib.worker.loop import Scope  # noqa: E402
from chalicelib.worker.recheck import read_flagged  # noqa: E402
from chalicelib.worker.rows import WRITTEN_KEPT_MAX  # noqa: E402
from chalicelib.worker.runs import run_chunk, run_job, warm_cache  # noqa: E402
from chalicelib.worker.scopes import ChunkScope, JobScope  # noqa: E402
from chalicelib.worker.seams import with_seams  # noqa: E402

__all__ = ["WATCH_SECONDS", "WRITTEN_KEPT_MAX", "CancelWatch", "ChunkScope", "Counted", "Invocation", "JobScope",
           "Scope", "handle_batch", "handle_dead_letters", "handle_record", "read_flagged", "run_chunk", "run_job",
           "warm_cache", "with_seams"]
