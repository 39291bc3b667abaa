"""The OpenAPI document is generated (chalicelib/api/spec.py, from the pydantic models of chalicelib/api/models.py);
the models are what validates requests. These tests need no AWS: they read the models and the document only."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any, get_args

import pytest

from chalicelib.api import models as m
from chalicelib.api import problem_types, spec
from chalicelib.delivery import webhook
from chalicelib.errors import ValidationFailed
from chalicelib.jobs.states import DeliveryStatus, JobAction, JobStatus, StepStatus
from chalicelib.jobs.types import JobType, Step

ROOT = Path(__file__).resolve().parents[2]
CHECKED_IN = ROOT / "chalicelib" / "api" / "openapi.json"
SCHEMAS = spec.document()["components"]["schemas"]


def test_checked_in_document_is_what_make_openapi_writes():
    written = spec.text()
    if CHECKED_IN.read_text() != written:
        pytest.fail("chalicelib/api/openapi.json differs from what the models and the route table make "
                    "(chalicelib/api/models.py, chalicelib/api/spec.py). Run `make openapi` and commit the result; "
                    "do not edit openapi.json by hand.")


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_reference_resolves_and_every_schema_is_used():
    doc = spec.document()
    for reference in _refs(doc):
        node: Any = doc
        for part in reference.removeprefix("#/").split("/"):
            assert isinstance(node, dict) and part in node, f"{reference} does not resolve"
            node = node[part]
    used = {r.rsplit("/", 1)[1] for r in _refs(doc) if r.startswith("#/components/schemas/")}
    assert set(doc["components"]["schemas"]) - used == set(), "a schema no operation or schema uses"


def test_the_schemas_are_the_models():
    schemas = spec.document()["components"]["schemas"]
    for model in (*m.REQUESTS, *m.RESPONSES):
        assert model.__name__ in schemas
    assert schemas["Job"]["required"][-1] == "deliveries"
    assert "deliveries" not in schemas["WebhookJob"]["properties"]
    assert schemas["ExpenseImport"]["properties"]["lines"]["maxItems"] == m.MAX_IMPORT_LINES
    assert schemas["Problem"]["properties"]["type"]["enum"] == [t["type"] for t in spec.problem_types_listed()]


@pytest.mark.parametrize(("literal", "source"), [
    (m.JobStatusValue, tuple(JobStatus)),
    (m.DeliveryStatusValue, tuple(DeliveryStatus)),
    (m.JobActionValue, tuple(JobAction)),
    (m.JobTypeValue, tuple(JobType)),
    (m.StepStatusValue, tuple(StepStatus)),
    (m.StepNameValue, tuple(Step)),
    (m.WebhookEventValue, webhook.EVENTS),
    (m.FinalEventValue, webhook.EVENTS[:3]),
    (m.ProblemTypeUri, tuple(t.uri for t in problem_types.TYPES)),
], ids=["JobStatus", "DeliveryStatus", "JobAction", "JobType", "StepStatus", "Step", "webhook.EVENTS",
        "final events", "problem types"])
def test_the_literals_are_their_sources(literal, source):
    # models.py writes these value sets out (a type checker cannot read a Literal built at run time): each one is its
    # source's values, in the source's order (the order of the schema's `enum`).
    assert get_args(literal) == source


def test_query_parameters_come_from_the_query_models():
    doc = spec.document()
    listed = doc["paths"]["/api/v1/jobs"]["get"]["parameters"]
    assert [p.get("name") or p["$ref"] for p in listed] == ["pageSize", "page", "status",
                                                            "#/components/parameters/NextToken"]
    assert listed[0]["schema"] == {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}
    assert doc["paths"]["/api/v1/expenses"]["get"]["parameters"][0]["required"] is True


@pytest.mark.parametrize("model", [m.ReportConfigInput, m.ReportConfigPatch, m.ExpenseLineInput, m.GenerateRequest,
                                   m.LinePatch, m.WebhookSecretRotation, m.ImportResult, m.JobList, m.ReportList,
                                   m.Delivery, m.EmailDeliveryTarget, m.WebhookDeliveryTarget])
def test_the_examples_are_read_by_their_models(model):
    example = SCHEMAS[model.__name__]["example"]
    if model in (m.ReportConfigInput, m.ReportConfigPatch, m.ExpenseLineInput, m.GenerateRequest):
        m.parse(model, example)  # the request rules themselves (ValidationFailed otherwise)
    else:
        assert model.model_validate(example).to_json() == example


def test_webhook_examples_are_read_by_the_payload_model():
    for event, item in spec.WEBHOOKS.items():
        example = item["post"]["requestBody"]["content"]["application/json"]["example"]
        assert m.WebhookPayload.model_validate(example).to_json() == example, event


# --- errors: the rule's own message and field, through the model ----------------------------------------------


def _refusal(model: type, body: Any, **context: Any) -> tuple[str, dict[str, Any]]:
    with pytest.raises(ValidationFailed) as caught:
        m.parse(model, body, **context)
    return caught.value.detail, dict(caught.value.extensions)


def test_a_report_configuration_is_refused_in_the_rules_order_and_words():
    assert _refusal(m.ReportConfigInput, []) == ("The body must be a JSON object.", {})
    detail, extensions = _refusal(m.ReportConfigInput, {"name": "", "deliveryTargets": 1, "zz": 1})
    assert extensions == {"field": "zz"} and detail.startswith("zz is not a known field")
    assert _refusal(m.ReportConfigInput, {"name": "", "deliveryTargets": 1})[1] == {"field": "name"}
    assert _refusal(m.ReportConfigInput, {"name": "n", "deliveryTargets": [], "categories": []}) == (
        "categories must name at least one category.", {"field": "categories"})
    hook = {"type": "webhook", "url": "https://10.0.0.1/x", "events": ["job.completed"]}
    detail, extensions = _refusal(m.ReportConfigInput, {"name": "n", "deliveryTargets": [{"type": "api",
                                                                                          "mode": "async"}, hook]})
    assert extensions == {"field": "deliveryTargets[1].url"}
    assert detail.startswith("deliveryTargets, target 2 (counting from 1), url ")


def test_a_report_configuration_read_through_its_model_has_its_defaults():
    fields = m.parse(m.ReportConfigInput, {"name": " Monthly ", "deliveryTargets": [
        {"type": "webhook", "url": "https://hooks.example.com/x", "events": ["job.failed", "job.completed"]}]}).fields()
    assert fields["name"] == "Monthly" and fields["reportId"].startswith("report-")
    assert fields["deliveryTargets"] == [{"type": "webhook", "url": "https://hooks.example.com/x",
                                          "events": ["job.completed", "job.failed"]}]
    assert fields["categories"][0] == "Airfare" and fields["allowedRoles"] == [] and fields["schedule"] is None


def test_a_patch_is_refused_for_its_own_rules_only():
    assert _refusal(m.ReportConfigPatch, {"ownerId": "x"})[1] == {"field": "ownerId"}
    assert _refusal(m.ReportConfigPatch, {})[0].startswith("The body must set at least one of")
    m.parse(m.ReportConfigPatch, {"name": ""})  # its values are checked on the merged configuration


def test_expense_lines_keep_their_messages_and_exact_amounts():
    good = {"date": "2026-01-15", "vendor": " Uber ", "currency": "USD"}
    lines = m.parse(m.ExpenseImport, {"lines": [{**good, "lineId": f"tx-{i}", "amount": amount} for i, amount in
                                                enumerate(["23.50", Decimal("23.5"), Decimal("2350e-2"),
                                                           Decimal("1E+2"), 7, Decimal("0e-9")])]},
                    max_lines=10)
    assert [line.amount for line in lines.lines] == [Decimal("23.50"), Decimal("23.5"), Decimal("23.50"),
                                                      Decimal("100"), Decimal("7"), Decimal("0.0000")]
    assert [line["amount"] for line in lines.stored()] == ["23.50", "23.5", "23.50", "100", "7", "0.0000"]
    assert lines.stored()[0]["vendor"] == "Uber" and lines.stored()[0]["description"] == ""
    detail, extensions = _refusal(m.ExpenseImport, {"lines": [{**good, "amount": "1"}, {**good, "amount": 1.5}]})
    assert extensions == {"line": "lines[1]", "field": "amount"}
    assert detail.startswith("Line 2 of lines (counting from 1): amount must be")
    assert _refusal(m.ExpenseImport, {"lines": [{**good, "amount": "1"}]}, max_lines=0)[1] == {"field": "lines"}
    assert _refusal(m.ExpenseImport, {"lines": [], "x": 1})[1] == {"field": "lines"}


@pytest.mark.parametrize(("model", "query", "field", "detail"), [
    (m.JobListQuery, {"pageSize": "0"}, "pageSize", "pageSize: must be an integer from 1 to 100."),
    (m.JobListQuery, {"pageSize": "5", "page": "10001"}, "page", "page: must be an integer from 1 to 10000."),
    (m.ExpenseListQuery, {}, "period", "period: must be a month YYYY-MM."),
    (m.ExpenseListQuery, {"period": "2026-01", "pageSize": "1001"}, "pageSize",
     "pageSize: must be an integer from 1 to 1000."),
    (m.EventListQuery, {"pageSize": "x"}, "pageSize", "pageSize: must be an integer from 1 to 1000."),
    (m.ResultQuery, {"format": "xml"}, "format", "format: must be json or csv."),
])
def test_query_strings_are_refused_as_before(model, query, field, detail):
    assert _refusal(model, query) == (detail, {"field": field})


def test_query_strings_read_their_defaults_and_pass_on_what_the_service_checks():
    jobs = m.parse(m.JobListQuery, {"status": "Nope", "nextToken": "t", "other": "ignored"})
    assert (jobs.page_size, jobs.page, jobs.status, jobs.next_token) == (20, None, "Nope", "t")
    assert m.parse(m.EventListQuery, {}).page_size == 1000
    assert m.parse(m.ResultQuery, {"format": ""}).format == "json"


def test_an_error_of_pydantic_s_own_names_the_field_by_its_json_path():
    assert m.json_path(("deliveryTargets", 0, "url")) == "deliveryTargets[0].url"
    detail, extensions = _refusal(m.Schedule, {"type": "monthly", "day": 29})
    assert extensions == {"field": "day"} and detail.startswith("day: ")


def test_the_document_is_written_as_json_with_a_final_newline():
    text = spec.text()
    assert text.endswith("}\n") and json.loads(text)["openapi"] == "3.1.0"
