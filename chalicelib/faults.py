"""Named points in the worker loop where tests inject a crash: a no-op unless armed.

Deployed code never arms it and never reads the environment for it. The local stack's worker arms it when
`WORKER_CRASH_AT=<point>` is set (local/poller.py), so a worker process exits abruptly there (the kill -9 a
Lambda timeout or OOM amounts to: no `finally` runs); in-process tests monkeypatch `point` instead.
"""

from __future__ import annotations

import os

# In the batch loop of every job or chunk.
POINTS = ("after_model_call", "after_result_writes", "after_checkpoint", "before_continuation_send")
# While a large job is split: the plan is recorded, no chunk of it is made or sent yet.
FANOUT_POINTS = ("after_plan",)
# Delivery: a final status written with its deliveries, none queued yet; an attempt claimed, nothing sent yet.
DELIVERY_POINTS = ("after_final_status", "after_delivery_claim")
# The batch lane: the provider's batch is created, the job does not record it yet.
BATCH_POINTS = ("after_batch_create",)
# A paced invocation's prefetch (worker/prefetch.py): the next batch's first request answered, nothing counted.
PREFETCH_POINTS = ("after_prefetch_answer",)
ALL_POINTS = POINTS + FANOUT_POINTS + DELIVERY_POINTS + BATCH_POINTS + PREFETCH_POINTS
_armed: str | None = None


def arm(name: str | None) -> None:
    """Exit the process with 137 the first time the worker passes `name` (None disarms)."""
    global _armed
    if name is not None and name not in ALL_POINTS:
        raise ValueError(f"unknown fault point {name!r}; one of {', '.join(ALL_POINTS)}")
    _armed = name


def point(name: str) -> None:
    if _armed is not None and _armed == name:
        os._exit(137)
