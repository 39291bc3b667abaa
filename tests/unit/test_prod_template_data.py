"""Issue 19, items 1 and 8 on the PACKAGED PROD template: data that survives mistakes, hardened storage.

Built as `make package STAGE=prod` builds it (tests/unit/test_template.py's package_template, --template-only).
Every property here is also in infra/template.yaml, so the local stack (moto) deploys it too: moto accepts all
of them, and ignores PITR, the bucket policy, versioning and the lifecycle rules.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.unit.test_template import ROOT, package_template

STAGE = "prod"
# Tables that hold users' data (docs/deploy.md, "Data safety and retention"): PITR, deletion protection, Retain.
PROTECTED = {"ReportsTable": "reports", "LinesTable": "lines", "JobsTable": "jobs", "ResultsTable": "results",
             "EventsTable": "events"}
# Tables of no record: rebuilt (chunks from the job's plan), re-asked (vendor cache), or short-lived and harmful
# to restore (control locks and rate windows, idempotency records). Every table must be in one of the two.
UNPROTECTED = {"ChunksTable": "chunks", "VendorCacheTable": "vendor-cache", "ControlTable": "control",
               "IdempotencyTable": "idempotency"}
QUEUES = ("WorkQueue", "WorkDeadLetterQueue")


@pytest.fixture(scope="module")
def resources(tmp_path_factory) -> dict[str, Any]:
    built = package_template(STAGE, tmp_path_factory.mktemp("package") / STAGE)
    template = json.loads((built / "sam.json").read_text())
    assert template["Parameters"]["Prefix"]["Default"] == "reports-prod"
    return template["Resources"]


def _props(resources: dict[str, Any], logical_id: str) -> dict[str, Any]:
    return resources[logical_id]["Properties"]


def test_every_table_is_classified_as_protected_or_not(resources):
    tables = {k: v["Properties"]["TableName"]["Fn::Sub"].removeprefix("${Prefix}-")
              for k, v in resources.items() if v["Type"] == "AWS::DynamoDB::Table"}
    assert tables == {**PROTECTED, **UNPROTECTED}, "a new table needs a decision: protected or not (and why)"


@pytest.mark.parametrize("table", sorted(PROTECTED))
def test_user_data_tables_have_point_in_time_recovery_and_deletion_protection(resources, table):
    props = _props(resources, table)
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert props["DeletionProtectionEnabled"] is True


@pytest.mark.parametrize("logical_id", [*sorted(PROTECTED), "ResultsBucket"])
def test_user_data_tables_and_the_results_bucket_survive_a_stack_delete_or_a_replacement(resources, logical_id):
    assert resources[logical_id]["DeletionPolicy"] == "Retain"
    assert resources[logical_id]["UpdateReplacePolicy"] == "Retain"


@pytest.mark.parametrize("table", sorted(UNPROTECTED))
def test_tables_of_no_record_are_deleted_with_the_stack(resources, table):
    assert "DeletionPolicy" not in resources[table]
    assert not _props(resources, table).get("DeletionProtectionEnabled")


def test_results_bucket_refuses_plain_http(resources):
    (policy,) = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::S3::BucketPolicy"]
    assert policy["Bucket"] == {"Ref": "ResultsBucket"}
    (deny,) = [s for s in policy["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"]
    assert deny["Principal"] == "*" and deny["Action"] in ("s3:*", ["s3:*"])
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert {"Fn::GetAtt": ["ResultsBucket", "Arn"]} in deny["Resource"]  # the bucket's own calls...
    assert {"Fn::Sub": "${ResultsBucket.Arn}/*"} in deny["Resource"]  # ...and every object's


def test_results_bucket_is_encrypted_explicitly_with_a_bucket_key(resources):
    (rule,) = _props(resources, "ResultsBucket")["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
    assert rule["BucketKeyEnabled"] is True


def test_results_bucket_is_versioned_and_its_lifecycle_expires_old_versions_and_aborts_uploads(resources):
    bucket = _props(resources, "ResultsBucket")
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    rule, imports = bucket["LifecycleConfiguration"]["Rules"]
    assert rule["Status"] == "Enabled" and rule["ExpirationInDays"] == 30
    # An import's file is read within minutes of its upload: kept 2 days, not 30.
    assert (imports["Prefix"], imports["ExpirationInDays"], imports["Status"]) == ("imports/", 2, "Enabled")
    assert 1 <= rule["NoncurrentVersionExpiration"]["NoncurrentDays"] <= 30  # a restore window, not forever
    assert rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] <= 7
    assert all(bucket["PublicAccessBlockConfiguration"].values())


@pytest.mark.parametrize("queue", QUEUES)
def test_queues_are_encrypted_with_sqs_managed_keys(resources, queue):
    assert _props(resources, queue)["SqsManagedSseEnabled"] is True


def test_active_jobs_index_carries_only_what_the_reaper_reads_from_it(resources):
    from pynamodb.indexes import IncludeProjection

    from chalicelib.tables import ActiveIndex, Job

    (index,) = [i for i in _props(resources, "JobsTable")["GlobalSecondaryIndexes"] if i["IndexName"] == "byActive"]
    # Not ALL: heartbeatAt (its sort key) moves at every checkpoint, and each move rewrites the index entry.
    assert index["Projection"] == {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["chunkCount"]}
    assert [k["AttributeName"] for k in index["KeySchema"]] == ["activeStatus", "heartbeatAt"]
    # The PynamoDB model says the same (the reaper's filter reads chunkCount; the rest it reads by key).
    projection = ActiveIndex.Meta.projection
    assert isinstance(projection, IncludeProjection) and projection.non_key_attributes == ["chunkCount"]
    assert Job.chunk_count.attr_name == "chunkCount"


def test_lines_expire_after_their_month_and_report_configurations_never(resources):
    from pynamodb.attributes import TTLAttribute

    from chalicelib.lines.store import LINE_RETENTION_DAYS, line_expiry
    from chalicelib.tables import ExpenseLine, ReportConfig

    assert _props(resources, "LinesTable")["TimeToLiveSpecification"] == {"AttributeName": "expiresAt",
                                                                          "Enabled": True}
    assert ExpenseLine.expires_at.attr_name == "expiresAt"
    assert not [a for a in ReportConfig.get_attributes().values() if isinstance(a, TTLAttribute)]
    assert "TimeToLiveSpecification" not in _props(resources, "ReportsTable")
    assert LINE_RETENTION_DAYS >= 365  # a month can be reported on again for at least a year
    imported = datetime(2026, 3, 10, tzinfo=UTC)
    keep = timedelta(days=LINE_RETENTION_DAYS)
    assert line_expiry("2026-02", imported) == imported + keep  # imported after its month: from the import
    assert line_expiry("2026-03", imported) == datetime(2026, 4, 1, tzinfo=UTC) + keep  # from its month's end
    assert line_expiry("2026-12", imported) == datetime(2027, 1, 1, tzinfo=UTC) + keep


def test_the_retention_decisions_are_documented():
    from chalicelib.lines.store import LINE_RETENTION_DAYS

    docs = (ROOT / "docs" / "deploy.md").read_text()
    section = docs.split("## Data safety and retention", 1)[1].split("\n## ", 1)[0]
    for needle in (f"{LINE_RETENTION_DAYS} days", "--confirm-delete-prod", "point-in-time",
                   *PROTECTED.values(), *UNPROTECTED.values()):
        assert needle in section, needle


