"""Report configurations: validation, storage and who may generate them."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from pynamodb.exceptions import PutError

from chalicelib import clock
from chalicelib.auth import Principal, sub_of
from chalicelib.errors import Conflict, Forbidden, NotFound, ValidationFailed
from chalicelib.lines.validation import in_words, shown, shown_id
from chalicelib.lines.validation import kind_of as _kind
from chalicelib.tables import ReportConfig

DEFAULT_CATEGORIES = [
    "Airfare", "Lodging", "Ground Transportation", "Meals & Entertainment", "Office Supplies",
    "Software & Subscriptions", "Telecommunications", "Training & Education", "Shipping & Postage", "Other",
]
REPORT_ID = re.compile(r"^[a-z0-9][a-z0-9-]{2,63}$")
EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{2,63}$")
_FIELD_ORDER = ["reportId", "name", "deliveryTargets", "allowedRoles", "categories", "schedule"]
_FIELDS = set(_FIELD_ORDER)
_TARGET_RULE = ("an API target (type api, mode async or sync) or an email target (type email, to an email "
                "address), with no other members")


def _fail(field: str, message: str, where: str | None = None) -> ValidationFailed:
    """A 400 naming the field in words (`where`, else the field's name) and what was expected."""
    return ValidationFailed(f"{where or field} {message}", field=field)


def _targets(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value or len(value) > 10:
        raise _fail("deliveryTargets", f"must be an array of 1 to 10 delivery targets, not {_kind(value)}.")
    out = []
    for i, t in enumerate(value):
        field, where = f"deliveryTargets[{i}]", f"deliveryTargets, target {i + 1} (counting from 1),"
        if not isinstance(t, dict):
            raise _fail(field, f"must be an object: {_TARGET_RULE}, not {_kind(t)}.", where)
        if t.get("type") == "api" and set(t) == {"type", "mode"} and t.get("mode") in ("async", "sync"):
            out.append({"type": "api", "mode": t["mode"]})
        elif t.get("type") == "email" and set(t) == {"type", "to"} and isinstance(t.get("to"), str) \
                and EMAIL.fullmatch(t["to"]):
            out.append({"type": "email", "to": t["to"]})
        else:
            raise _fail(field, f"must be {_TARGET_RULE}.", where)
    return out


def _strings(field: str, value: Any, default: list[str], max_items: int) -> list[str]:
    if value is None:
        return default
    if not isinstance(value, list) or len(value) > max_items or not all(
        isinstance(v, str) and 0 < len(v.strip()) <= 64 and v.isprintable() for v in value
    ):
        raise _fail(field, f"must be an array of at most {max_items} texts, each printable and 1 to 64 "
                           "characters long.")
    trimmed = [v.strip() for v in value]
    if len(set(trimmed)) != len(trimmed):
        repeated = next(v for v in trimmed if trimmed.count(v) > 1)
        raise _fail(field, f"names {shown(repeated)} more than once; each value may appear once.")
    return trimmed


def _schedule(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if (not isinstance(value, dict) or set(value) != {"type", "day"} or value["type"] != "monthly"
            or type(value["day"]) is not int or not 1 <= value["day"] <= 28):
        raise _fail("schedule", "must be an object with type monthly and day, a whole number from 1 to 28 (or "
                                "null, or left out, for no schedule).")
    return {"type": "monthly", "day": value["day"]}


def parse_config(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValidationFailed("The body must be a JSON object.")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise ValidationFailed(f"{shown(unknown[0])} is not a known field; a report configuration has "
                               f"{in_words(sorted(_FIELDS, key=_FIELD_ORDER.index))}.", field=shown(unknown[0]))
    report_id = body.get("reportId")
    if report_id is not None and (not isinstance(report_id, str) or not REPORT_ID.fullmatch(report_id)):
        raise _fail("reportId", "must be 3 to 64 characters of lowercase letters, digits and hyphens, starting "
                                "with a letter or digit, or left out" + ("." if isinstance(report_id, str)
                                                                         else f", not {_kind(report_id)}."))
    name = body.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 200 or not name.isprintable():
        raise _fail("name", "is required: printable text of 1 to 200 characters (no control characters or line "
                            "breaks).")
    categories = _strings("categories", body.get("categories"), DEFAULT_CATEGORIES, 50)
    if not categories:
        raise _fail("categories", "must name at least one category.")
    return {
        "reportId": report_id or f"report-{uuid.uuid4()}",
        "name": name.strip(),
        "deliveryTargets": _targets(body.get("deliveryTargets")),
        "allowedRoles": _strings("allowedRoles", body.get("allowedRoles"), [], 20),
        "categories": categories,
        "schedule": _schedule(body.get("schedule")),
    }


def create_report(principal: Principal, body: Any) -> ReportConfig:
    fields = parse_config(body)
    report = ReportConfig(
        principal.tenant,
        fields["reportId"],
        owner_id=principal.user_id,
        name=fields["name"],
        delivery_targets=fields["deliveryTargets"],
        allowed_roles=fields["allowedRoles"],
        categories=fields["categories"],
        schedule=fields["schedule"],
        schedule_day=fields["schedule"]["day"] if fields["schedule"] else None,
        created_at=clock.iso(clock.now()),
    )
    try:
        # id_is_free: two creates with one reportId in one tenant; the second gets 409, never overwrites. The
        # key is (tenant, reportId): another tenant's report-123 is another item, and does not refuse this one.
        report.save(condition=ReportConfig.report_id.does_not_exist())
    except PutError as err:
        if err.cause_response_code == "ConditionalCheckFailedException":
            raise Conflict(f"A report with id '{fields['reportId']}' already exists.") from err
        raise
    return report


def may_generate(principal: Principal, report: ReportConfig) -> bool:
    """The owner, or a holder of one of its roles in the report's own tenant: a role grants nothing elsewhere."""
    if report.tenant != principal.tenant:
        return False  # unreachable through _get (it reads the caller's tenant only); kept as the rule itself
    return report.owner_id == principal.user_id or bool(principal.roles & set(report.allowed_roles or []))


def get_visible(principal: Principal, report_id: str) -> ReportConfig:
    """The report if the caller owns it or holds one of its roles; 404 otherwise."""
    # Always read through: a kept hit would answer someone else's report faster than a missing one, and the
    # contract makes the two the same 404 (tests/hardening/test_authz_matrix.py times them).
    report = _get(principal.tenant, report_id, keep=False)
    if report is None or not may_generate(principal, report):
        raise NotFound(f"Report '{shown_id(report_id)}' was not found.")
    return report


def get_for_generation(principal: Principal, report_id: str) -> ReportConfig:
    """404 for an id the caller's tenant does not have (another tenant's is not even looked at); 403 for one
    of the tenant's reports the caller may not generate."""
    report = _get(principal.tenant, report_id)
    if report is None:
        raise NotFound(f"Report '{shown_id(report_id)}' was not found.")
    if not may_generate(principal, report):
        raise Forbidden("You may not generate this report: you neither own it nor hold one of its allowedRoles.")
    return report


# Configurations are never changed or deleted through the API, so a found one is kept a
# minute per process: it takes a read off every generate. Misses are never kept.
# Kept by (tenant, reportId), as stored: one tenant's kept report never answers for another's id.
_FOUND: dict[tuple[str, str], tuple[float, ReportConfig]] = {}
_KEEP_SECONDS = 60.0


def _get(tenant: str, report_id: str, keep: bool = True) -> ReportConfig | None:
    if not REPORT_ID.fullmatch(report_id or "") or not tenant:
        return None
    kept = _FOUND.get((tenant, report_id)) if keep else None
    if kept and kept[0] > time.monotonic():
        return kept[1]
    try:
        report = ReportConfig.get(tenant, report_id, consistent_read=True)
    except ReportConfig.DoesNotExist:
        return None
    if len(_FOUND) > 1000:
        _FOUND.clear()
    _FOUND[(tenant, report_id)] = (time.monotonic() + _KEEP_SECONDS, report)
    return report


def to_dict(report: ReportConfig) -> dict[str, Any]:
    out = {
        "reportId": report.report_id, "name": report.name, "ownerId": sub_of(report.owner_id, report.tenant),
        "deliveryTargets": report.delivery_targets, "allowedRoles": list(report.allowed_roles or []),
        "categories": list(report.categories), "createdAt": report.created_at,
    }
    if report.schedule:
        out["schedule"] = report.schedule
    return out
