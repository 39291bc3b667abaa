"""The dead-letter handler against the stores (moto). Message shapes: tests/unit/test_messages.py."""

from __future__ import annotations


def test_the_dead_letter_handler_drops_what_names_no_job(aws_endpoint):
    from chalicelib import reaper

    for body in ("not json", '{"kind": "warm", "after": ""}', '{"jobId": "no-such-job", "reason": "start"}'):
        assert reaper.dead_letter(body, "5") == {"outcome": "unknown"}
