"""The SQS handler's batch bookkeeping and the crash-injection seam, as the deployed worker runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from chalicelib import worker
from tests.support import Ctx, lambda_event

ROOT = Path(__file__).resolve().parents[2]


def _event(*bodies: dict) -> dict:
    return lambda_event([{"MessageId": f"m-{i}-{json.dumps(b)}", "ReceiptHandle": "r", "Body": json.dumps(b)}
                         for i, b in enumerate(bodies)])


def test_two_batches_handled_at_once_each_report_only_their_own_failures(monkeypatch):
    both_inside = threading.Barrier(2, timeout=10)
    failing_answered = threading.Event()

    def handle_record(record, context, settings=None):
        both_inside.wait()  # the two batches are inside their processors at the same moment
        if json.loads(record.body).get("fail"):
            raise RuntimeError("this record fails")
        failing_answered.wait(10)  # the passing batch ends after the failing one has answered

    monkeypatch.setattr(worker.handler, "handle_record", handle_record)  # what handle_batch calls
    answers: dict[str, dict] = {}
    failing, passing = _event({"jobId": "a", "fail": True}), _event({"jobId": "b"})

    def run(name: str, event: dict) -> None:
        answers[name] = worker.handle_batch(event, Ctx())
        if name == "failing":
            failing_answered.set()

    threads = [threading.Thread(target=run, args=("failing", failing)),
               threading.Thread(target=run, args=("passing", passing))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert answers["passing"] == {"batchItemFailures": []}
    assert answers["failing"] == {"batchItemFailures": [{"itemIdentifier": failing["Records"][0]["messageId"]}]}


def _point_in_subprocess(code: str) -> int:
    env = {**os.environ, "WORKER_CRASH_AT": "after_checkpoint"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, timeout=60).returncode


def test_the_deployed_worker_never_crashes_on_a_crash_point_named_in_its_environment():
    assert _point_in_subprocess("from chalicelib import faults; faults.point('after_checkpoint')") == 0


def test_the_local_worker_poller_arms_the_crash_point_from_its_environment():
    code = ("from local.poller import _arm_crash_point; _arm_crash_point(); "
            "from chalicelib import faults; faults.point('after_model_call'); faults.point('after_checkpoint')")
    assert _point_in_subprocess(code) == 137
