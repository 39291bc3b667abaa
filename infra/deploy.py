"""`make deploy STAGE=…`: deploy build/package/<stage> (from `make package`) with CloudFormation, via boto3.

    python -m infra.deploy [--stage dev] [--stack-name NAME] [--bucket ARTIFACTS] [--parameter Key=Value ...]
    python -m infra.deploy --stage dev --delete        # empty the results bucket, delete the stack

What it does, in the order the AWS CLI's `cloudformation package` + `deploy` would:
1. checks the credentials, and that the stage's JWT secret exists in SSM (unless JwtJwksUrl is given);
2. uploads deployment.zip, layer-deployment.zip and the template to an artifacts bucket (created if missing:
   `<prefix>-artifacts-<account>-<region>`, private, versioned), pointing CodeUri/ContentUri at them;
3. creates a change set (CAPABILITY_IAM, CAPABILITY_AUTO_EXPAND for the SAM transform), executes it, waits,
   and prints the stack's outputs (EndpointURL is the API's base URL).
Needs AWS credentials with rights to create the stack's resources; never run by `make test`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError, WaiterError

from infra.package import ROOT, stage_prefix

CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"]


class DeployError(RuntimeError):
    """The deployment cannot go on; the message says what to do."""


def artifacts_bucket(prefix: str, account: str, region: str) -> str:
    return f"{prefix}-artifacts-{account}-{region}"[:63]


def ensure_bucket(s3: Any, bucket: str, region: str) -> None:
    try:
        s3.head_bucket(Bucket=bucket)
        return
    except ClientError as err:
        if err.response["Error"]["Code"] not in ("404", "NoSuchBucket", "NotFound"):
            raise DeployError(f"artifacts bucket {bucket} exists but is not usable: {err}") from err
    kwargs = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    s3.create_bucket(Bucket=bucket, **kwargs)
    s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True, "RestrictPublicBuckets": True})
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})


def upload(s3: Any, bucket: str, key_prefix: str, path: Path) -> str:
    """Upload under a content-addressed key (an unchanged zip is not uploaded again); returns the key."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:32]
    key = f"{key_prefix}/{digest}{path.suffix}"
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError:
        s3.upload_file(str(path), bucket, key)
    return key


def with_artifacts(template: dict[str, Any], s3: Any, bucket: str, key_prefix: str, package_dir: Path) -> dict:
    """The template with every local CodeUri / ContentUri uploaded and replaced by its S3 location."""
    out = json.loads(json.dumps(template))
    for resource in out["Resources"].values():
        props = resource.get("Properties") or {}
        for field in ("CodeUri", "ContentUri"):
            value = props.get(field)
            if isinstance(value, str) and not value.startswith("s3://"):
                key = upload(s3, bucket, key_prefix, (package_dir / value).resolve())
                props[field] = {"Bucket": bucket, "Key": key} if field == "CodeUri" else f"s3://{bucket}/{key}"
    return out


def preflight(ssm: Any, prefix: str, parameters: dict[str, str]) -> list[str]:
    """Problems that would make the deployed stage fail at its first request, and notes."""
    notes = []
    if not parameters.get("JwtJwksUrl"):
        try:
            ssm.get_parameter(Name=f"/{prefix}/jwt-secret")
        except ClientError as err:
            if err.response["Error"]["Code"] == "ParameterNotFound":
                raise DeployError(f"SSM parameter /{prefix}/jwt-secret is missing. Create it first:\n"
                                  f"  aws ssm put-parameter --name /{prefix}/jwt-secret --type SecureString "
                                  "--value \"$(openssl rand -base64 48)\"") from err
            raise
    try:
        ssm.get_parameter(Name=f"/{prefix}/openai-api-key")
    except ClientError as err:
        if err.response["Error"]["Code"] != "ParameterNotFound":
            raise
        notes.append(f"no /{prefix}/openai-api-key in SSM: jobs will use the offline rules categorizer")
    return notes


def deploy(stage: str, stack: str | None = None, bucket: str | None = None,
           parameters: dict[str, str] | None = None, session: Any = None) -> dict[str, str]:
    session = session or boto3.session.Session()
    region = session.region_name or "us-east-1"
    prefix, parameters = stage_prefix(stage), parameters or {}
    stack = stack or prefix
    package_dir = ROOT / "build" / "package" / stage
    if not (package_dir / "sam.json").exists():
        raise DeployError(f"{package_dir}/sam.json is missing: run `make package STAGE={stage}` first")
    account = session.client("sts").get_caller_identity()["Account"]
    for note in preflight(session.client("ssm"), prefix, parameters):
        print(f"note: {note}")
    s3, cfn = session.client("s3"), session.client("cloudformation")
    bucket = bucket or artifacts_bucket(prefix, account, region)
    ensure_bucket(s3, bucket, region)
    template = with_artifacts(json.loads((package_dir / "sam.json").read_text()), s3, bucket, stack, package_dir)
    template_path = package_dir / "packaged.json"
    template_path.write_text(json.dumps(template, indent=1))
    template_key = upload(s3, bucket, stack, template_path)
    exists = _stack_exists(cfn, stack)
    name = f"{stack}-{int(time.time())}"
    cfn.create_change_set(
        StackName=stack, ChangeSetName=name, ChangeSetType="UPDATE" if exists else "CREATE",
        TemplateURL=f"https://{bucket}.s3.{region}.amazonaws.com/{template_key}", Capabilities=CAPABILITIES,
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        Tags=[{"Key": "app", "Value": "async-reports"}, {"Key": "stage", "Value": stage}])
    try:
        cfn.get_waiter("change_set_create_complete").wait(StackName=stack, ChangeSetName=name,
                                                          WaiterConfig={"Delay": 5, "MaxAttempts": 120})
    except WaiterError as err:
        reason = cfn.describe_change_set(StackName=stack, ChangeSetName=name).get("StatusReason", "")
        if "didn't contain changes" in reason or "No updates" in reason:
            print("no changes to deploy")
            return outputs(cfn, stack)
        raise DeployError(f"change set failed: {reason}") from err
    print(f"deploying {stack} ({'update' if exists else 'create'}) ...")
    cfn.execute_change_set(StackName=stack, ChangeSetName=name)
    waiter = "stack_update_complete" if exists else "stack_create_complete"
    try:
        cfn.get_waiter(waiter).wait(StackName=stack, WaiterConfig={"Delay": 10, "MaxAttempts": 180})
    except WaiterError as err:
        raise DeployError(f"stack {stack} did not deploy; see its events in the CloudFormation console") from err
    return outputs(cfn, stack)


def _stack_exists(cfn: Any, stack: str) -> bool:
    try:
        status = cfn.describe_stacks(StackName=stack)["Stacks"][0]["StackStatus"]
    except ClientError:
        return False
    return status != "REVIEW_IN_PROGRESS"


def outputs(cfn: Any, stack: str) -> dict[str, str]:
    found = cfn.describe_stacks(StackName=stack)["Stacks"][0].get("Outputs", [])
    return {o["OutputKey"]: o["OutputValue"] for o in found}


def delete(stage: str, stack: str | None = None, session: Any = None) -> None:
    """Empty the results bucket (CloudFormation cannot delete a bucket with objects), then delete the stack."""
    session = session or boto3.session.Session()
    prefix = stage_prefix(stage)
    stack = stack or prefix
    account = session.client("sts").get_caller_identity()["Account"]
    bucket = session.resource("s3").Bucket(f"{prefix}-results-{account}")
    try:
        bucket.object_versions.delete()
    except ClientError as err:
        if err.response["Error"]["Code"] != "NoSuchBucket":
            raise
    cfn = session.client("cloudformation")
    cfn.delete_stack(StackName=stack)
    cfn.get_waiter("stack_delete_complete").wait(StackName=stack, WaiterConfig={"Delay": 10, "MaxAttempts": 180})
    print(f"deleted {stack}; the artifacts bucket and SSM parameters are kept")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.deploy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", default="dev")
    parser.add_argument("--stack-name")
    parser.add_argument("--bucket", help="artifacts bucket (default <prefix>-artifacts-<account>-<region>)")
    parser.add_argument("--parameter", action="append", default=[], metavar="KEY=VALUE",
                        help="a template parameter, e.g. AlarmEmail=ops@example.com (repeatable)")
    parser.add_argument("--delete", action="store_true", help="empty the results bucket and delete the stack")
    args = parser.parse_args(argv)
    try:
        if args.delete:
            delete(args.stage, args.stack_name)
            return 0
        params = dict(p.split("=", 1) for p in args.parameter)
        for key, value in deploy(args.stage, args.stack_name, args.bucket, params).items():
            print(f"{key:<22} {value}")
    except DeployError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
