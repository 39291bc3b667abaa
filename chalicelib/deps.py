"""Composition root: adapters built lazily once per process, swappable in tests."""

from __future__ import annotations

from functools import cache, lru_cache
from typing import Any

import boto3
from botocore.config import Config

from chalicelib.settings import get_settings

# Fail fast: an API request answers 503 rather than hang on a sick dependency.
_BOTO_CONFIG = Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 2, "mode": "standard"})


@cache
def client(service: str) -> Any:
    s = get_settings()
    return boto3.client(service, region_name=s.region, endpoint_url=s.aws_endpoint_url, config=_BOTO_CONFIG)


@lru_cache(maxsize=1)
def work_queue_url() -> str:
    s = get_settings()
    return s.work_queue_url or client("sqs").get_queue_url(QueueName=f"{s.prefix}-work")["QueueUrl"]


def reset() -> None:
    """Forget every built adapter (tests that point the process at another endpoint)."""
    client.cache_clear()
    work_queue_url.cache_clear()
