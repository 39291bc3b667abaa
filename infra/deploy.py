"""`make deploy STAGE=…`: deploy build/package/<stage> (from `make package`) with CloudFormation, via boto3.

    python -m infra.deploy [--stage dev] [--stack-name NAME] [--bucket ARTIFACTS] [--parameter Key=Value ...]
                           [--params-file infra/params/<stage>.json] [--allow-replace LOGICAL_ID ...]
    python -m infra.deploy --stage dev --delete        # delete the stack; data tables and bucket are retained
    python -m infra.deploy --stage prod --delete --confirm-delete-prod prod   # prod: termination-protected

What it does, in the order the AWS CLI's `cloudformation package` + `deploy` would:
1. sets the template's parameters: infra/params/<stage>.json, overridden by `--parameter`; every other
   parameter keeps the stack's current value (UsePreviousValue) or, on a new stack, the template default;
2. checks the credentials and the stage's settings (preflight): the JWT secret exists in SSM (unless
   JwtJwksUrl is given), no placeholder value is left, and a production stage has a JWKS issuer and
   audience and someone subscribed to the alarm topic;
3. uploads deployment.zip, layer-deployment.zip and the template to an artifacts bucket (created if missing:
   `<prefix>-artifacts-<account>-<region>`, private, versioned), pointing CodeUri/ContentUri at them;
4. creates a change set (CAPABILITY_IAM, CAPABILITY_AUTO_EXPAND for the SAM transform), prints its changes,
   and stops (deleting it) if it would replace or remove a stateful resource (a table, bucket, queue, user
   pool...) not named by `--allow-replace`; else executes it, waits, and prints the stack's outputs
   (EndpointURL is the API's base URL).
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
PARAMS_DIR = ROOT / "infra" / "params"
# Stages that serve users: Cognito (JWKS) tokens only, and someone must receive the alarms.
PRODUCTION_STAGES = frozenset({"prod"})
# The parameters that subscribe someone to the alarm topic (infra/deploy.yaml): a production stage needs one.
ALARM_SUBSCRIPTION_PARAMETERS = ("AlarmEmail",)
JWKS_PARAMETERS = ("JwtJwksUrl", "JwtIssuer", "JwtAudience")
# A value the checked-in parameter files carry until the operator sets the real one: never deployed.
PLACEHOLDER = "CHANGE-ME"
# Resources whose replacement or removal loses data (or everyone's sign-in): never without --allow-replace.
STATEFUL_TYPES = frozenset({
    "AWS::DynamoDB::Table", "AWS::DynamoDB::GlobalTable", "AWS::S3::Bucket", "AWS::SQS::Queue",
    "AWS::Cognito::UserPool", "AWS::Cognito::UserPoolClient", "AWS::SNS::Topic", "AWS::Logs::LogGroup",
    "AWS::KMS::Key", "AWS::SecretsManager::Secret", "AWS::SSM::Parameter", "AWS::RDS::DBInstance",
    "AWS::RDS::DBCluster", "AWS::EFS::FileSystem", "AWS::Kinesis::Stream"})


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


# --- parameters: the checked-in file, the command line, the stack's current values ------------------------

def params_path(stage: str) -> Path:
    return PARAMS_DIR / f"{stage}.json"


def load_params_file(path: Path) -> dict[str, str]:
    """{"Key": value} of a parameter file (keys starting with "_" are comments); values as strings."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise DeployError(f"{path} is missing: every stage keeps its parameters there (docs/deploy.md)") from err
    except ValueError as err:
        raise DeployError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise DeployError(f"{path} must be a JSON object of parameter names to values")
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in data.items() if not k.startswith("_")}


def parse_parameters(items: list[str]) -> dict[str, str]:
    """`--parameter KEY=VALUE` values."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DeployError(f"--parameter {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def merge_parameters(template_parameters: dict[str, Any], file_values: dict[str, str],
                     cli_values: dict[str, str], source: str = "the parameter file") -> dict[str, str]:
    """The values given on this run: the file's, overridden by the command line's; unknown keys refused."""
    for where, values in ((source, file_values), ("--parameter", cli_values)):
        unknown = sorted(set(values) - set(template_parameters))
        if unknown:
            raise DeployError(f"{where}: {', '.join(unknown)} not a parameter of the template "
                              f"(known: {', '.join(sorted(template_parameters))})")
    return {**file_values, **cli_values}


def stack_parameters(template_parameters: dict[str, Any], given: dict[str, str],
                     previous: dict[str, str] | None) -> list[dict[str, Any]]:
    """The change set's Parameters: every template parameter, so none silently falls back to its default.

    Given on this run: its value. Otherwise, on an existing stack that has it: UsePreviousValue. Otherwise
    (a new stack, or a parameter new to the template): the template's default."""
    out: list[dict[str, Any]] = []
    for key, spec in template_parameters.items():
        if key in given:
            out.append({"ParameterKey": key, "ParameterValue": given[key]})
        elif previous is not None and key in previous:
            out.append({"ParameterKey": key, "UsePreviousValue": True})
        elif "Default" in spec:
            out.append({"ParameterKey": key, "ParameterValue": str(spec["Default"])})
        else:
            raise DeployError(f"parameter {key} has no default: set it in the stage's parameter file")
    return out


def effective_values(template_parameters: dict[str, Any], given: dict[str, str],
                     previous: dict[str, str] | None) -> dict[str, str]:
    """What the stack will run with, as stack_parameters sends it."""
    out = {}
    for entry in stack_parameters(template_parameters, given, previous):
        key = entry["ParameterKey"]
        out[key] = (previous or {}).get(key, "") if entry.get("UsePreviousValue") else entry["ParameterValue"]
    return out


def stage_problems(stage: str, values: dict[str, str], placeholders: bool = True) -> list[str]:
    """What a stage's parameter values lack: for a production stage, JWKS authentication (issuer and
    audience, so only this pool's tokens for this app client pass) and an alarm subscription."""
    problems = []
    if placeholders:
        problems += [f"{key} is still a placeholder ({value!r}): set the real value"
                     for key, value in sorted(values.items()) if PLACEHOLDER in value]
    if stage in PRODUCTION_STAGES:
        missing = [key for key in JWKS_PARAMETERS if not values.get(key)]
        if missing:
            problems.append(f"{', '.join(missing)} not set: a production stage accepts only tokens of an identity "
                            "provider (JwtJwksUrl, JwtIssuer, JwtAudience), never HS256 tokens of a shared secret")
        for key in ("JwtJwksUrl", "JwtIssuer"):
            if values.get(key) and not values[key].startswith("https://"):
                problems.append(f"{key} must be an https:// URL, not {values[key]!r}")
        if not any(values.get(key) for key in ALARM_SUBSCRIPTION_PARAMETERS):
            problems.append(f"no alarm subscription: set {' or '.join(ALARM_SUBSCRIPTION_PARAMETERS)}, or the "
                            "alarm topic notifies nobody")
    return problems


def check_params_file(stage: str, template_parameters: dict[str, Any]) -> list[str]:
    """`make package`'s check of infra/params/<stage>.json (placeholders are for `make deploy` to refuse)."""
    path = params_path(stage)
    if not path.exists():
        return [f"{path} is missing"] if stage in PRODUCTION_STAGES else []
    try:
        given = merge_parameters(template_parameters, load_params_file(path), {}, str(path))
    except DeployError as err:
        return [str(err)]
    return stage_problems(stage, effective_values(template_parameters, given, None), placeholders=False)


def preflight(ssm: Any, prefix: str, parameters: dict[str, str], stage: str | None = None) -> list[str]:
    """Problems that would make the deployed stage fail at its first request (raised), and notes.

    `parameters` are the values the stack will run with; `stage` adds stage_problems."""
    problems = stage_problems(stage, parameters) if stage else []
    if problems:
        where = params_path(stage)
        raise DeployError(f"stage {stage} is not ready to deploy:\n  - " + "\n  - ".join(problems)
                          + f"\nSet them in {where.relative_to(ROOT) if where.is_relative_to(ROOT) else where}"
                          " (or --parameter KEY=VALUE).")
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
           parameters: dict[str, str] | None = None, session: Any = None, *, params_file: Path | None = None,
           allow_replace: tuple[str, ...] | list[str] = ()) -> dict[str, str]:
    """Deploy build/package/<stage>; `parameters` (the command line's) override the stage's parameter file."""
    session = session or boto3.session.Session()
    region = session.region_name or "us-east-1"
    prefix = stage_prefix(stage)
    stack = stack or prefix
    package_dir = ROOT / "build" / "package" / stage
    if not (package_dir / "sam.json").exists():
        raise DeployError(f"{package_dir}/sam.json is missing: run `make package STAGE={stage}` first")
    sam = json.loads((package_dir / "sam.json").read_text())
    params_file = params_file or params_path(stage)
    given = merge_parameters(sam.get("Parameters") or {}, load_params_file(params_file), parameters or {},
                             str(params_file))
    account = session.client("sts").get_caller_identity()["Account"]
    s3, cfn = session.client("s3"), session.client("cloudformation")
    current = _existing_stack(cfn, stack)
    previous = None if current is None else {
        p["ParameterKey"]: p.get("ParameterValue", "") for p in current.get("Parameters") or []}
    values = effective_values(sam.get("Parameters") or {}, given, previous)
    for note in preflight(session.client("ssm"), prefix, values, stage):
        print(f"note: {note}")
    bucket = bucket or artifacts_bucket(prefix, account, region)
    ensure_bucket(s3, bucket, region)
    template = with_artifacts(sam, s3, bucket, stack, package_dir)
    template_path = package_dir / "packaged.json"
    template_path.write_text(json.dumps(template, indent=1))
    template_key = upload(s3, bucket, stack, template_path)
    exists = current is not None
    name = f"{stack}-{int(time.time())}"
    cfn.create_change_set(
        StackName=stack, ChangeSetName=name, ChangeSetType="UPDATE" if exists else "CREATE",
        TemplateURL=f"https://{bucket}.s3.{region}.amazonaws.com/{template_key}", Capabilities=CAPABILITIES,
        Parameters=stack_parameters(sam.get("Parameters") or {}, given, previous),
        Tags=[{"Key": "app", "Value": "async-reports"}, {"Key": "stage", "Value": stage}])
    try:
        cfn.get_waiter("change_set_create_complete").wait(StackName=stack, ChangeSetName=name,
                                                          WaiterConfig={"Delay": 5, "MaxAttempts": 120})
    except WaiterError as err:
        reason = cfn.describe_change_set(StackName=stack, ChangeSetName=name).get("StatusReason", "")
        if "didn't contain changes" in reason or "No updates" in reason:
            print("no changes to deploy")
            protect_stack(cfn, stack, stage)  # a prod stack deployed before termination protection gets it too
            cfn.delete_change_set(StackName=stack, ChangeSetName=name)
            return outputs(cfn, stack)
        raise DeployError(f"change set failed: {reason}") from err
    changes = change_set_changes(cfn, stack, name)
    print(f"change set {name} on {stack} ({'update' if exists else 'create'}): {len(changes)} change(s)")
    for line in format_changes(changes):
        print(f"  {line}")
    blocked, unused = guard_changes(changes, allow_replace)
    for logical_id in unused:
        print(f"note: --allow-replace {logical_id}: this change set neither replaces nor removes it")
    if blocked:
        cfn.delete_change_set(StackName=stack, ChangeSetName=name)
        raise DeployError(
            "refusing to deploy: the change set would replace or remove stateful resources, and a replaced or "
            "removed table, bucket, queue or user pool loses its data (a Retain policy only orphans it):\n  - "
            + "\n  - ".join(blocked) + "\nThe change set was deleted and nothing changed. If this is intended "
            "(the data is backed up or disposable), deploy again with "
            + " ".join(f"--allow-replace {c['LogicalResourceId']}" for c in _blocking(changes, allow_replace))
            + "; otherwise change the template so that it updates these resources in place.")
    print(f"deploying {stack} ({'update' if exists else 'create'}) ...")
    cfn.execute_change_set(StackName=stack, ChangeSetName=name)
    waiter = "stack_update_complete" if exists else "stack_create_complete"
    try:
        cfn.get_waiter(waiter).wait(StackName=stack, WaiterConfig={"Delay": 10, "MaxAttempts": 180})
    except WaiterError as err:
        raise DeployError(f"stack {stack} did not deploy; see its events in the CloudFormation console "
                          "(docs/deploy.md, Rollback)") from err
    protect_stack(cfn, stack, stage)
    return outputs(cfn, stack)


# --- the change set guard --------------------------------------------------------------------------------

def change_set_changes(cfn: Any, stack: str, name: str) -> list[dict[str, Any]]:
    """Every resource change of the change set (all pages)."""
    changes, token = [], None
    while True:
        page = cfn.describe_change_set(StackName=stack, ChangeSetName=name, **({"NextToken": token} if token else {}))
        changes += [c["ResourceChange"] for c in page.get("Changes") or [] if "ResourceChange" in c]
        token = page.get("NextToken")
        if not token:
            return changes


def _recreating(change: dict[str, Any]) -> list[str]:
    """The properties whose change recreates the resource."""
    return sorted({d["Target"].get("Name") or d["Target"].get("Attribute", "")
                   for d in change.get("Details") or [] if d.get("Target", {}).get("RequiresRecreation")
                   in ("Always", "Conditionally")} - {""})


def format_changes(changes: list[dict[str, Any]]) -> list[str]:
    """One line per change: action, logical id, type, replacement (and the properties that cause it)."""
    lines = []
    for c in changes:
        replacement = c.get("Replacement") or "-"
        why = _recreating(c) if replacement in ("True", "Conditional") else []
        lines.append(f"{c.get('Action', '?'):<8} {c.get('LogicalResourceId', '?'):<36} "
                     f"{c.get('ResourceType', '?'):<40} replacement={replacement}"
                     + (f" ({', '.join(why)})" if why else ""))
    return lines


def _destroys(change: dict[str, Any]) -> bool:
    return change.get("ResourceType") in STATEFUL_TYPES and (
        change.get("Action") == "Remove" or change.get("Replacement") in ("True", "Conditional"))


def _blocking(changes: list[dict[str, Any]], allow_replace: tuple[str, ...] | list[str]) -> list[dict[str, Any]]:
    return [c for c in changes if _destroys(c) and c.get("LogicalResourceId") not in set(allow_replace)]


def guard_changes(changes: list[dict[str, Any]],
                  allow_replace: tuple[str, ...] | list[str] = ()) -> tuple[list[str], list[str]]:
    """(the changes that destroy a stateful resource not allowed by --allow-replace, described;
    the --allow-replace ids that match no such change)."""
    blocked = []
    for c in _blocking(changes, allow_replace):
        what = "removed" if c.get("Action") == "Remove" else f"replaced (Replacement={c.get('Replacement')}" + (
            f", because of {', '.join(_recreating(c))})" if _recreating(c) else ")")
        blocked.append(f"{c.get('LogicalResourceId')} ({c.get('ResourceType')}) would be {what}")
    destroyed = {c.get("LogicalResourceId") for c in changes if _destroys(c)}
    return blocked, [i for i in allow_replace if i not in destroyed]


def _existing_stack(cfn: Any, stack: str) -> dict[str, Any] | None:
    """The stack's description, or None when there is none (or only a never-executed change set's)."""
    try:
        found = cfn.describe_stacks(StackName=stack)["Stacks"][0]
    except ClientError as err:
        # Only "does not exist" means no stack: a throttle or a denied call must not turn an update into a create.
        if "does not exist" in str(err.response.get("Error", {}).get("Message", "")):
            return None
        raise
    return None if found["StackStatus"] == "REVIEW_IN_PROGRESS" else found


def _stack_exists(cfn: Any, stack: str) -> bool:
    return _existing_stack(cfn, stack) is not None


def outputs(cfn: Any, stack: str) -> dict[str, str]:
    found = cfn.describe_stacks(StackName=stack)["Stacks"][0].get("Outputs", [])
    return {o["OutputKey"]: o["OutputValue"] for o in found}


# --- data safety: termination protection, what a delete keeps (docs/deploy.md, "Data safety and retention") ---

def protect_stack(cfn: Any, stack: str, stage: str) -> None:
    """A production stack cannot be deleted until `--delete --confirm-delete-prod <stage>` lifts this."""
    if stage in PRODUCTION_STAGES:
        cfn.update_termination_protection(StackName=stack, EnableTerminationProtection=True)


def retained(prefix: str, account: str = "<account>", region: str = "<region>") -> list[str]:
    """What a stack delete keeps (DeletionPolicy: Retain in infra/template.yaml or infra/deploy.yaml)."""
    from infra.package import OVERLAY, TEMPLATE
    from local.deploy import load_template

    resources: dict[str, dict[str, Any]] = {}
    for path in (TEMPLATE, OVERLAY):
        for logical_id, resource in (load_template(path).get("Resources") or {}).items():
            resources.setdefault(logical_id, {}).update(resource)
    kept = []
    for logical_id, resource in resources.items():
        if resource.get("DeletionPolicy") != "Retain":
            continue
        kind = str(resource.get("Type", "")).rsplit("::", 1)[-1].lower()
        name = next((v for k, v in (resource.get("Properties") or {}).items() if k in ("TableName", "BucketName")),
                    logical_id)
        name = name.get("Fn::Sub", logical_id) if isinstance(name, dict) else name
        for var, value in (("${Prefix}", prefix), ("${AWS::AccountId}", account), ("${AWS::Region}", region)):
            name = name.replace(var, value)
        kept.append(f"{kind} {name}")
    return sorted(kept)


def delete(stage: str, stack: str | None = None, session: Any = None, confirm: str | None = None) -> None:
    """Delete the stack; the tables holding users' data and the results bucket are retained, not deleted.

    A production stage is refused unless `confirm` repeats its name (--confirm-delete-prod <stage>); its
    termination protection is then lifted first.
    """
    prefix = stage_prefix(stage)
    stack = stack or prefix
    if stage in PRODUCTION_STAGES and confirm != stage:
        raise DeployError(
            f"refusing to delete the production stage {stage} (stack {stack}): pass --confirm-delete-prod "
            f"{stage} to confirm. Deleting it keeps (retained, with their data): "
            f"{', '.join(retained(prefix))}; everything else (functions, API, queues and their messages) is gone.")
    session = session or boto3.session.Session()
    account = session.client("sts").get_caller_identity()["Account"]
    kept = retained(prefix, account, session.region_name or "us-east-1")
    print(f"deleting {stack}; kept (retained, with their data): {', '.join(kept)}")
    cfn = session.client("cloudformation")
    if stage in PRODUCTION_STAGES:
        cfn.update_termination_protection(StackName=stack, EnableTerminationProtection=False)
    try:
        cfn.delete_stack(StackName=stack)
        cfn.get_waiter("stack_delete_complete").wait(StackName=stack, WaiterConfig={"Delay": 10, "MaxAttempts": 180})
    except Exception:
        if stage in PRODUCTION_STAGES:  # a prod stack that is still there must not stay unprotected
            cfn.update_termination_protection(StackName=stack, EnableTerminationProtection=True)
        raise
    print(f"deleted {stack}; kept: {', '.join(kept)}, the artifacts bucket and SSM parameters "
          "(docs/deploy.md says how to remove them)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.deploy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", default="dev")
    parser.add_argument("--stack-name")
    parser.add_argument("--bucket", help="artifacts bucket (default <prefix>-artifacts-<account>-<region>)")
    parser.add_argument("--parameter", action="append", default=[], metavar="KEY=VALUE",
                        help="a template parameter, over the parameter file's value (repeatable)")
    parser.add_argument("--params-file", type=Path, help="the stage's parameters (default infra/params/<stage>.json)")
    parser.add_argument("--allow-replace", action="append", default=[], metavar="LOGICAL_ID",
                        help="let the change set replace or remove this stateful resource (repeatable)")
    parser.add_argument("--delete", action="store_true",
                        help="delete the stack (its data tables and results bucket are retained)")
    parser.add_argument("--confirm-delete-prod", metavar="STAGE",
                        help="with --delete on a production stage: its name again, to confirm")
    args = parser.parse_args(argv)
    try:
        if args.delete:
            delete(args.stage, args.stack_name, confirm=args.confirm_delete_prod)
            return 0
        params = parse_parameters(args.parameter)
        for key, value in deploy(args.stage, args.stack_name, args.bucket, params, params_file=args.params_file,
                                 allow_replace=args.allow_replace).items():
            print(f"{key:<22} {value}")
    except DeployError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
