"""infra/deploy.py's parameters, preflight and change-set guard, against a stub CloudFormation client that
records its calls (issue 19, items 2, 5 and 6), and the parameters of the packaged prod template.

A redeploy keeps its settings: infra/params/<stage>.json, overridden by --parameter, and UsePreviousValue for
every other parameter of an existing stack (the template default on a new one). A production stage deploys
only with JWKS authentication and an alarm subscription. A change set that would replace or remove a stateful
resource is printed, deleted and refused unless --allow-replace names the resource.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from infra import deploy, package
from tests.unit.test_template import package_template

ROOT = Path(__file__).resolve().parents[2]
PARAMETERS = {  # a small template's parameters: what deploy() reads from sam.json
    "Prefix": {"Type": "String", "Default": "reports-dev"},
    "WorkerMaxConcurrency": {"Type": "Number", "Default": 10},
    "OpenAIRequestsPerMinute": {"Type": "String", "Default": ""},
    "OpenAITokensPerMinute": {"Type": "String", "Default": ""},
    "AlarmEmail": {"Type": "String", "Default": ""},
    "JwtJwksUrl": {"Type": "String", "Default": ""},
    "JwtIssuer": {"Type": "String", "Default": ""},
    "JwtAudience": {"Type": "String", "Default": ""},
    "CorsAllowOrigin": {"Type": "String", "Default": "*"},
}
PROD_AUTH = {"JwtJwksUrl": "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_abc/.well-known/jwks.json",
             "JwtIssuer": "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_abc", "JwtAudience": "client123"}


# --- stubs ----------------------------------------------------------------------------------------------------

def _not_found(operation: str, code: str = "ValidationError") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "does not exist"}}, operation)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def named(self, name: str) -> list[dict[str, Any]]:
        return [kwargs for called, kwargs in self.calls if called == name]


class StubCloudFormation(Recorder):
    """describe_stacks / create / describe / delete / execute_change_set and waiters, recorded."""

    def __init__(self, previous: dict[str, str] | None = None, changes: list[dict[str, Any]] = ()) -> None:
        super().__init__()
        self.previous, self.changes = previous, list(changes)
        self.exists = previous is not None

    def describe_stacks(self, **kwargs):
        self.calls.append(("describe_stacks", kwargs))
        if not self.exists:
            raise _not_found("DescribeStacks")
        return {"Stacks": [{"StackName": kwargs["StackName"], "StackStatus": "UPDATE_COMPLETE",
                            "Parameters": [{"ParameterKey": k, "ParameterValue": v}
                                           for k, v in (self.previous or {}).items()],
                            "Outputs": [{"OutputKey": "EndpointURL", "OutputValue": "https://api.example/api/"}]}]}

    def create_change_set(self, **kwargs):
        self.calls.append(("create_change_set", kwargs))
        return {"Id": "arn:change-set", "StackId": "arn:stack"}

    def describe_change_set(self, **kwargs):
        self.calls.append(("describe_change_set", kwargs))
        half = len(self.changes) // 2  # two pages, as a long change set comes
        if "NextToken" not in kwargs:
            return {"Status": "CREATE_COMPLETE", "NextToken": "page2",
                    "Changes": [{"Type": "Resource", "ResourceChange": c} for c in self.changes[:half]]}
        return {"Status": "CREATE_COMPLETE", "Changes": [{"Type": "Resource", "ResourceChange": c}
                                                         for c in self.changes[half:]]}

    def delete_change_set(self, **kwargs):
        self.calls.append(("delete_change_set", kwargs))

    def execute_change_set(self, **kwargs):
        self.calls.append(("execute_change_set", kwargs))
        self.exists = True

    def update_termination_protection(self, **kwargs):
        self.calls.append(("update_termination_protection", kwargs))

    def get_waiter(self, name):
        recorder = self

        class Waiter:
            def wait(self, **kwargs):
                recorder.calls.append((f"wait:{name}", kwargs))
        return Waiter()


class StubS3(Recorder):
    def head_bucket(self, **kwargs):
        self.calls.append(("head_bucket", kwargs))

    def head_object(self, **kwargs):
        raise _not_found("HeadObject", "404")

    def upload_file(self, *args):
        self.calls.append(("upload_file", {"args": args}))


class StubSsm(Recorder):
    def get_parameter(self, **kwargs):
        self.calls.append(("get_parameter", kwargs))
        return {"Parameter": {"Name": kwargs["Name"], "Value": "x"}}


class StubSession:
    region_name = "eu-west-1"

    def __init__(self, cfn: StubCloudFormation) -> None:
        self.cfn, self.s3, self.ssm = cfn, StubS3(), StubSsm()

    def client(self, name: str):
        if name == "sts":
            return type("Sts", (), {"get_caller_identity": lambda self: {"Account": "123456789012"}})()
        return {"cloudformation": self.cfn, "s3": self.s3, "ssm": self.ssm}[name]


@pytest.fixture
def packaged(tmp_path, monkeypatch):
    """build/package/<stage>/sam.json of a small template under a temporary ROOT; returns a params-file writer."""
    monkeypatch.setattr(deploy, "ROOT", tmp_path)
    for stage in ("dev", "prod"):
        out = tmp_path / "build" / "package" / stage
        out.mkdir(parents=True)
        (out / "sam.json").write_text(json.dumps({"Parameters": PARAMETERS, "Resources": {}}))

    def params_file(values: dict[str, Any], name: str = "stage.json") -> Path:
        path = tmp_path / name
        path.write_text(json.dumps({"_comment": "test", **values}))
        return path
    return params_file


def _sent(cfn: StubCloudFormation) -> dict[str, dict[str, Any]]:
    (call,) = cfn.named("create_change_set")
    return {p["ParameterKey"]: {k: v for k, v in p.items() if k != "ParameterKey"} for p in call["Parameters"]}


def _change(logical_id: str, resource_type: str, action: str = "Modify", replacement: str = "False",
            recreate: str | None = None) -> dict[str, Any]:
    details = [{"Target": {"Attribute": "Properties", "Name": recreate, "RequiresRecreation": "Always"}}] \
        if recreate else []
    return {"Action": action, "LogicalResourceId": logical_id, "ResourceType": resource_type,
            "Replacement": replacement, "Details": details}


# --- item 2: a redeploy keeps its settings ---------------------------------------------------------------------

def test_params_file_values_are_overridden_by_the_command_line(packaged):
    cfn = StubCloudFormation(previous={"WorkerMaxConcurrency": "7", "AlarmEmail": "ops@team.example"})
    path = packaged({"WorkerMaxConcurrency": 20, "OpenAIRequestsPerMinute": "500"})
    deploy.deploy("dev", session=StubSession(cfn), params_file=path, parameters={"OpenAIRequestsPerMinute": "900"})
    sent = _sent(cfn)
    assert sent["WorkerMaxConcurrency"] == {"ParameterValue": "20"}  # the file's (a JSON number, sent as text)
    assert sent["OpenAIRequestsPerMinute"] == {"ParameterValue": "900"}  # the command line wins over the file
    assert "_comment" not in sent


def test_an_update_sends_use_previous_value_for_every_parameter_given_by_neither(packaged):
    previous = {k: "" for k in PARAMETERS if k != "OpenAITokensPerMinute"}  # the stack predates OpenAITokensPerMinute
    previous.update(AlarmEmail="ops@team.example", WorkerMaxConcurrency="7", Prefix="reports-dev")
    cfn = StubCloudFormation(previous=previous)
    deploy.deploy("dev", session=StubSession(cfn), params_file=packaged({"OpenAIRequestsPerMinute": "500"}))
    sent = _sent(cfn)
    assert set(sent) == set(PARAMETERS), "every template parameter is sent: none falls back to its default"
    assert sent["OpenAIRequestsPerMinute"] == {"ParameterValue": "500"}
    for key in set(PARAMETERS) - {"OpenAIRequestsPerMinute", "OpenAITokensPerMinute"}:
        assert sent[key] == {"UsePreviousValue": True}, key
    # New to the template: CloudFormation refuses UsePreviousValue for it, so its default is sent.
    assert sent["OpenAITokensPerMinute"] == {"ParameterValue": ""}
    assert cfn.named("create_change_set")[0]["ChangeSetType"] == "UPDATE"
    assert [c for c, _ in cfn.calls][-3:] == ["execute_change_set", "wait:stack_update_complete", "describe_stacks"]


def test_a_new_stack_gets_the_template_defaults_for_what_is_not_given(packaged):
    cfn = StubCloudFormation(previous=None)
    outputs = deploy.deploy("dev", session=StubSession(cfn), params_file=packaged({"WorkerMaxConcurrency": "4"}))
    sent = _sent(cfn)
    assert not [k for k, v in sent.items() if "UsePreviousValue" in v]
    assert sent["WorkerMaxConcurrency"] == {"ParameterValue": "4"}
    assert sent["Prefix"] == {"ParameterValue": "reports-dev"} and sent["CorsAllowOrigin"] == {"ParameterValue": "*"}
    assert cfn.named("create_change_set")[0]["ChangeSetType"] == "CREATE"
    assert cfn.named("wait:stack_create_complete") and outputs == {"EndpointURL": "https://api.example/api/"}


def test_an_unknown_parameter_in_the_file_or_on_the_command_line_is_refused_before_any_aws_call(packaged):
    for file_values, cli in (({"WorkerConcurrency": "4"}, {}), ({}, {"AlarmMail": "x@y.example"})):
        cfn = StubCloudFormation(previous={})
        with pytest.raises(deploy.DeployError, match="not a parameter of the template"):
            deploy.deploy("dev", session=StubSession(cfn), params_file=packaged(file_values), parameters=cli)
        assert cfn.calls == []
    with pytest.raises(deploy.DeployError, match="KEY=VALUE"):
        deploy.parse_parameters(["AlarmEmail"])
    assert deploy.parse_parameters(["AlarmEmail=a=b@x.example"]) == {"AlarmEmail": "a=b@x.example"}


def test_a_missing_params_file_is_refused(packaged, tmp_path):
    with pytest.raises(deploy.DeployError, match="is missing"):
        deploy.deploy("dev", session=StubSession(StubCloudFormation()), params_file=tmp_path / "nope.json")


def test_checked_in_params_files_name_only_template_parameters_and_no_secret():
    for stage in ("dev", "prod"):
        template_parameters = package.merge_template(stage)["Parameters"]
        values = deploy.load_params_file(deploy.params_path(stage))
        assert set(values) <= set(template_parameters), stage
        assert "Prefix" not in values  # fixed by the stage
        for key, value in values.items():
            assert not any(word in key.lower() for word in ("secret", "password", "apikey", "api_key")), key
            assert not value.startswith(("sk-", "-----BEGIN")), key
        assert deploy.check_params_file(stage, template_parameters) == [], stage
    prod = deploy.load_params_file(deploy.params_path("prod"))
    assert {"AlarmEmail", *deploy.JWKS_PARAMETERS, "OpenAIRequestsPerMinute", "OpenAITokensPerMinute",
            "CorsAllowOrigin", "WorkerMaxConcurrency"} <= set(prod)


# --- items 2 and 5: preflight for prod --------------------------------------------------------------------------

def test_preflight_refuses_prod_without_an_alarm_subscription():
    with pytest.raises(deploy.DeployError, match="no alarm subscription: set AlarmEmail") as refused:
        deploy.preflight(StubSsm(), "reports-prod", {**PROD_AUTH, "AlarmEmail": ""}, "prod")
    assert "infra/params/prod.json" in str(refused.value)
    assert deploy.preflight(StubSsm(), "reports-prod", {**PROD_AUTH, "AlarmEmail": "oncall@team.example"},
                            "prod") == []
    assert deploy.preflight(StubSsm(), "reports-dev", {"AlarmEmail": ""}, "dev") == []  # dev may go unwatched


@pytest.mark.parametrize("missing", deploy.JWKS_PARAMETERS)
def test_preflight_refuses_prod_without_each_jwks_setting(missing):
    values = {**PROD_AUTH, "AlarmEmail": "oncall@team.example", missing: ""}
    with pytest.raises(deploy.DeployError, match=f"{missing} not set: a production stage accepts only tokens") as err:
        deploy.preflight(StubSsm(), "reports-prod", values, "prod")
    assert "HS256" in str(err.value)


def test_preflight_refuses_a_plain_http_jwks_url_and_any_placeholder():
    values = {**PROD_AUTH, "JwtJwksUrl": "http://issuer.example/jwks.json", "AlarmEmail": "CHANGE-ME@example.com"}
    with pytest.raises(deploy.DeployError) as err:
        deploy.preflight(StubSsm(), "reports-prod", values, "prod")
    assert "JwtJwksUrl must be an https:// URL" in str(err.value)
    assert "AlarmEmail is still a placeholder" in str(err.value)


def test_prod_deploy_with_the_checked_in_placeholders_stops_before_uploading(packaged, tmp_path):
    sam = tmp_path / "build" / "package" / "prod" / "sam.json"  # the real prod template's parameters
    sam.write_text(json.dumps({"Parameters": package.merge_template("prod")["Parameters"], "Resources": {}}))
    cfn = StubCloudFormation(previous=None)
    session = StubSession(cfn)
    with pytest.raises(deploy.DeployError, match="placeholder"):
        deploy.deploy("prod", session=session, params_file=deploy.params_path("prod"))
    assert not cfn.named("create_change_set") and not session.s3.calls


def test_prod_redeploy_passes_preflight_on_the_stacks_current_jwks_settings(packaged):
    """Values not in the file are kept (UsePreviousValue), so preflight judges the stack's current ones."""
    cfn = StubCloudFormation(previous={**PROD_AUTH, "AlarmEmail": "oncall@team.example"})
    deploy.deploy("prod", session=StubSession(cfn), params_file=packaged({"WorkerMaxConcurrency": "12"}))
    assert _sent(cfn)["JwtJwksUrl"] == {"UsePreviousValue": True}
    assert cfn.named("execute_change_set")
    new_stack = StubCloudFormation(previous=None)  # the same file for a new stack: nothing to keep
    with pytest.raises(deploy.DeployError, match="JwtJwksUrl, JwtIssuer, JwtAudience not set"):
        deploy.deploy("prod", session=StubSession(new_stack), params_file=packaged({"WorkerMaxConcurrency": "12"}))
    assert not new_stack.named("create_change_set")


def test_package_refuses_prod_when_its_params_file_lacks_jwks_or_an_alarm_email(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(deploy, "PARAMS_DIR", tmp_path)
    prod = deploy.load_params_file(ROOT / "infra" / "params" / "prod.json")
    (tmp_path / "prod.json").write_text(json.dumps({k: v for k, v in prod.items()
                                                    if k not in ("AlarmEmail", "JwtIssuer")}))
    assert package.main(["--stage", "prod", "--template-only", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "JwtIssuer not set" in err and "no alarm subscription" in err
    assert not (tmp_path / "out").exists()  # refused before building
    (tmp_path / "prod.json").unlink()
    assert deploy.check_params_file("prod", package.merge_template("prod")["Parameters"]) == [
        f"{tmp_path / 'prod.json'} is missing"]


# --- item 6: the change set is shown, and a stateful replacement stops the deploy -------------------------------

STATEFUL_REPLACE = [_change("ProcessWork", "AWS::Lambda::Function"),
                    _change("ApiHandlerRole", "AWS::IAM::Role", replacement="True", recreate="RoleName"),
                    _change("ReportsTable", "AWS::DynamoDB::Table", replacement="True", recreate="KeySchema"),
                    _change("AlarmEmailSubscription", "AWS::SNS::Subscription", action="Add", replacement="")]


def test_the_change_set_is_printed_and_a_table_replacement_is_refused_without_executing(packaged, capsys):
    cfn = StubCloudFormation(previous={}, changes=STATEFUL_REPLACE)
    with pytest.raises(deploy.DeployError) as refused:
        deploy.deploy("dev", session=StubSession(cfn), params_file=packaged({}))
    out = capsys.readouterr().out
    for change in STATEFUL_REPLACE:  # every change, both pages: action, logical id, type, replacement
        line = next(li for li in out.splitlines() if change["LogicalResourceId"] in li)
        assert change["Action"] in line and change["ResourceType"] in line, line
    assert "replacement=True (KeySchema)" in out
    message = str(refused.value)
    assert "ReportsTable (AWS::DynamoDB::Table) would be replaced" in message and "KeySchema" in message
    assert "--allow-replace ReportsTable" in message and "ApiHandlerRole" not in message  # a role holds no data
    assert not cfn.named("execute_change_set")
    (created,) = cfn.named("create_change_set")
    assert cfn.named("delete_change_set") == [{"StackName": "reports-dev", "ChangeSetName": created["ChangeSetName"]}]
    assert len(cfn.named("describe_change_set")) == 2 and cfn.named("describe_change_set")[1]["NextToken"] == "page2"


def test_allow_replace_lets_the_named_replacement_through(packaged, capsys):
    cfn = StubCloudFormation(previous={}, changes=STATEFUL_REPLACE)
    deploy.deploy("dev", session=StubSession(cfn), params_file=packaged({}), allow_replace=["ReportsTable"])
    assert len(cfn.named("execute_change_set")) == 1 and not cfn.named("delete_change_set")
    assert cfn.named("wait:stack_update_complete")
    assert "ReportsTable" in capsys.readouterr().out


@pytest.mark.parametrize("change, refused", [
    (_change("ResultsBucket", "AWS::S3::Bucket", action="Remove", replacement=""), True),
    (_change("WorkQueue", "AWS::SQS::Queue", replacement="Conditional"), True),
    (_change("UserPool", "AWS::Cognito::UserPool", replacement="True"), True),
    (_change("ReportsTable", "AWS::DynamoDB::Table", replacement="False"), False),  # in place: fine
    (_change("ProcessWork", "AWS::Lambda::Function", replacement="True"), False),  # holds no data
    (_change("OldFunction", "AWS::Lambda::Function", action="Remove", replacement=""), False),
])
def test_guard_refuses_removal_or_possible_replacement_of_stateful_types_only(change, refused):
    blocked, unused = deploy.guard_changes([change])
    assert bool(blocked) is refused
    assert deploy.guard_changes([change], [change["LogicalResourceId"]])[0] == []
    assert unused == []


def test_an_allow_replace_that_matches_nothing_is_reported(packaged, capsys):
    cfn = StubCloudFormation(previous={}, changes=[_change("ProcessWork", "AWS::Lambda::Function")])
    deploy.deploy("dev", session=StubSession(cfn), params_file=packaged({}), allow_replace=["ReportTable"])
    assert "--allow-replace ReportTable: this change set neither replaces nor removes it" in capsys.readouterr().out
    assert cfn.named("execute_change_set")


def test_the_command_line_passes_parameters_params_file_and_allow_replace(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(deploy, "deploy", lambda *args, **kwargs: seen.update(args=args, kwargs=kwargs) or {})
    assert deploy.main(["--stage", "prod", "--parameter", "AlarmEmail=a@b.example", "--params-file",
                        str(tmp_path / "p.json"), "--allow-replace", "ReportsTable", "--allow-replace", "Q"]) == 0
    assert seen["args"] == ("prod", None, None, {"AlarmEmail": "a@b.example"})
    assert seen["kwargs"] == {"params_file": tmp_path / "p.json", "allow_replace": ["ReportsTable", "Q"]}
    assert deploy.main(["--parameter", "no-equals-sign"]) == 1


# --- item 2: every knob is a template parameter wired into the functions (the packaged prod template) ----------

@pytest.fixture(scope="module")
def prod_template(tmp_path_factory) -> dict[str, Any]:
    out = package_template("prod", tmp_path_factory.mktemp("package") / "prod")
    return json.loads((out / "sam.json").read_text())


def _functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v["Properties"] for k, v in template["Resources"].items() if v["Type"] == "AWS::Serverless::Function"}


def test_openai_tpm_is_a_parameter_in_every_functions_environment(prod_template):
    assert prod_template["Parameters"]["OpenAITokensPerMinute"]["Default"] == ""
    env = prod_template["Globals"]["Function"]["Environment"]["Variables"]
    assert env["OPENAI_TPM"] == {"Ref": "OpenAITokensPerMinute"}
    assert env["OPENAI_RPM"] == {"Ref": "OpenAIRequestsPerMinute"}
    for name, function in _functions(prod_template).items():  # no function hides the Globals value
        assert "OPENAI_TPM" not in function.get("Environment", {}).get("Variables", {}), name


def test_cors_allow_origin_is_a_parameter_that_overrides_the_chalice_config(prod_template):
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    origin = config["stages"]["prod"]["environment_variables"]["CORS_ALLOW_ORIGIN"]
    assert prod_template["Parameters"]["CorsAllowOrigin"]["Default"] == origin  # the config's value: the default
    functions = _functions(prod_template)
    assert len(functions) == len(config["lambda_functions"]) == 7
    for name, function in functions.items():  # each function's own variable, which Chalice also sets
        assert function["Environment"]["Variables"]["CORS_ALLOW_ORIGIN"] == {"Ref": "CorsAllowOrigin"}, name
    responses = prod_template["Resources"]["RestAPI"]["Properties"]["DefinitionBody"][
        "x-amazon-apigateway-gateway-responses"]
    for response in responses.values():  # API Gateway's own errors carry the same origin
        assert response["responseParameters"]["gatewayresponse.header.Access-Control-Allow-Origin"] == {
            "Fn::Sub": "'${CorsAllowOrigin}'"}


def test_the_prod_params_file_sets_every_knob_prod_needs(prod_template):
    prod = deploy.load_params_file(deploy.params_path("prod"))
    assert set(prod) <= set(prod_template["Parameters"])
    assert prod["OpenAIRequestsPerMinute"] and prod["OpenAITokensPerMinute"]  # the shared limiter is on
    assert deploy.stage_problems("prod", {**prod, **PROD_AUTH, "AlarmEmail": "oncall@team.example",
                                          "SesFrom": "reports@team.example", "SesIdentity": "team.example"}) == []


def test_the_worker_sends_email_as_the_ses_identity_parameter_only(prod_template):
    parameters = prod_template["Parameters"]
    assert parameters["SesFrom"]["Default"] == "reports@example.com"
    assert parameters["SesIdentity"]["Default"] == "example.com"
    prod = deploy.load_params_file(deploy.params_path("prod"))
    assert deploy.PLACEHOLDER in prod["SesFrom"] and deploy.PLACEHOLDER in prod["SesIdentity"]  # deploy refuses
    functions = _functions(prod_template)
    assert functions["ProcessWork"]["Environment"]["Variables"]["SES_FROM"] == {"Ref": "SesFrom"}
    for name, function in functions.items():
        policy = prod_template["Resources"][function["Role"]["Fn::GetAtt"][0]]["Properties"]["Policies"][0]
        senders = [statement["Resource"] for statement in policy["PolicyDocument"]["Statement"]
                   if "ses:SendEmail" in statement["Action"]]
        assert senders == ([[{"Fn::Sub": "arn:${AWS::Partition}:ses:${AWS::Region}:${AWS::AccountId}:identity/"
                                         "${SesIdentity}"}]] if name == "ProcessWork" else []), name
