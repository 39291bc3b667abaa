"""Deploy infra/template.yaml into an AWS endpoint (moto's server locally) through CloudFormation.

`deploy(endpoint_url, prefix)` creates the stack `{prefix}-infra` or, when it already exists, attaches to it
(safe when two processes race), makes sure TTL is on for every table that declares it, verifies the SES sender
(SES_FROM), and returns the stack outputs plus the environment variables the app reads (see
`chalicelib/settings.py`).

CLI: `python -m local.deploy [--prefix P]` deploys into $AWS_ENDPOINT_URL and prints `export KEY=VALUE` lines,
so `eval "$(python -m local.deploy)"` points a shell at the stack.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import boto3
import yaml
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.settings import Settings  # reads nothing at import

log = logging.getLogger("local.deploy")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_PATH = PROJECT_ROOT / "infra" / "template.yaml"
CHALICE_CONFIG_PATH = PROJECT_ROOT / ".chalice" / "config.json"
DEFAULT_PREFIX = "reports-dev"
DEFAULT_REGION = "us-east-1"
DEFAULT_STAGE = "dev"

_OK = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_ROLLBACK_COMPLETE", "IMPORT_COMPLETE"}
_BOTO_CONFIG = Config(connect_timeout=3, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"})


class DeployError(RuntimeError):
    """The stack could not be created or did not reach a usable state in time."""


# --- template --------------------------------------------------------------------------------------------


class _CfnLoader(yaml.SafeLoader):
    """YAML loader that accepts CloudFormation short-form tags (!Sub, !Ref, !GetAtt...) as plain data."""


def _cfn_tag(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if tag_suffix == "Ref" else f"Fn::{tag_suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if tag_suffix == "GetAtt" and isinstance(value, str):
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


_CfnLoader.add_multi_constructor("!", _cfn_tag)


def load_template(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    """The template as data; short-form intrinsic functions become their long form."""
    return yaml.load(path.read_text(), Loader=_CfnLoader)  # a SafeLoader subclass: no arbitrary objects


def ttl_attributes(template: dict[str, Any]) -> dict[str, str]:
    """Logical id -> TTL attribute name, for every table whose template enables TimeToLiveSpecification."""
    found: dict[str, str] = {}
    for logical_id, resource in (template.get("Resources") or {}).items():
        if resource.get("Type") != "AWS::DynamoDB::Table":
            continue
        spec = (resource.get("Properties") or {}).get("TimeToLiveSpecification") or {}
        if spec.get("Enabled") in (True, "true", "True") and spec.get("AttributeName"):
            found[logical_id] = str(spec["AttributeName"])
    return found


# --- chalice stage / prefix ----------------------------------------------------------------------------


def stage_environment(stage: str, config_path: Path = CHALICE_CONFIG_PATH) -> dict[str, str]:
    """The environment variables `chalice local --stage STAGE` forces on the app (top level, then stage).

    Chalice quirk: `chalice local` *overwrites* os.environ with these (CLIFactory.load_chalice_app does
    `environ.update(config.environment_variables)`), so an APP_PREFIX exported in the shell loses against the
    stage's. A stage that is not declared in config.json is accepted and only applies the top-level variables.
    """
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError):
        return {}
    env = dict(config.get("environment_variables") or {})
    env.update(((config.get("stages") or {}).get(stage) or {}).get("environment_variables") or {})
    return {str(k): str(v) for k, v in env.items()}


def resolve_prefix(stage: str | None = None) -> str:
    """The APP_PREFIX the whole local stack must use: the one `chalice local --stage` will force, else $APP_PREFIX.

    API (chalice local), worker and scheduler must agree on it, even when they run in separate processes.
    """
    stage = stage or os.environ.get("CHALICE_STAGE") or DEFAULT_STAGE
    forced = stage_environment(stage).get("APP_PREFIX")
    explicit = os.environ.get("APP_PREFIX")
    if forced and explicit and explicit != forced:
        log.warning("APP_PREFIX=%s is ignored: chalice stage %r sets APP_PREFIX=%s (set CHALICE_STAGE to change it)",
                    explicit, stage, forced)
    return forced or explicit or DEFAULT_PREFIX


# --- AWS ---------------------------------------------------------------------------------------------------


def stack_name(prefix: str) -> str:
    return f"{prefix}-infra"


def _client(service: str, endpoint_url: str, region: str) -> Any:
    session = boto3.session.Session(region_name=region)
    if session.get_credentials() is None:
        # Nothing in the environment or profile: moto accepts any credentials.
        session = boto3.session.Session(region_name=region, aws_access_key_id="testing",
                                        aws_secret_access_key="testing")
    return session.client(service, endpoint_url=endpoint_url, config=_BOTO_CONFIG)


def _describe(cfn: Any, name: str) -> dict[str, Any] | None:
    try:
        stacks = cfn.describe_stacks(StackName=name)["Stacks"]
    except ClientError as err:
        if "does not exist" in str(err):
            return None
        raise
    live = [s for s in stacks if not s["StackStatus"].startswith("DELETE")]
    return live[0] if live else None


def _wait_for_stack(cfn: Any, name: str, deadline: float) -> dict[str, Any]:
    delay = 0.1
    while True:
        stack = _describe(cfn, name)
        status = stack["StackStatus"] if stack else "MISSING"
        if status in _OK:
            return stack  # type: ignore[return-value]
        if status.endswith("FAILED") or "ROLLBACK" in status:
            reason = (stack or {}).get("StackStatusReason", "")
            raise DeployError(f"stack {name} is {status}: {reason}")
        if time.monotonic() > deadline:
            raise DeployError(f"stack {name} did not reach CREATE_COMPLETE in time (last status {status})")
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def _enable_ttl(ddb: Any, cfn: Any, name: str, template: dict[str, Any]) -> list[str]:
    """Turn TTL on for the tables that declare it. Moto quirk: CloudFormation ignores TimeToLiveSpecification."""
    wanted = ttl_attributes(template)
    if not wanted:
        return []
    physical = {r["LogicalResourceId"]: r["PhysicalResourceId"]
                for r in cfn.list_stack_resources(StackName=name)["StackResourceSummaries"]}
    enabled = []
    for logical_id, attribute in wanted.items():
        table = physical.get(logical_id)
        if not table:
            raise DeployError(f"stack {name} has no resource {logical_id}")
        current = ddb.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
        if current.get("TimeToLiveStatus") in ("ENABLED", "ENABLING"):
            continue
        try:
            ddb.update_time_to_live(TableName=table,
                                    TimeToLiveSpecification={"Enabled": True, "AttributeName": attribute})
        except ClientError as err:
            if "already enabled" not in str(err):  # another process won the race
                raise
        enabled.append(table)
    return enabled


def _verify_sender(sesv2: Any, sender: str) -> None:
    """Make `sender` an SES identity. Moto quirk: it refuses to send from an address no identity covers, and
    creating the identity is all it takes to verify it (the real SES also needs a DNS record or a click)."""
    address = parseaddr(sender)[1] or sender
    try:
        sesv2.create_email_identity(EmailIdentity=address)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") != "AlreadyExistsException":
            raise


@contextlib.contextmanager
def _deploy_lock(deadline: float) -> Iterator[None]:
    """Serialize the deploys of processes of this machine.

    Moto quirk: CreateStack is not atomic. Two concurrent calls can both pass its "already exists" check; the
    loser then fails half-way (a DynamoDB ResourceInUseException, or an HTML 500 page that botocore cannot
    parse) and may leave a broken second stack of the same name. AlreadyExistsException alone is not enough.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: rely on AlreadyExists handling only
        yield
        return
    # One lock file for every local deploy (they take a second or two): per-endpoint files would pile up in
    # /tmp, since every test run starts servers on fresh ports, and unlinking flock files is racy.
    path = Path(tempfile.gettempdir()) / f"local-deploy-{getattr(os, 'getuid', lambda: 0)()}.lock"
    with open(path, "a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DeployError(f"another process holds the deploy lock {path}") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


IMPORT_PREFIX, IMPORT_SUFFIX = "imports/", ".csv"  # chalicelib/lines/uploads.py names import files so


def _notify_imports(s3: Any, sqs: Any, bucket: str, queue_url: str) -> None:
    """The template's NotificationConfiguration, which moto's CloudFormation ignores: an import's file arriving
    in the results bucket sends S3's ObjectCreated event to the work queue. Idempotent (a put replaces it)."""
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={"QueueConfigurations": [{
        "Id": "import-uploads", "QueueArn": arn, "Events": ["s3:ObjectCreated:*"],
        "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": IMPORT_PREFIX},
                                           {"Name": "suffix", "Value": IMPORT_SUFFIX}]}}}]})


def deploy(endpoint_url: str, prefix: str, *, region: str | None = None, timeout_seconds: float = 60.0,
           parameters: dict[str, str] | None = None, template_path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    """Create (or attach to) the stack `{prefix}-infra` at endpoint_url.

    Returns {"stack_name", "created", "outputs": {OutputKey: value}, "env": {VAR: value}}; `env` holds
    APP_PREFIX, AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, WORK_QUEUE_URL, DLQ_URL, RESULTS_BUCKET and SES_FROM.
    """
    region = region or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or DEFAULT_REGION
    ses_from = os.environ.get("SES_FROM") or Settings.ses_from
    deadline = time.monotonic() + timeout_seconds
    cfn = _client("cloudformation", endpoint_url, region)
    name = stack_name(prefix)
    template = load_template(template_path)
    created = False
    with _deploy_lock(deadline):
        stack = _describe(cfn, name)
        if stack is None:
            params = {"Prefix": prefix, **(parameters or {})}
            try:
                cfn.create_stack(StackName=name, TemplateBody=template_path.read_text(),
                                 Parameters=[{"ParameterKey": k, "ParameterValue": str(v)} for k, v in params.items()])
                created = True
                log.info("creating stack %s at %s", name, endpoint_url)
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") != "AlreadyExistsException":
                    raise
                log.info("stack %s is being created by another process; waiting for it", name)
            except BotoCoreError as err:
                # A racing CreateStack from another machine (see _deploy_lock): use the stack if one appears.
                time.sleep(0.5)
                if _describe(cfn, name) is None:
                    raise DeployError(f"creating stack {name} failed: {err}") from err
                log.warning("creating stack %s failed (%s); another process created it: waiting for it", name, err)
        else:
            log.info("attaching to existing stack %s at %s", name, endpoint_url)
        stack = _wait_for_stack(cfn, name, deadline)
        _enable_ttl(_client("dynamodb", endpoint_url, region), cfn, name, template)
        _verify_sender(_client("sesv2", endpoint_url, region), ses_from)

    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs") or []}
    missing = {"WorkQueueUrl", "DeadLetterQueueUrl", "ResultsBucketName"} - outputs.keys()
    if missing:
        raise DeployError(f"stack {name} lacks outputs {sorted(missing)}")
    # Moto quirk: the queue URLs in the outputs are https://sqs.<region>.amazonaws.com/..., not the endpoint's.
    # boto3 sends SQS calls to endpoint_url anyway, but give the app the URLs the endpoint itself reports.
    sqs = _client("sqs", endpoint_url, region)
    work_url = sqs.get_queue_url(QueueName=outputs["WorkQueueUrl"].rstrip("/").rsplit("/", 1)[-1])["QueueUrl"]
    dlq_url = sqs.get_queue_url(QueueName=outputs["DeadLetterQueueUrl"].rstrip("/").rsplit("/", 1)[-1])["QueueUrl"]
    _notify_imports(_client("s3", endpoint_url, region), sqs, outputs["ResultsBucketName"], work_url)
    env = {
        "APP_PREFIX": prefix,
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_DEFAULT_REGION": region,
        "WORK_QUEUE_URL": work_url,
        "DLQ_URL": dlq_url,
        "RESULTS_BUCKET": outputs["ResultsBucketName"],
        "SES_FROM": ses_from,
    }
    return {"stack_name": name, "created": created, "outputs": outputs, "env": env}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.deploy", description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", help="resource name prefix (default: the chalice stage's APP_PREFIX)")
    parser.add_argument("--stage", default=None, help="chalice stage whose APP_PREFIX to use (default $CHALICE_STAGE "
                                                      "or dev)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for CREATE_COMPLETE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("botocore").setLevel(logging.WARNING)
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        print("AWS_ENDPOINT_URL is not set: start the local stack (make run) or moto's server first.",
              file=sys.stderr)
        return 2
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    try:
        result = deploy(endpoint, args.prefix or resolve_prefix(args.stage), timeout_seconds=args.timeout)
    except (DeployError, ClientError, BotoCoreError) as err:
        print(f"deploy failed: {err}", file=sys.stderr)
        return 1
    print(f"# stack {result['stack_name']} ({'created' if result['created'] else 'attached'})", file=sys.stderr)
    for key, value in result["env"].items():
        print(f"export {key}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
