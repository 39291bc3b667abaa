"""The job store: every write of a job or a chunk item, each an operation, each race-closing condition named once.

- lease.py: the lease protocol (leases, checkpoints, hand-overs, waits, reaps, the chunk plan and each chunk's
  claim, checkpoint and finish, recheck, settlement) behind the `JobStore` port, on DynamoDB and in memory, held to
  one contract (tests/unit/test_job_store.py).
- moves.py: the named status moves (start, cancel, fail, retry, complete...), each a `Change` through the port's
  `move` (on DynamoDB: the transition with its event, day counts, lock and deliveries in one transaction), and a
  job's creation and its undo.
- deliveries.py: the writes of a final job's deliveries (DynamoDB only).

Nothing outside this package writes a job or a chunk item; jobs/states.py holds the rules they follow.
"""

from chalicelib.jobs.store.lease import (
    Change,
    DynamoJobStore,
    JobStore,
    Lease,
    MemoryJobStore,
    Progress,
    current,
    use_store,
)

__all__ = ["Change", "DynamoJobStore", "JobStore", "Lease", "MemoryJobStore", "Progress", "current", "use_store"]
