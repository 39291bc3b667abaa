"""Composition root: adapters built lazily once per process, swappable in tests."""

from __future__ import annotations

from functools import cache, lru_cache
from typing import Any

import boto3
from botocore.config import Config

from chalicelib.settings import get_settings

# The one timeout and retry configuration of every AWS client: the boto3 clients below and the DynamoDB
# connection of chalicelib.tables (which hands these values to PynamoDB). Fail fast: an API request answers 503
# rather than hang on a sick dependency. Three attempts in all (the first and two retries), standard mode.
# The readiness probes (chalicelib.api.meta) keep shorter ones of their own, on purpose.
BOTO_CONFIG = Config(connect_timeout=3, read_timeout=10, retries={"total_max_attempts": 3, "mode": "standard"})


@cache
def client(service: str) -> Any:
    s = get_settings()
    return boto3.client(service, region_name=s.region, endpoint_url=s.aws_endpoint_url, config=BOTO_CONFIG)


@lru_cache(maxsize=1)
def work_queue_url() -> str:
    s = get_settings()
    return s.work_queue_url or client("sqs").get_queue_url(QueueName=f"{s.prefix}-work")["QueueUrl"]


def reset() -> None:
    """Forget every built adapter (tests that point the process at another endpoint)."""
    client.cache_clear()
    work_queue_url.cache_clear()
