"""The deployable template: what `make package` produces, checked offline.

The module generates it once with `python -m infra.package --template-only` (the same `chalice package`
run and merge as `make package`, with placeholder zips instead of the dependency download), lints it with
cfn-lint, and checks what cfn-lint cannot: partial batch responses and concurrency on the SQS event
sources, the redrive policy, visibility timeouts against the consumers' timeouts, TTL on every table whose
items expire, the schedules, the environment naming the stack's resources, one least-privilege policy
per function, and alarms and a dashboard that use the metric names the code emits.
"""

from __future__ import annotations

import atexit
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests import iam

ROOT = Path(__file__).resolve().parents[2]
STAGE = "dev"
FUNCTIONS = {  # Chalice handler name -> (function's logical id, its role's and log group's, function name suffix)
    "api_handler": ("APIHandler", "ApiHandler", "api"),
    "process_work": ("ProcessWork", "ProcessWork", "process-work"),
    "handle_dead_letters": ("HandleDeadLetters", "HandleDeadLetters", "handle-dead-letters"),
    "reap_stale_jobs": ("ReapStaleJobs", "ReapStaleJobs", "reap-stale-jobs"),
    "run_scheduled_reports": ("RunScheduledReports", "RunScheduledReports", "run-scheduled-reports"),
    "warm_vendor_cache": ("WarmVendorCache", "WarmVendorCache", "warm-vendor-cache"),
    "poll_provider_batches": ("PollProviderBatches", "PollProviderBatches", "poll-provider-batches"),
}
SCHEDULES = {"ReapStaleJobs": "rate(5 minutes)", "RunScheduledReports": "rate(1 hour)",
             "WarmVendorCache": "cron(0 2 * * ? *)", "PollProviderBatches": "rate(1 minute)"}
# Resource patterns that may contain a wildcard, and why. Anything else must name one resource.
WILDCARD_RESOURCES = {
    # X-Ray has no resource-level permissions: "*" is the only resource these actions accept.
    ("xray:PutTraceSegments", "*"), ("xray:PutTelemetryRecords", "*"),
}
WILDCARD_SUFFIXES = {
    # The streams of the function's own log group (their names are made up by Lambda).
    "logs": re.compile(r"^arn:aws:logs:[^:]+:\d{12}:log-group:/aws/lambda/[a-z0-9-]+:\*$"),
    # Result objects under results/ of the stage's bucket (keys are per job and version), and import files under
    # imports/ (one per import job).
    "s3": re.compile(r"^arn:aws:s3:::[a-z0-9-]+-results-\d{12}/(results|imports)/\*$"),
}


# stage -> a pristine copy of its first packaging in this process: six modules package dev or prod, and each
# packaging (a subprocess) costs about a second of the unit tier's budget.
_PACKAGED: dict[str, Path] = {}


def package_template(stage: str, out: Path) -> Path:
    """`python -m infra.package --stage STAGE --template-only --out OUT`; returns OUT (sam.json is in it).

    A stage is packaged once per test process; later calls get a copy of that packaging in OUT."""
    if stage in _PACKAGED:
        shutil.copytree(_PACKAGED[stage], out, dirs_exist_ok=True)
        return out
    done = subprocess.run([sys.executable, "-m", "infra.package", "--stage", stage, "--template-only", "--out",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(out.parent), "AWS_DEFAULT_REGION": "us-east-1"})
    assert done.returncode == 0, done.stderr[-3000:]
    keep = Path(tempfile.mkdtemp(prefix=f"packaged-{stage}-"))
    atexit.register(shutil.rmtree, keep, True)
    _PACKAGED[stage] = Path(shutil.copytree(out, keep / stage))
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return package_template(STAGE, tmp_path_factory.mktemp("package") / STAGE)


@pytest.fixture(scope="module", name="template")
def template_fixture(built: Path) -> dict[str, Any]:
    """The packaged template of whatever `built` a module defines (other template tests reuse this)."""
    return json.loads((built / "sam.json").read_text())


@pytest.fixture(scope="module", name="resources")
def resources_fixture(template) -> dict[str, Any]:
    return template["Resources"]


def props(resources: dict[str, Any], logical_id: str) -> dict[str, Any]:
    return resources[logical_id]["Properties"]


def default(template: dict[str, Any], value: Any) -> Any:
    """A {"Ref": parameter} resolved to the parameter's default; anything else as it is."""
    if isinstance(value, dict) and set(value) == {"Ref"} and value["Ref"] in template["Parameters"]:
        return template["Parameters"][value["Ref"]]["Default"]
    return value


def test_cfn_lint_finds_nothing(built):
    from cfnlint.api import lint_file

    matches = lint_file(built / "sam.json")
    assert not matches, "\n".join(str(m) for m in matches)


def test_overlay_extends_only_resources_that_exist(template):
    """A partial resource in infra/deploy.yaml (no Type) must extend one Chalice or infra/template.yaml creates:
    a renamed logical id would otherwise leave a half resource behind."""
    from local.deploy import load_template

    overlay = load_template(ROOT / "infra" / "deploy.yaml")["Resources"]
    for logical_id, resource in overlay.items():
        if "Type" not in resource:  # the Type comes from what it extends
            assert "Type" in template["Resources"][logical_id], f"{logical_id} extends nothing"
    for function in ("ProcessWork", "HandleDeadLetters"):
        events = overlay[function]["Properties"]["Events"]
        assert set(events) <= set(template["Resources"][function]["Properties"]["Events"]), function


@pytest.mark.parametrize("function, queue", [("ProcessWork", "WorkQueue"),
                                             ("HandleDeadLetters", "WorkDeadLetterQueue")])
def test_sqs_event_sources_report_partial_failures_with_a_concurrency_cap(template, resources, function, queue):
    (event,) = props(resources, function)["Events"].values()
    source = event["Properties"]
    assert event["Type"] == "SQS"
    # Without it Lambda ignores the handler's batchItemFailures and deletes the whole batch.
    assert source["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    cap = default(template, source["ScalingConfig"]["MaximumConcurrency"])
    assert 2 <= int(cap) <= 1000
    assert source["Queue"] == {"Fn::Sub": f"${{{queue}.Arn}}"}  # the resource itself: the mapping waits for it


def test_worker_concurrency_cap_is_a_parameter_with_lambdas_minimum(template, resources):
    source = next(iter(props(resources, "ProcessWork")["Events"].values()))["Properties"]
    assert source["ScalingConfig"]["MaximumConcurrency"] == {"Ref": "WorkerMaxConcurrency"}
    assert template["Parameters"]["WorkerMaxConcurrency"]["MinValue"] == 2


def test_work_queue_redrives_to_the_dead_letter_queue(template, resources):
    policy = props(resources, "WorkQueue")["RedrivePolicy"]
    assert policy["deadLetterTargetArn"] == {"Fn::GetAtt": ["WorkDeadLetterQueue", "Arn"]}
    assert int(default(template, policy["maxReceiveCount"])) == 5
    assert props(resources, "WorkDeadLetterQueue")["MessageRetentionPeriod"] == 1209600  # 14 days, the most


def test_visibility_timeouts_are_six_times_their_consumers_timeout(template, resources):
    worker = props(resources, "ProcessWork")
    assert worker["Timeout"] == {"Ref": "WorkerTimeoutSeconds"}
    longest = template["Parameters"]["WorkerTimeoutSeconds"]["MaxValue"]
    assert int(default(template, worker["Timeout"])) <= longest
    assert props(resources, "WorkQueue")["VisibilityTimeout"] >= 6 * longest
    assert iam.CONFIG["lambda_functions"]["process_work"]["lambda_timeout"] <= longest
    assert props(resources, "WorkDeadLetterQueue")["VisibilityTimeout"] >= 6 * props(resources, "HandleDeadLetters")[
        "Timeout"]


def test_every_table_whose_items_expire_has_ttl_on_that_attribute(template, resources):
    from pynamodb.attributes import TTLAttribute

    from chalicelib import tables
    from chalicelib.settings import get_settings

    prefix = get_settings().prefix
    expiring: dict[str, set[str]] = {}
    for model in vars(tables).values():
        if isinstance(model, type) and issubclass(model, tables.Model) and model is not tables.Model:
            ttl = [a.attr_name for a in model.get_attributes().values() if isinstance(a, TTLAttribute)]
            if ttl:
                expiring.setdefault(model.Meta.table_name.removeprefix(f"{prefix}-"), set()).update(ttl)
    expiring["idempotency"] = {"expiration"}  # Powertools idempotency records
    ttl_by_table = {}
    for resource in resources.values():
        if resource["Type"] == "AWS::DynamoDB::Table":
            name = resource["Properties"]["TableName"]["Fn::Sub"].removeprefix("${Prefix}-")
            spec = resource["Properties"].get("TimeToLiveSpecification") or {}
            ttl_by_table[name] = spec.get("AttributeName") if spec.get("Enabled") else None
    for table, attributes in expiring.items():
        assert table in ttl_by_table, f"no table {table} in the template"
        assert {ttl_by_table[table]} == attributes, f"{table}: TTL on {ttl_by_table[table]}, items use {attributes}"


def test_schedules_have_their_documented_expressions(resources):
    for function, expression in SCHEDULES.items():
        (event,) = props(resources, function)["Events"].values()
        assert event == {"Type": "Schedule", "Properties": {"Schedule": expression}}


def test_functions_are_named_and_read_the_stacks_resources_not_guesses(template, resources):
    prefix = template["Parameters"]["Prefix"]["Default"]
    assert template["Parameters"]["Prefix"]["AllowedValues"] == [prefix]  # queue names are built into the code
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    assert env["WORK_QUEUE_URL"] == {"Ref": "WorkQueue"} and env["RESULTS_BUCKET"] == {"Ref": "ResultsBucket"}
    assert env["JWT_SECRET_PARAM"] == {"Fn::Sub": "/${Prefix}/jwt-secret"}
    assert env["OPENAI_API_KEY_PARAM"] == {"Fn::Sub": "/${Prefix}/openai-api-key"}
    assert not {"JWT_SECRET", "OPENAI_API_KEY"} & set(env), "secrets come from SSM, never the template"
    for logical_id, short, suffix in FUNCTIONS.values():
        function = props(resources, logical_id)
        assert function["FunctionName"] == {"Fn::Sub": f"${{Prefix}}-{suffix}"}
        assert function["Environment"]["Variables"]["APP_PREFIX"] == prefix
        assert function["Tracing"] == "Active"
        assert function["Layers"] == [{"Ref": "ManagedLayer"}] and function["CodeUri"] == "./deployment.zip"
        # Its own log group, created first: the role may write there and nowhere else, and cannot create groups.
        assert props(resources, f"{short}LogGroup")["LogGroupName"] == {"Fn::Sub": f"/aws/lambda/${{Prefix}}-{suffix}"}
        assert resources[logical_id]["DependsOn"] == f"{short}LogGroup"
    # The API function keeps the X-Ray SDK out of its cold start.
    assert props(resources, "APIHandler")["Environment"]["Variables"]["POWERTOOLS_TRACE_DISABLED"] == "true"


def test_each_function_has_its_own_policy_and_chalice_generates_none(resources):
    assert iam.CONFIG["autogen_policy"] is False
    for handler, (logical_id, short, _) in FUNCTIONS.items():
        role = props(resources, f"{short}Role")
        assert props(resources, logical_id)["Role"] == {"Fn::GetAtt": [f"{short}Role", "Arn"]}
        (policy,) = role["Policies"]
        assert policy["PolicyDocument"] == iam.policy(handler), handler
        assert "ManagedPolicyArns" not in role


@pytest.mark.parametrize("handler", sorted(FUNCTIONS))
def test_policies_use_no_wildcard_where_a_specific_action_or_resource_exists(handler):
    suffix = FUNCTIONS[handler][2]
    for action, resource in iam.grants(handler, "reports-dev"):
        assert "*" not in action, f"{handler}: wildcard action {action}"
        if (action, resource) in WILDCARD_RESOURCES or "*" not in resource:
            continue
        service = action.split(":", 1)[0]
        assert service in WILDCARD_SUFFIXES and WILDCARD_SUFFIXES[service].match(resource), \
            f"{handler}: {action} on {resource}: name the resource"
        if service == "logs":
            assert resource.endswith(f"/aws/lambda/reports-dev-{suffix}:*"), f"{handler} may only log to its own group"


def test_only_the_sqs_consumers_may_receive_and_only_from_their_queue():
    consumers = {"process_work": "reports-dev-work", "handle_dead_letters": "reports-dev-work-dlq"}
    for handler in FUNCTIONS:
        queues = {r.rsplit(":", 1)[-1] for a, r in iam.grants(handler, "reports-dev") if a == "sqs:ReceiveMessage"}
        assert queues == ({consumers[handler]} if handler in consumers else set()), handler


def test_only_the_functions_that_need_a_secret_may_read_it():
    readers = {handler: {r.rsplit("parameter/", 1)[-1] for a, r in iam.grants(handler, "reports-dev")
                         if a.startswith("ssm:")} for handler in FUNCTIONS}
    assert readers == {"api_handler": {"reports-dev/jwt-secret"}, "process_work": {"reports-dev/openai-api-key"},
                       "warm_vendor_cache": {"reports-dev/openai-api-key"}, "handle_dead_letters": set(),
                       "poll_provider_batches": {"reports-dev/openai-api-key"},
                       "reap_stale_jobs": set(), "run_scheduled_reports": set()}


def _alarms(resources: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v["Properties"] for k, v in resources.items() if v["Type"] == "AWS::CloudWatch::Alarm"}


def test_alarms_cover_dead_letters_failed_jobs_throttles_and_worker_errors(resources):
    alarms = _alarms(resources)
    watched = {(p.get("Namespace"), p.get("MetricName")) for p in alarms.values()}
    watched |= {(m["MetricStat"]["Metric"]["Namespace"], m["MetricStat"]["Metric"]["MetricName"])
                for p in alarms.values() for m in p.get("Metrics", []) if "MetricStat" in m}
    assert {("AWS/SQS", "ApproximateNumberOfMessagesVisible"), ("AsyncReports", "JobsFailed"),
            ("AWS/Lambda", "Throttles"), ("AWS/Lambda", "Errors")} <= watched
    assert alarms["DeadLetterQueueAlarm"]["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": ["WorkDeadLetterQueue", "QueueName"]}}]
    assert alarms["WorkerErrorsAlarm"]["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": "ProcessWork"}}]
    for name, alarm in alarms.items():
        assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}], name
        # A heartbeat alarm fires on silence: no reaper invocation recorded is the failure it looks for.
        assert alarm["TreatMissingData"] == ("breaching" if name == "ReaperHeartbeatAlarm" else "notBreaching"), name


def test_alarms_and_dashboard_use_the_metric_names_the_code_emits(resources):
    from chalicelib import observability

    used = {p["MetricName"] for p in _alarms(resources).values() if p.get("Namespace") == "AsyncReports"}
    body_template, _ = props(resources, "Dashboard")["DashboardBody"]["Fn::Sub"]
    body = json.loads(re.sub(r"\$\{[^}]+\}", "x", body_template))
    for widget in body["widgets"]:
        namespace = name = None
        for row in widget["properties"]["metrics"]:
            cells = [c for c in row if isinstance(c, str)]  # [namespace, name, dims...]; "." repeats, "..." all
            if not cells or cells[0] == "...":
                continue
            namespace = namespace if cells[0] == "." else cells[0]
            name = name if cells[1] == "." else cells[1]
            if namespace == "AsyncReports":
                used.add(name)
    assert used, "the dashboard shows no application metric"
    assert used <= observability.METRICS, used - observability.METRICS
    assert {observability.JOBS_FAILED, observability.MODEL_RATE_LIMITED, observability.CACHE_HITS} <= used


def test_the_api_function_does_not_import_what_only_workers_need():
    probe = ("import sys, app; print(sorted(m for m in ('openai', 'chalicelib.worker', 'aws_xray_sdk.core', "
             "'chalicelib.categorize.provider') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "APP_PREFIX": "reports-dev", "AWS_DEFAULT_REGION": "us-east-1",
                               "AWS_LAMBDA_FUNCTION_NAME": "reports-dev-api", "POWERTOOLS_TRACE_DISABLED": "true"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


# --- API Gateway's own answers ------------------------------------------------------------------------------

GATEWAY_STATUSES = {"MISSING_AUTHENTICATION_TOKEN": 404, "RESOURCE_NOT_FOUND": 404, "DEFAULT_4XX": 400,
                    "DEFAULT_5XX": 500, "THROTTLED": 429, "REQUEST_TOO_LARGE": 413, "UNSUPPORTED_MEDIA_TYPE": 415,
                    "ACCESS_DENIED": 403, "BAD_REQUEST_BODY": 400}


def _gateway_responses(resources: dict[str, Any]) -> dict[str, Any]:
    # In the REST API's definition, so that a change to them is a change of the definition and SAM deploys the
    # stage again; an AWS::ApiGateway::GatewayResponse resource is not live until some later deployment.
    assert not [k for k, v in resources.items() if v["Type"] == "AWS::ApiGateway::GatewayResponse"]
    return props(resources, "RestAPI")["DefinitionBody"]["x-amazon-apigateway-gateway-responses"]


@pytest.mark.parametrize("response_type, status", sorted(GATEWAY_STATUSES.items()))
def test_api_gateways_own_errors_are_registered_problems_that_echo_nothing(resources, response_type, status):
    from chalicelib.api import problem_types

    response = _gateway_responses(resources)[response_type]
    assert response["statusCode"] == str(status)
    headers = {k.removeprefix("gatewayresponse.header."): v for k, v in response["responseParameters"].items()}
    assert headers["Content-Type"] == "'application/problem+json'"
    # As the app's own answers (the CorsAllowOrigin parameter, tests/unit/test_deploy_params.py): a browser reads them.
    assert headers.pop("Access-Control-Allow-Origin") == {"Fn::Sub": "'${CorsAllowOrigin}'"}
    for value in headers.values():  # static values only, never a request's header (method.request.*)
        assert value.startswith("'") and value.endswith("'"), value
    assert set(response["responseTemplates"]) == {"application/json", "application/problem+json"}
    for template in response["responseTemplates"].values():
        assert "$" not in template and "#" not in template, "no $context.error.message, $input or other variable"
        body = json.loads(template)
        assert set(body) == {"type", "title", "status", "detail"} and body["status"] == status
        assert body["type"] in problem_types.URIS
        kind = problem_types.get(body["type"].removeprefix(problem_types.PREFIX))
        assert (kind.status, kind.title) == (status, body["title"])
        assert body["detail"] and "token" not in body["detail"].lower()


def test_unknown_paths_are_404_and_every_gateway_response_is_a_registered_problem(resources):
    from infra.package import GATEWAY_RESPONSES

    responses = _gateway_responses(resources)
    assert set(responses) == set(GATEWAY_RESPONSES) >= set(GATEWAY_STATUSES)
    body = json.loads(responses["MISSING_AUTHENTICATION_TOKEN"]["responseTemplates"]["application/json"])
    assert body["type"] == "urn:reports:problem:not-found"
    for response in responses.values():
        status = int(response["statusCode"])
        assert json.loads(response["responseTemplates"]["application/json"])["status"] == status
        if status in (429, 503):
            assert response["responseParameters"]["gatewayresponse.header.Retry-After"] == "'5'"
