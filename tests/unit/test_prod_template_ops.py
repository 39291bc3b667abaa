"""The packaged prod template is ready to operate (issue 19, items 3, 4, 6 canary, 7).

Built once with tests/unit/test_template.py's own builder (package_template, for the prod stage) and
checked for: alarms that can fire, each with a runbook entry in docs/operations.md; throttling, JSON access
logs, an optional WAF and reserved concurrency in front of the API; worker throttling that cannot push jobs
into the dead-letter queue; versions behind an alias with a canary that rolls back on alarms; scheduled
functions whose failures end somewhere an alarm watches.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.unit import test_template as base
from tests.unit.test_template import (
    FUNCTIONS,
    ROOT,
    default,
    package_template,
    props,
    resources_fixture,
    template_fixture,
)

STAGE = "prod"
OPERATIONS = ROOT / "docs" / "operations.md"
TOPIC = [{"Ref": "AlarmTopic"}]


def _fn(logical_id: str) -> list[dict[str, Any]]:
    return [{"Name": "FunctionName", "Value": {"Ref": logical_id}}]


def _queue(logical_id: str) -> list[dict[str, Any]]:
    return [{"Name": "QueueName", "Value": {"Fn::GetAtt": [logical_id, "QueueName"]}}]


def _table(logical_id: str) -> list[dict[str, Any]]:
    return [{"Name": "TableName", "Value": {"Ref": logical_id}}]


def _rule(function: str) -> list[dict[str, Any]]:
    """The rule SAM makes of a Chalice schedule: logical id <function><function>Event."""
    return [{"Name": "RuleName", "Value": {"Ref": f"{function}{function}Event"}}]


API = [{"Name": "ApiName", "Value": {"Ref": "Prefix"}}, {"Name": "Stage", "Value": "api"}]
# Alarm logical id -> every (namespace, metric, dimensions) it watches.
ALARMS: dict[str, list[tuple[str, str, list[dict[str, Any]]]]] = {
    "DeadLetterQueueAlarm": [("AWS/SQS", "NumberOfMessagesReceived", _queue("WorkDeadLetterQueue"))],
    "WorkInFlightAlarm": [("AWS/SQS", "ApproximateNumberOfMessagesNotVisible", _queue("WorkQueue"))],
    "WorkBacklogAlarm": [("AWS/SQS", "ApproximateAgeOfOldestMessage", _queue("WorkQueue"))],
    "FailedJobsAlarm": [("AsyncReports", "JobsFailed", [{"Name": "service", "Value": {"Ref": "Prefix"}}])],
    "ThrottlesAlarm": [("AWS/Lambda", "Throttles", _fn("APIHandler")), ("AWS/Lambda", "Throttles", _fn("ProcessWork"))],
    "ApiErrorsAlarm": [("AWS/Lambda", "Errors", _fn("APIHandler"))],
    "WorkerErrorsAlarm": [("AWS/Lambda", "Errors", _fn("ProcessWork"))],
    "DeadLetterHandlerErrorsAlarm": [("AWS/Lambda", "Errors", _fn("HandleDeadLetters"))],
    "ReaperErrorsAlarm": [("AWS/Lambda", "Errors", _fn("ReapStaleJobs"))],
    "ScheduledReportsErrorsAlarm": [("AWS/Lambda", "Errors", _fn("RunScheduledReports"))],
    "CacheWarmerErrorsAlarm": [("AWS/Lambda", "Errors", _fn("WarmVendorCache"))],
    "ReaperHeartbeatAlarm": [("AWS/Lambda", "Invocations", _fn("ReapStaleJobs"))],
    "WorkerDurationAlarm": [("AWS/Lambda", "Duration", _fn("ProcessWork"))],
    "Api5xxAlarm": [("AWS/ApiGateway", "5XXError", API)],
    "ApiLatencyAlarm": [("AWS/ApiGateway", "Latency", API)],
    "ReaperScheduleFailedAlarm": [("AWS/Events", "FailedInvocations", _rule("ReapStaleJobs"))],
    "ScheduledReportsScheduleFailedAlarm": [("AWS/Events", "FailedInvocations", _rule("RunScheduledReports"))],
    "CacheWarmerScheduleFailedAlarm": [("AWS/Events", "FailedInvocations", _rule("WarmVendorCache"))],
    "JobsTableThrottlesAlarm": [("AWS/DynamoDB", "ReadThrottleEvents", _table("JobsTable")),
                                ("AWS/DynamoDB", "WriteThrottleEvents", _table("JobsTable"))],
    "ControlTableThrottlesAlarm": [("AWS/DynamoDB", "ReadThrottleEvents", _table("ControlTable")),
                                   ("AWS/DynamoDB", "WriteThrottleEvents", _table("ControlTable"))],
    "JobsTableTransactionConflictsAlarm": [("AWS/DynamoDB", "TransactionConflict", _table("JobsTable"))],
    "ControlTableTransactionConflictsAlarm": [("AWS/DynamoDB", "TransactionConflict", _table("ControlTable"))],
    "ScheduledFailuresAlarm": [("AWS/SQS", "ApproximateNumberOfMessagesVisible", _queue("ScheduledFailuresQueue"))],
}
SCHEDULED = {"ReapStaleJobs", "RunScheduledReports", "WarmVendorCache"}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """test_template.py's builder (`python -m infra.package --template-only`), for the prod stage."""
    return package_template(STAGE, tmp_path_factory.mktemp("package") / STAGE)


# test_template.py's `template` and `resources`, over the prod build above.
template, resources = template_fixture, resources_fixture


def _alarms(resources: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v["Properties"] for k, v in resources.items() if v["Type"] == "AWS::CloudWatch::Alarm"}


def _watched(alarm: dict[str, Any]) -> list[tuple[str, str, list[dict[str, Any]]]]:
    if "MetricName" in alarm:
        return [(alarm["Namespace"], alarm["MetricName"], alarm.get("Dimensions", []))]
    return [(m["MetricStat"]["Metric"]["Namespace"], m["MetricStat"]["Metric"]["MetricName"],
             m["MetricStat"]["Metric"].get("Dimensions", [])) for m in alarm["Metrics"] if "MetricStat" in m]


def test_the_prod_template_lints_clean(built):
    from cfnlint.api import lint_file

    matches = lint_file(built / "sam.json")
    assert not matches, "\n".join(str(m) for m in matches)


# --- 3. alarms that can fire ----------------------------------------------------------------------------------


@pytest.mark.parametrize("logical_id", sorted(ALARMS))
def test_each_alarm_watches_its_metric_and_notifies_the_topic(resources, logical_id):
    alarm = _alarms(resources).get(logical_id)
    assert alarm, f"no alarm {logical_id}"
    assert sorted(_watched(alarm), key=repr) == sorted(ALARMS[logical_id], key=repr)
    assert alarm["AlarmActions"] == TOPIC and alarm["OKActions"] == TOPIC
    assert alarm["AlarmName"]["Fn::Sub"].startswith("${Prefix}-")
    assert f"docs/operations.md#{logical_id.lower()}" in alarm["AlarmDescription"]


def test_every_function_has_an_error_alarm(resources):
    errors = {dims[0]["Value"]["Ref"] for alarm in _alarms(resources).values()
              for namespace, metric, dims in _watched(alarm) if (namespace, metric) == ("AWS/Lambda", "Errors")}
    assert errors == {logical_id for logical_id, _, _ in FUNCTIONS.values()}


def test_the_dead_letter_alarm_counts_receives_not_visible_messages(resources):
    """The DLQ handler empties the queue within seconds: a visible count stays 0 while jobs die."""
    alarm = _alarms(resources)["DeadLetterQueueAlarm"]
    assert alarm["MetricName"] == "NumberOfMessagesReceived" and alarm["Statistic"] == "Sum"
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanThreshold", 0)
    visible = [k for k, a in _alarms(resources).items() for ns, metric, dims in _watched(a)
               if metric == "ApproximateNumberOfMessagesVisible" and dims == _queue("WorkDeadLetterQueue")]
    assert not visible, visible


def test_messages_stuck_in_flight_alarm_after_thirty_minutes(resources):
    alarm = _alarms(resources)["WorkInFlightAlarm"]
    assert alarm["Statistic"] == "Minimum" and alarm["Period"] * alarm["EvaluationPeriods"] >= 1800
    # More in flight than the workers can hold (batch size 1) is more than the workers are working on.
    assert alarm["Threshold"] == {"Ref": "WorkerMaxConcurrency"}
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"


def test_the_reaper_heartbeat_breaches_when_no_invocation_is_recorded(resources):
    alarm = _alarms(resources)["ReaperHeartbeatAlarm"]
    assert alarm["TreatMissingData"] == "breaching"
    assert (alarm["Statistic"], alarm["Period"] * alarm["EvaluationPeriods"]) == ("Sum", 900)
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("LessThanThreshold", 1)
    assert base.SCHEDULES["ReapStaleJobs"] == "rate(5 minutes)"  # three runs missed, not one


def test_only_the_heartbeat_treats_missing_data_as_breaching(resources):
    breaching = {k for k, a in _alarms(resources).items() if a.get("TreatMissingData") == "breaching"}
    assert breaching == {"ReaperHeartbeatAlarm"}


def test_api_alarms_name_the_api_by_its_deployed_name(template, resources):
    api = props(resources, "RestAPI")
    assert api["Name"] == {"Ref": "Prefix"}
    assert api["DefinitionBody"]["info"]["title"] == template["Parameters"]["Prefix"]["Default"] == "reports-prod"
    assert api["StageName"] == "api"
    latency = _alarms(resources)["ApiLatencyAlarm"]
    assert latency["ExtendedStatistic"] == "p99" and latency["Threshold"] == {"Ref": "ApiLatencyThresholdMs"}


def test_schedule_alarms_watch_the_rules_sam_makes_of_each_schedule(resources):
    for function in SCHEDULED:
        (event,) = props(resources, function)["Events"]
        rules = [dims[0]["Value"]["Ref"] for alarm in _alarms(resources).values()
                 for ns, metric, dims in _watched(alarm) if metric == "FailedInvocations"]
        assert f"{function}{event}" in rules, function  # SAM's rule logical id: function + event name


def test_worker_duration_alarm_is_at_80_percent_of_its_timeout(resources):
    alarm = _alarms(resources)["WorkerDurationAlarm"]
    (duration,) = [m for m in alarm["Metrics"] if "MetricStat" in m]
    (expression,) = [m for m in alarm["Metrics"] if "Expression" in m]
    assert duration["MetricStat"]["Stat"] in ("p99", "Maximum") and not duration["ReturnData"]
    assert expression["ReturnData"] and expression["Expression"] == {
        "Fn::Sub": f"100 * {duration['Id']} / (${{WorkerTimeoutSeconds}} * 1000)"}
    assert props(resources, "ProcessWork")["Timeout"] == {"Ref": "WorkerTimeoutSeconds"}
    assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (80, "GreaterThanThreshold")


def _headings(text: str) -> list[str]:
    return re.findall(r"^#{2,4}\s+(.+?)\s*$", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M), re.M)


def _entry(text: str, logical_id: str) -> str:
    """The runbook entry of an alarm: from its heading (the logical id) to the next heading."""
    start = re.search(rf"^### {logical_id}$", text, re.M)
    assert start, f"docs/operations.md has no heading ### {logical_id}"
    end = re.search(r"^#", text[start.end():], re.M)
    return text[start.end():start.end() + (end.start() if end else len(text))]


def test_every_alarm_has_a_runbook_entry_its_description_links(resources):
    """Headed by the alarm's logical id (the anchor its AlarmDescription links) and naming the alarm's name."""
    text = OPERATIONS.read_text()
    for logical_id, alarm in _alarms(resources).items():
        name = alarm["AlarmName"]["Fn::Sub"].removeprefix("${Prefix}-")
        assert f"`<prefix>-{name}`" in _entry(text, logical_id), f"{logical_id}: its entry does not name {name}"
        assert f"docs/operations.md#{logical_id.lower()}" in alarm["AlarmDescription"], logical_id


def test_each_runbook_entry_says_what_it_means_how_to_look_and_what_to_do(resources):
    text = OPERATIONS.read_text()
    for logical_id in _alarms(resources):
        entry = _entry(text, logical_id)
        for part in ("**Means**", "**Look**", "**Do**"):
            assert part in entry, f"{logical_id}: no {part}"


def test_the_runbook_has_the_procedures_the_entries_refer_to():
    text = OPERATIONS.read_text()
    headings = " ".join(_headings(text)).lower()
    for procedure in ("pause the workers", "redrive the dead-letter queue", "retry failed jobs", "rotate a secret",
                      "restore a table", "roll back"):
        assert procedure in headings, procedure
    assert "max-concurrency" in text or "MaximumConcurrency" in text  # pausing: the event source mapping
    assert "start-message-move-task" in text  # redrive
    assert "reports list --status Failed" in text and "reports retry" in text  # the CLI has both
    assert "SECRETS_MAX_AGE_SECONDS" in text and "restore-table-to-point-in-time" in text


def test_deploy_doc_links_the_runbook():
    assert "(operations.md)" in (ROOT / "docs" / "deploy.md").read_text()


# --- 4. something in front of the API -------------------------------------------------------------------------


def test_stage_throttling_is_set_from_parameters(template, resources):
    (setting,) = props(resources, "RestAPI")["MethodSettings"]
    assert (setting["ResourcePath"], setting["HttpMethod"]) == ("/*", "*")
    assert setting["ThrottlingRateLimit"] == {"Ref": "ApiThrottleRateLimit"}
    assert setting["ThrottlingBurstLimit"] == {"Ref": "ApiThrottleBurstLimit"}
    rate, burst = (int(default(template, setting[k])) for k in ("ThrottlingRateLimit", "ThrottlingBurstLimit"))
    assert 0 < rate <= burst


def test_access_logs_are_json_in_their_own_log_group(resources):
    setting = props(resources, "RestAPI")["AccessLogSetting"]
    assert setting["DestinationArn"] == {"Fn::GetAtt": ["ApiAccessLogGroup", "Arn"]}
    record = json.loads(setting["Format"])
    assert {"requestId", "status", "httpMethod", "resourcePath", "responseLatency", "ip"} <= set(record)
    assert record["requestId"] == "$context.requestId"
    group = props(resources, "ApiAccessLogGroup")
    assert group["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_a_waf_web_acl_is_associated_only_when_given(template, resources):
    assert template["Parameters"]["WebAclArn"]["Default"] == ""
    assert template["Conditions"]["HasWebAcl"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "WebAclArn"}, ""]}]}
    association = resources["ApiWebAclAssociation"]
    assert association["Type"] == "AWS::WAFv2::WebACLAssociation" and association["Condition"] == "HasWebAcl"
    assert association["Properties"]["WebACLArn"] == {"Ref": "WebAclArn"}
    arn, names = association["Properties"]["ResourceArn"]["Fn::Sub"]
    assert arn.endswith("::/restapis/${RestAPI}/stages/${Stage}") and names == {"Stage": {"Ref": "RestAPI.Stage"}}


def test_reserved_concurrency_keeps_the_workers_share(template, resources):
    worker = props(resources, "ProcessWork")
    assert worker["ReservedConcurrentExecutions"] == {"Ref": "WorkerMaxConcurrency"}
    api = props(resources, "APIHandler")["ReservedConcurrentExecutions"]
    assert api == {"Fn::If": ["HasApiReservedConcurrency", {"Ref": "ApiReservedConcurrency"}, {"Ref": "AWS::NoValue"}]}
    assert template["Conditions"]["HasApiReservedConcurrency"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "ApiReservedConcurrency"}, 0]}]}  # 0 would stop the API altogether


def test_worker_throttling_cannot_push_jobs_into_the_dead_letter_queue(template, resources):
    """The rule (docs/operations.md): the worker reserves exactly what its event source may invoke, so Lambda
    never throttles the poller's invocations (a throttled receive counts toward maxReceiveCount), and
    maxReceiveCount stays at least 5, as AWS advises for Lambda event sources."""
    worker = props(resources, "ProcessWork")
    (event,) = worker["Events"].values()
    assert worker["ReservedConcurrentExecutions"] == event["Properties"]["ScalingConfig"]["MaximumConcurrency"]
    receives = props(resources, "WorkQueue")["RedrivePolicy"]["maxReceiveCount"]
    assert int(default(template, receives)) >= 5
    for params in sorted((ROOT / "infra" / "params").glob("*.json")):
        values = json.loads(params.read_text())
        if "MaxReceiveCount" in values:
            assert int(values["MaxReceiveCount"]) >= 5, params.name
    assert "maxReceiveCount" in OPERATIONS.read_text()


# --- 6. canary deploys that roll back on the alarms -----------------------------------------------------------


@pytest.mark.parametrize("logical_id", sorted(v[0] for v in FUNCTIONS.values()))
def test_each_function_publishes_behind_an_alias_with_a_canary_that_rolls_back(resources, logical_id):
    function = props(resources, logical_id)
    assert function["AutoPublishAlias"] == "live"
    preference = function["DeploymentPreference"]
    assert preference["Type"] == "Canary10Percent5Minutes"
    alarms = _alarms(resources)
    refs = [alarm["Ref"] for alarm in preference["Alarms"]]
    assert refs and set(refs) <= set(alarms)
    watched = {(ns, metric, json.dumps(dims)) for ref in refs for ns, metric, dims in _watched(alarms[ref])}
    assert ("AWS/Lambda", "Errors", json.dumps(_fn(logical_id))) in watched, "rolls back on its own errors"


def test_other_stages_deploy_at_once():
    from infra.package import deployment_type

    assert deployment_type("prod") == "Canary10Percent5Minutes" and deployment_type("dev") == "AllAtOnce"


def test_the_api_invokes_the_alias(resources):
    api = props(resources, "RestAPI")["DefinitionBody"]
    uris = [m["x-amazon-apigateway-integration"]["uri"] for methods in api["paths"].values()
            for m in methods.values() if m.get("x-amazon-apigateway-integration", {}).get("type") == "aws_proxy"]
    assert uris
    for uri in uris:
        text, names = uri["Fn::Sub"]
        assert "${APIHandler.Arn}" not in text and names == {"FunctionAlias": {"Ref": "APIHandler.Alias"}}
    assert props(resources, "APIHandlerInvokePermission")["FunctionName"] == {"Ref": "APIHandler.Alias"}


# --- 7. scheduled functions fail visibly ----------------------------------------------------------------------

RETRIES = {"ReapStaleJobs": 0, "RunScheduledReports": 2, "WarmVendorCache": 2}


@pytest.mark.parametrize("function", sorted(RETRIES))
def test_each_scheduled_function_has_an_invoke_config(resources, function):
    configs = {k: v for k, v in resources.items() if v["Type"] == "AWS::Lambda::EventInvokeConfig"
               and v["Properties"]["FunctionName"] == {"Ref": function}}
    (config,) = configs.values()
    settings = config["Properties"]
    depends = config["DependsOn"] if isinstance(config["DependsOn"], list) else [config["DependsOn"]]
    assert settings["Qualifier"] == "live" and f"{function}Aliaslive" in depends  # the alias the rule invokes
    assert settings["MaximumRetryAttempts"] == RETRIES[function]
    period = {"rate(5 minutes)": 300, "rate(1 hour)": 3600}.get(base.SCHEDULES[function], 86400)
    assert 60 <= settings["MaximumEventAgeInSeconds"] <= min(period, 21600)  # never runs into the next run
    destination = settings.get("DestinationConfig", {}).get("OnFailure", {}).get("Destination")
    if RETRIES[function]:
        assert destination == {"Fn::GetAtt": ["ScheduledFailuresQueue", "Arn"]}
        assert "ScheduledFailuresSendPolicy" in depends  # Lambda checks the role may send there
    else:
        assert destination is None  # the reaper: its heartbeat and error alarms, and the next run


def test_the_on_failure_destination_is_writable_and_watched(resources):
    statements = [(s["Action"], s["Resource"], p["Properties"]["Roles"]) for p in resources.values()
                  if p["Type"] == "AWS::IAM::Policy" for s in p["Properties"]["PolicyDocument"]["Statement"]]
    assert (["sqs:SendMessage"], [{"Fn::GetAtt": ["ScheduledFailuresQueue", "Arn"]}],
            [{"Ref": "RunScheduledReportsRole"}, {"Ref": "WarmVendorCacheRole"}]) in statements
    queue = props(resources, "ScheduledFailuresQueue")
    assert queue["SqsManagedSseEnabled"] is True and queue["MessageRetentionPeriod"] == 1209600
    alarm = _alarms(resources)["ScheduledFailuresAlarm"]
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanThreshold", 0)
