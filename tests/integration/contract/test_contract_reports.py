"""Report configurations (/reports): create, read, validation.
The contract (docs/api.md) status by status; bad input is checked twice: the answer names what is wrong, and
nothing was stored."""

from __future__ import annotations

import json
from uuid import UUID, uuid4

import pytest

from chalicelib.auth import mint_token
from chalicelib.settings import get_settings
from tests.integration.contract.common import generate, jobs_of, new_report, problem, send, user

# --- report configurations --------------------------------------------------------------------------------


def test_create_report_is_201_with_owner_created_at_and_default_taxonomy(api):
    owner_sub = str(uuid4())
    owner = {"Authorization": "Bearer " + mint_token(get_settings(), sub=owner_sub)}
    response = send(api, "POST", "/api/v1/reports", owner,
                    {"name": "Monthly", "deliveryTargets": [{"type": "api", "mode": "async"}]})
    assert response.status_code == 201
    body = response.json_body
    assert body["reportId"].startswith("report-") and UUID(body["reportId"][7:]).version == 4
    assert body["ownerId"] == owner_sub and body["createdAt"].endswith("Z")
    assert body["categories"][0] == "Airfare" and body["categories"][-1] == "Other" and len(body["categories"]) == 10
    assert response.headers["Location"] == f"/api/v1/reports/{body['reportId']}"
    assert api.get(response.headers["Location"], headers=owner).json_body == body


def test_report_id_conflict_is_409(api):
    owner = user()
    report_id = new_report(api, owner, name="First")
    again = {"reportId": report_id, "name": "Second", "deliveryTargets": [{"type": "api", "mode": "sync"}]}
    problem(send(api, "POST", "/api/v1/reports", owner, again), 409)
    problem(send(api, "POST", "/api/v1/reports", user(), again), 409)
    assert api.get(f"/api/v1/reports/{report_id}", headers=owner).json_body["name"] == "First"


@pytest.mark.parametrize("change,field", [
    ({"reportId": "X"}, "reportId"),
    ({"reportId": "-abc"}, "reportId"),
    ({"name": "  "}, "name"),
    ({"name": None}, "name"),
    ({"deliveryTargets": []}, "deliveryTargets"),
    ({"deliveryTargets": [{"type": "api", "mode": "later"}]}, "deliveryTargets[0]"),
    ({"deliveryTargets": [{"type": "email", "to": "not-an-address"}]}, "deliveryTargets[0].to"),
    ({"deliveryTargets": [{"type": "api", "mode": "async", "extra": 1}]}, "deliveryTargets[0]"),
    ({"allowedRoles": "finance"}, "allowedRoles"),
    ({"categories": []}, "categories"),
    ({"categories": ["Airfare", "Airfare"]}, "categories"),
    ({"schedule": {"type": "monthly", "day": 29}}, "schedule"),
    ({"schedule": {"type": "monthly", "day": 0}}, "schedule"),
    ({"schedule": {"type": "weekly", "day": 1}}, "schedule"),
    ({"owner": "someone-else"}, "owner"),
])
def test_invalid_report_config_is_400_naming_the_field_and_stores_nothing(api, change, field):
    owner = user()
    report_id = f"r-{uuid4().hex[:12]}"
    body = {"reportId": report_id, "name": "Monthly", "deliveryTargets": [{"type": "api", "mode": "async"}], **change}
    assert problem(send(api, "POST", "/api/v1/reports", owner, body), 400)["field"] == field
    problem(api.get(f"/api/v1/reports/{report_id}", headers=owner), 404)


@pytest.mark.parametrize("raw", ["", "[]", "{\"name\": ", "NaN", "[" * 50 + "]" * 50])
def test_report_body_that_is_not_a_json_object_is_400(api, raw):
    problem(send(api, "POST", "/api/v1/reports", user(), raw, "application/json"), 400)


def test_report_with_wrong_content_type_is_415_and_stores_nothing(api):
    owner = user()
    report_id = f"r-{uuid4().hex[:12]}"
    body = json.dumps({"reportId": report_id, "name": "x", "deliveryTargets": [{"type": "api", "mode": "async"}]})
    for content_type in ("text/csv", "application/xml", "text/plain"):
        problem(send(api, "POST", "/api/v1/reports", owner, body, content_type), 415)
    problem(api.get(f"/api/v1/reports/{report_id}", headers=owner), 404)


def test_unknown_report_is_404(api):
    owner = user()
    missing = f"r-{uuid4().hex[:12]}"
    problem(api.get(f"/api/v1/reports/{missing}", headers=owner), 404)
    problem(generate(api, owner, missing, {"period": "2026-01"}), 404)
    problem(api.get("/api/v1/reports/NOT%20AN%20ID", headers=owner), 404)
    assert jobs_of(api, owner)["totalCount"] == 0


def test_another_users_report_is_404_on_read(api):
    report_id = new_report(api, user())
    problem(api.get(f"/api/v1/reports/{report_id}", headers=user()), 404)


# --- bugs these tests found, now fixed -----------------------------------------------


def test_report_id_with_a_trailing_newline_is_400_and_stores_nothing(api):
    owner = user()
    body = {"reportId": f"r-{uuid4().hex[:8]}\n", "name": "x", "deliveryTargets": [{"type": "api", "mode": "async"}]}
    problem(send(api, "POST", "/api/v1/reports", owner, body), 400)
    problem(api.get(f"/api/v1/reports/{body['reportId'].strip()}", headers=owner), 404)


def test_categories_that_repeat_after_trimming_are_400(api):
    owner = user()
    body = {"name": "x", "deliveryTargets": [{"type": "api", "mode": "async"}], "categories": ["Lodging", "Lodging "]}
    assert problem(send(api, "POST", "/api/v1/reports", owner, body), 400)["field"] == "categories"
