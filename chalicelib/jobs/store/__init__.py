"""The job store: every write of a job or a chunk item, each an operation, each race-closing condition named once.

- lease.py: the lease protocol (leases, checkpoints, hand-overs, waits, reaps, the chunk plan and each chunk's
  claim, checkpoint and finish, recheck, settlement) behind the `JobStore` port, on DynamoDB and in memory, held to
  one contract (tests/unit/test_job_store.py).
- moves.py: the status machine's writes (each transition with its event, day counts, lock and deliveries in one
  transaction), a job's creation and its undo, and the deliveries' own writes.

Nothing outside this package writes a job or a chunk item; jobs/states.py holds the rules they follow.
"""

from chalicelib.jobs.store.lease import (
    DynamoJobStore,
    JobStore,
    Lease,
    MemoryJobStore,
    Progress,
    current,
    use_store,
)

__all__ = ["DynamoJobStore", "JobStore", "Lease", "MemoryJobStore", "Progress", "current", "use_store"]
