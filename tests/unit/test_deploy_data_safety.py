"""infra/deploy.py keeps data safe (issue 19, item 1): prod stacks are termination-protected, and `--delete`
refuses a prod stage without an explicit confirmation and says what it keeps. Against stub AWS clients that
record every call: nothing here reaches AWS (a real session would fail the test)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from infra import deploy
from tests.unit.test_template import package_template

KEPT_PROD = ["bucket reports-prod-results-123456789012", "table reports-prod-events", "table reports-prod-jobs",
             "table reports-prod-lines", "table reports-prod-reports", "table reports-prod-results"]


class Stub:
    """A boto3 client: each call is recorded as (service, operation, kwargs) and answered from `answers`."""

    def __init__(self, service: str, calls: list, answers: dict[str, Any]):
        self.service, self.calls, self.answers = service, calls, answers

    def get_waiter(self, name: str) -> Any:
        calls, service = self.calls, self.service

        class Waiter:
            def wait(self, **kwargs: Any) -> None:
                calls.append((service, f"wait:{name}", kwargs))

        return Waiter()

    def __getattr__(self, operation: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((self.service, operation, kwargs))
            answer = self.answers.get(operation, {})
            if isinstance(answer, Exception):
                raise answer
            return answer(**kwargs) if callable(answer) else answer
        return call


class StubSession:
    region_name = "eu-west-1"

    def __init__(self, answers: dict[str, dict[str, Any]] | None = None):
        self.calls: list[tuple[str, str, dict]] = []
        self.answers = {"sts": {"get_caller_identity": {"Account": "123456789012"}}, **(answers or {})}

    def client(self, service: str) -> Stub:
        return Stub(service, self.calls, self.answers.get(service, {}))

    def ops(self, service: str = "cloudformation") -> list[str]:
        return [op for s, op, _ in self.calls if s == service]


@pytest.fixture
def no_real_aws(monkeypatch):
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a real boto3 session was created")
    monkeypatch.setattr(boto3.session, "Session", refuse)


# --- --delete ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [[], ["--confirm-delete-prod", "dev"], ["--confirm-delete-prod", "reports-prod"]])
def test_delete_refuses_prod_without_its_confirmation_and_says_what_would_be_kept(no_real_aws, capsys, extra):
    assert deploy.main(["--stage", "prod", "--delete", *extra]) == 1
    err = capsys.readouterr().err
    assert "refusing to delete the production stage prod" in err and "--confirm-delete-prod prod" in err
    for kept in ("table reports-prod-reports", "table reports-prod-lines", "table reports-prod-jobs",
                 "table reports-prod-results", "table reports-prod-events", "bucket reports-prod-results-"):
        assert kept in err, kept


def test_a_confirmed_prod_delete_lifts_termination_protection_then_deletes_and_keeps_the_data(capsys):
    session = StubSession()
    deploy.delete("prod", session=session, confirm="prod")
    assert session.ops() == ["update_termination_protection", "delete_stack", "wait:stack_delete_complete"]
    (protection,) = [kw for s, op, kw in session.calls if op == "update_termination_protection"]
    assert protection == {"StackName": "reports-prod", "EnableTerminationProtection": False}
    assert not session.ops("s3"), "the retained results bucket is not emptied"
    out = capsys.readouterr().out
    before, after = out.split("\n", 1)
    for kept in KEPT_PROD:
        assert kept in before and kept in after, kept  # said before deleting, and again after


def test_retained_resources_are_read_from_the_templates():
    assert deploy.retained("reports-prod", "123456789012") == KEPT_PROD


def test_a_dev_delete_needs_no_confirmation_and_keeps_the_bucket_and_tables(capsys):
    session = StubSession()
    deploy.delete("dev", session=session)
    assert session.ops() == ["delete_stack", "wait:stack_delete_complete"]
    assert not session.ops("s3")
    assert "bucket reports-dev-results-123456789012" in capsys.readouterr().out


# --- termination protection on deploy ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def packaged(tmp_path_factory) -> Path:
    """A root with build/package/<stage>/ for both stages, as `make package` leaves it (template only)."""
    root = tmp_path_factory.mktemp("root")
    for stage in ("dev", "prod"):
        package_template(stage, root / "build" / "package" / stage)
    return root


def _deploy(monkeypatch, packaged: Path, stage: str, exists: bool) -> StubSession:
    monkeypatch.setattr(deploy, "ROOT", packaged)
    monkeypatch.setattr(deploy, "preflight", lambda *a, **k: [])  # the stage's settings: tested elsewhere
    stack = f"reports-{stage}"
    missing = ClientError({"Error": {"Code": "ValidationError", "Message": f"Stack with id {stack} does not exist"}},
                          "DescribeStacks")
    described = {"Stacks": [{"StackName": stack, "StackStatus": "UPDATE_COMPLETE", "Parameters": [],
                             "Outputs": [{"OutputKey": "EndpointURL", "OutputValue": "https://x/api/"}]}]}
    state = {"created": exists}

    def describe_stacks(**kwargs: Any) -> dict:
        if not state["created"]:
            raise missing
        return described

    def execute_change_set(**kwargs: Any) -> dict:
        state["created"] = True
        return {}

    session = StubSession({
        "cloudformation": {"describe_stacks": describe_stacks, "execute_change_set": execute_change_set,
                           "describe_change_set": {"Status": "CREATE_COMPLETE", "Changes": []}},
        "s3": {"head_bucket": {}, "head_object": {}},
    })
    deploy.deploy(stage, session=session)
    return session


@pytest.mark.parametrize("exists", [False, True], ids=["create", "update"])
def test_a_prod_deploy_turns_on_termination_protection(monkeypatch, packaged, exists):
    session = _deploy(monkeypatch, packaged, "prod", exists)
    ops = session.ops()
    assert "execute_change_set" in ops and "update_termination_protection" in ops
    assert ops.index("update_termination_protection") > ops.index("execute_change_set")
    (protection,) = [kw for s, op, kw in session.calls if op == "update_termination_protection"]
    assert protection == {"StackName": "reports-prod", "EnableTerminationProtection": True}


def test_a_dev_deploy_leaves_termination_protection_alone(monkeypatch, packaged):
    session = _deploy(monkeypatch, packaged, "dev", exists=True)
    assert "execute_change_set" in session.ops() and "update_termination_protection" not in session.ops()


def test_only_production_stacks_are_protected():
    session = StubSession()
    deploy.protect_stack(session.client("cloudformation"), "reports-prod", "prod")
    deploy.protect_stack(session.client("cloudformation"), "reports-dev", "dev")
    assert session.calls == [("cloudformation", "update_termination_protection",
                              {"StackName": "reports-prod", "EnableTerminationProtection": True})]

