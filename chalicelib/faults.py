"""Named points in the worker loop where tests inject a crash (a no-op in normal runs).

`WORKER_CRASH_AT=<point>` makes a worker process exit abruptly there (the kill -9 a
Lambda timeout or OOM amounts to); in-process tests monkeypatch `point` to raise instead.
"""

from __future__ import annotations

import os

POINTS = ("after_model_call", "after_result_writes", "after_checkpoint", "before_continuation_send")


def point(name: str) -> None:
    if os.environ.get("WORKER_CRASH_AT") == name:
        os._exit(137)
