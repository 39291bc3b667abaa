"""Helpers shared by the tests. They live in local/testkit.py, which the benchmarks import too (bench/ does not
import tests/); this module re-exports them so the tests import from one place."""

from local.testkit import (
    VENDOR_STEMS,
    Ctx,
    HandOff,
    Receiver,
    deliver,
    deliver_until,
    drain,
    expense_lines,
    job_of,
    lambda_event,
    receive,
    seed_body,
    seed_jobs,
    vendors,
    wait_for,
)

__all__ = [
    "Ctx",
    "deliver",
    "deliver_until",
    "drain",
    "expense_lines",
    "HandOff",
    "job_of",
    "lambda_event",
    "receive",
    "Receiver",
    "seed_body",
    "seed_jobs",
    "VENDOR_STEMS",
    "vendors",
    "wait_for",
]
