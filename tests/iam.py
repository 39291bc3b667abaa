"""The functions' IAM policies (.chalice/policy-*.json) as data, and the permission each AWS API call needs.

Used by tests/unit/test_template.py (no wildcards where a specific action or resource exists) and
tests/integration/test_least_privilege.py (every call a handler makes is allowed, every grant is used).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

from botocore.client import BaseClient

ROOT = Path(__file__).resolve().parent.parent
CONFIG = json.loads((ROOT / ".chalice" / "config.json").read_text())
FUNCTIONS = ("api_handler", "process_work", "handle_dead_letters", "reap_stale_jobs", "run_scheduled_reports",
             "warm_vendor_cache", "poll_provider_batches")
# What the moto server answers as; CloudFormation fills the same pseudo parameters in AWS.
PSEUDO = {"AWS::Partition": "aws", "AWS::Region": "us-east-1", "AWS::AccountId": "123456789012",
          "AWS::URLSuffix": "amazonaws.com"}
# Template parameters the policies name besides Prefix, at infra/deploy.yaml's defaults (SesIdentity: the domain
# of the tests' SES_FROM, reports@example.com).
PARAMETERS = {"SesIdentity": "example.com"}


def policy_path(function: str) -> Path:
    return ROOT / ".chalice" / CONFIG["lambda_functions"][function]["iam_policy_file"]


def policy(function: str) -> dict[str, Any]:
    return json.loads(policy_path(function).read_text())


def sub(value: Any, prefix: str) -> str:
    """A resource as the template resolves it: plain string or {"Fn::Sub": "...${Prefix}..."}."""
    text = value["Fn::Sub"] if isinstance(value, dict) else value
    names = {**PSEUDO, **PARAMETERS, "Prefix": prefix}
    return re.sub(r"\$\{([^}]+)\}", lambda m: names[m.group(1)], text)


def grants(function: str, prefix: str) -> list[tuple[str, str]]:
    """Every (action, resource pattern) the function's policy allows."""
    out = []
    for statement in policy(function)["Statement"]:
        assert statement["Effect"] == "Allow", f"{function}: only Allow statements are expected"
        for action in _listed(statement["Action"]):
            for resource in _listed(statement["Resource"]):
                out.append((action, sub(resource, prefix)))
    return out


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def allowing(granted: Iterable[tuple[str, str]], action: str, resource: str) -> list[tuple[str, str]]:
    """The grants that allow `action` on `resource` (IAM matching: `*` and `?` globs, actions case-insensitive)."""
    return [(a, r) for a, r in granted
            if fnmatch.fnmatchcase(action.lower(), a.lower()) and fnmatch.fnmatchcase(resource, r)]


# --- what a call needs ---------------------------------------------------------------------------------------

_DDB_TRANSACT = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem",
                 "ConditionCheck": "ConditionCheckItem", "Get": "GetItem"}
_S3 = {"PutObject": "s3:PutObject", "CreateMultipartUpload": "s3:PutObject", "UploadPart": "s3:PutObject",
       "CompleteMultipartUpload": "s3:PutObject", "AbortMultipartUpload": "s3:AbortMultipartUpload",
       "GetObject": "s3:GetObject", "HeadObject": "s3:GetObject"}


def _table(name: str, index: str | None = None) -> str:
    arn = f"arn:aws:dynamodb:{PSEUDO['AWS::Region']}:{PSEUDO['AWS::AccountId']}:table/{name}"
    return f"{arn}/index/{index}" if index else arn


def needs(service: str, operation: str, params: dict[str, Any]) -> list[tuple[str, str]]:
    """The (IAM action, resource ARN) pairs one API call is authorized against."""
    region, account = PSEUDO["AWS::Region"], PSEUDO["AWS::AccountId"]
    if service == "dynamodb":
        if operation in ("TransactWriteItems", "TransactGetItems"):
            return [(f"dynamodb:{_DDB_TRANSACT[kind]}", _table(body["TableName"]))
                    for item in params["TransactItems"] for kind, body in item.items()]
        if operation in ("BatchWriteItem", "BatchGetItem"):
            return [(f"dynamodb:{operation}", _table(name)) for name in params["RequestItems"]]
        return [(f"dynamodb:{operation}", _table(params["TableName"], params.get("IndexName")))]
    if service == "sqs":
        # A batch call is authorized as its single-message action (SendMessageBatch needs sqs:SendMessage).
        action = operation.removesuffix("Batch")
        name = params.get("QueueName") or urlsplit(params["QueueUrl"]).path.rsplit("/", 1)[-1]
        return [(f"sqs:{action}", f"arn:aws:sqs:{region}:{account}:{name}")]
    if service == "s3" and operation in _S3:
        return [(_S3[operation], f"arn:aws:s3:::{params['Bucket']}/{params['Key']}")]
    if service == "s3" and operation in ("HeadBucket", "ListObjectsV2", "ListObjects"):
        return [("s3:ListBucket", f"arn:aws:s3:::{params['Bucket']}")]
    if service == "ssm" and operation in ("GetParameter", "GetParameters"):
        names = [params["Name"]] if operation == "GetParameter" else params["Names"]
        return [(f"ssm:{operation}", f"arn:aws:ssm:{region}:{account}:parameter/{n.lstrip('/')}") for n in names]
    if service == "sesv2" and operation == "SendEmail":
        # Authorized against the verified identity the sender belongs to: here its domain (SesIdentity).
        domain = params["FromEmailAddress"].rsplit("@", 1)[-1].strip(">")
        return [("ses:SendEmail", f"arn:aws:ses:{region}:{account}:identity/{domain}")]
    raise AssertionError(f"tests/iam.py does not know what {service}:{operation} needs; add it")


@contextlib.contextmanager
def recording() -> Iterator[set[tuple[str, str]]]:
    """Every (IAM action, resource ARN) the calls made inside the block were authorized against."""
    from chalicelib.reports import service as reports

    needed: set[tuple[str, str]] = set()
    original = BaseClient._make_api_call
    reports._FOUND.clear()  # a report kept from before the block would hide a read the function needs

    def spy(client: BaseClient, operation: str, params: dict) -> dict:
        needed.update(needs(client.meta.service_model.service_name, operation, params))
        return original(client, operation, params)

    with mock.patch.object(BaseClient, "_make_api_call", spy):
        yield needed
