"""The worker's parts that need no AWS: the read-ahead buffer, the batch length rule, openai's deferred import."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from chalicelib.worker.loop import _batch_length
from chalicelib.worker.readahead import ReadAhead

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Line:
    line_id: str
    vendor: str = "Acme"


def _lines(*ids: str) -> list[Line]:
    return [Line(i) for i in ids]


class Reader:
    """A scope's next_lines over a fixed list of lines, recording each read."""

    def __init__(self, ids: list[str]) -> None:
        self.lines, self.reads, self.cursor = _lines(*ids), [], ""  # `cursor`: the scope's checkpoint

    def __call__(self, n: int, after: str | None) -> list[Line]:
        self.reads.append((n, after))
        after = self.cursor if after is None else after
        start = [line.line_id for line in self.lines].index(after) + 1 if after else 0
        return self.lines[start:start + n]


def test_a_buffer_reads_ahead_once_and_serves_the_next_batches_from_memory():
    ahead, read = ReadAhead(), Reader(["a", "b", "c", "d", "e"])
    ahead.sync("")
    ahead.fill(read, low=2, capacity=4)
    assert [x.line_id for x in ahead.take(2)] == ["a", "b"]
    ahead.sync("b")  # the checkpoint moved where the buffer expected
    ahead.fill(read, low=2, capacity=4)  # two left: no read
    assert read.reads == [(4, None)]
    assert [x.line_id for x in ahead.take(2)] == ["c", "d"]
    read.cursor = "d"
    ahead.sync("d")
    ahead.fill(read, low=2, capacity=4)  # empty: reads after the checkpoint (after=None: the scope's cursor)
    assert read.reads[-1] == (4, None) and [x.line_id for x in ahead.lines] == ["e"]


def test_a_buffer_tops_up_after_its_last_line_when_it_runs_low():
    ahead, read = ReadAhead(), Reader(["a", "b", "c", "d"])
    ahead.sync("")
    ahead.fill(read, low=2, capacity=3)
    ahead.take(2)
    ahead.sync("b")
    ahead.fill(read, low=2, capacity=3)
    assert read.reads[-1] == (2, "c") and [x.line_id for x in ahead.lines] == ["c", "d"]


def test_a_checkpoint_elsewhere_than_expected_drops_the_buffer():
    ahead, read = ReadAhead(), Reader(["a", "b", "c"])
    ahead.sync("")
    ahead.fill(read, low=1, capacity=3)
    ahead.take(1)
    ahead.sync("")  # the checkpoint of "a" was refused: the cursor did not move
    assert ahead.lines == []


def test_a_buffer_holding_the_whole_job_never_reads():
    ahead = ReadAhead()
    ahead.hold_whole(_lines("a", "b"))
    ahead.sync("")
    ahead.fill(lambda n, after: (_ for _ in ()).throw(AssertionError("read")), low=5, capacity=10)
    assert not ahead.drained_whole
    ahead.take(2)
    assert ahead.drained_whole


def test_a_batch_grows_past_its_size_only_while_its_new_vendors_fit_one_wave():
    lines = [Line(f"l{i}", vendor=f"v{i % 6}") for i in range(12)]
    assert _batch_length(lines, limit=4, wave=10, answered={}) == 12  # 6 vendors, a wave of 10: all of it
    assert _batch_length(lines, limit=4, wave=4, answered={}) == 4  # the 5th vendor would exceed the wave
    assert _batch_length(lines, limit=4, wave=2, answered={"v2": 1, "v3": 1}) == 4
    assert _batch_length(lines, limit=2, wave=2, answered={"v2": 1, "v3": 1, "v4": 1, "v5": 1}) == 12


def test_importing_the_worker_does_not_import_openai_until_a_model_request_needs_it():
    code = ("import sys, chalicelib.worker; from chalicelib.categorize import provider; "
            "print(sorted(m for m in ('openai', 'pydantic') if m in sys.modules)); "
            "provider.openai.RateLimitError; print('openai' in sys.modules and 'pydantic' in sys.modules); "
            "import openai; print(openai is sys.modules['openai'] and openai.OpenAI is provider.openai.OpenAI)")
    env = {**os.environ, "APP_PREFIX": "reports-dev", "AWS_DEFAULT_REGION": "us-east-1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["[]", "True", "True"]
