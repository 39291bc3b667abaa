"""Report configurations: validation, storage and who may generate them."""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from typing import Any

from pynamodb.exceptions import DeleteError, PutError, UpdateError
from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action

from chalicelib import clock, paging
from chalicelib.auth import Principal, sub_of
from chalicelib.errors import (
    Conflict,
    Forbidden,
    NotFound,
    PreconditionFailed,
    PreconditionRequired,
    ValidationFailed,
)
from chalicelib.lines.validation import in_words, shown, shown_id
from chalicelib.lines.validation import kind_of as _kind
from chalicelib.settings import get_settings
from chalicelib.tables import ReportConfig

DEFAULT_CATEGORIES = [
    "Airfare", "Lodging", "Ground Transportation", "Meals & Entertainment", "Office Supplies",
    "Software & Subscriptions", "Telecommunications", "Training & Education", "Shipping & Postage", "Other",
]
REPORT_ID = re.compile(r"^[a-z0-9][a-z0-9-]{2,63}$")
EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{2,63}$")
_FIELD_ORDER = ["reportId", "name", "deliveryTargets", "allowedRoles", "categories", "schedule", "lane"]
_FIELDS = set(_FIELD_ORDER)
_TARGET_RULE = ("an API target (type api, mode async or sync), an email target (type email, to an email address) "
                "or a webhook target (type webhook, url, events), with no other members")
SECRET_GRACE_SECONDS = 24 * 3600  # a rotated-out webhook secret still signs (beside the new one) this long


def _fail(field: str, message: str, where: str | None = None) -> ValidationFailed:
    """A 400 naming the field in words (`where`, else the field's name) and what was expected."""
    return ValidationFailed(f"{where or field} {message}", field=field)


def _one_address(text: str) -> bool:
    """A bare address (name@example.com): no display name, no second address, nothing a mail header would read
    as more than the address itself."""
    from email.headerregistry import Address

    if not EMAIL.fullmatch(text) or not text.isprintable() or any(c in text for c in '<>,;:"()[]\\ '):
        return False
    try:
        return str(Address(addr_spec=text)) == text
    except (ValueError, IndexError):
        return False


def _webhook(t: dict[str, Any], field: str, where: str) -> dict[str, Any]:
    from chalicelib.delivery import webhook

    url = t.get("url")
    if not isinstance(url, str):
        raise _fail(f"{field}.url", f"url must be an https URL, not {_kind(url)}.", where)
    reason = webhook.check_url(url, get_settings().webhook_allow_loopback)
    if reason:
        raise _fail(f"{field}.url", f"url {reason}.", where)
    events = t.get("events")
    known = in_words(list(webhook.EVENTS))
    if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
        raise _fail(f"{field}.events", f"events must be a non-empty array of event names: {known}.", where)
    unknown = [e for e in events if e not in webhook.EVENTS]
    if unknown:
        raise _fail(f"{field}.events", f"events names {shown(unknown[0])}, which is not an event; the events are "
                                       f"{known}.", where)
    if len(set(events)) != len(events):
        raise _fail(f"{field}.events", "events names an event more than once.", where)
    return {"type": "webhook", "url": url, "events": [e for e in webhook.EVENTS if e in events]}


def _targets(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value or len(value) > 10:
        raise _fail("deliveryTargets", f"must be an array of 1 to 10 delivery targets, not {_kind(value)}"
                    + (f" of {len(value)}." if isinstance(value, list) and value else "."))
    out: list[dict[str, Any]] = []
    for i, t in enumerate(value):
        field, where = f"deliveryTargets[{i}]", f"deliveryTargets, target {i + 1} (counting from 1),"
        if not isinstance(t, dict):
            raise _fail(field, f"must be an object: {_TARGET_RULE}, not {_kind(t)}.", where)
        kind = t.get("type")
        if kind == "api" and set(t) == {"type", "mode"} and t.get("mode") in ("async", "sync"):
            target: dict[str, Any] = {"type": "api", "mode": t["mode"]}
        elif kind == "email" and set(t) == {"type", "to"}:
            to = t.get("to")
            if not isinstance(to, str) or not _one_address(to):
                raise _fail(f"{field}.to", "to must be one email address (name@example.com).", where)
            target = {"type": "email", "to": to}
        elif kind == "webhook" and set(t) == {"type", "url", "events"}:
            target = _webhook(t, field, where)
        else:
            raise _fail(field, f"must be {_TARGET_RULE}.", where)
        if target in out:
            raise _fail(field, "repeats an earlier target; each target may appear once.", where)
        out.append(target)
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


# The rules of a configuration, one per member: each returns the canonical value or raises ValidationFailed.
# chalicelib/api/models.ReportConfigInput runs them, after check_config_members, in the order it declares them:
# reportId, name, categories, deliveryTargets, allowedRoles, schedule.


def check_config_members(body: Any) -> None:
    if not isinstance(body, dict):
        raise ValidationFailed("The body must be a JSON object.")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise ValidationFailed(f"{shown(unknown[0])} is not a known field; a report configuration has "
                               f"{in_words(sorted(_FIELDS, key=_FIELD_ORDER.index))}.", field=shown(unknown[0]))


def check_report_id(report_id: Any) -> str | None:
    if report_id is not None and (not isinstance(report_id, str) or not REPORT_ID.fullmatch(report_id)):
        raise _fail("reportId", "must be 3 to 64 characters of lowercase letters, digits and hyphens, starting "
                                "with a letter or digit, or left out" + ("." if isinstance(report_id, str)
                                                                         else f", not {_kind(report_id)}."))
    return report_id


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > 200 or not name.isprintable():
        raise _fail("name", "is required: printable text of 1 to 200 characters (no control characters or line "
                            "breaks).")
    return name.strip()


def check_categories(value: Any) -> list[str]:
    categories = _strings("categories", value, DEFAULT_CATEGORIES, 50)
    if not categories:
        raise _fail("categories", "must name at least one category.")
    return categories


def check_roles(value: Any) -> list[str]:
    return _strings("allowedRoles", value, [], 20)


check_targets = _targets
check_schedule = _schedule


def check_lane(value: Any) -> str | None:
    """A cost lane (categorize/prices.LANES), or None for the default of the job's trigger."""
    from chalicelib.categorize.prices import LANES

    if value is not None and value not in LANES:
        raise _fail("lane", f"must be one of {', '.join(LANES)} (or null, or left out, for the default: standard "
                            "for API requests, batch for scheduled reports).")
    return value


def mint_report_id() -> str:
    return f"report-{uuid.uuid4()}"


def parse_config(body: Any) -> dict[str, Any]:
    """The configuration to store, read through its model (chalicelib/api/models.ReportConfigInput)."""
    from chalicelib.api import models

    return models.parse(models.ReportConfigInput, body).fields()


def check_patch_members(body: Any) -> None:
    """A PATCH's own rules; its members are then checked on the configuration as it would be (parse_config)."""
    if not isinstance(body, dict):
        raise ValidationFailed("The body must be a JSON object.")
    fixed = [f for f in IMMUTABLE if f in body]
    if fixed:
        raise ValidationFailed(f"{fixed[0]} cannot be changed; a PATCH may set name, deliveryTargets, "
                               "allowedRoles, categories, schedule and lane.", field=fixed[0])
    if not body:
        raise ValidationFailed("The body must set at least one of name, deliveryTargets, allowedRoles, categories, "
                               "schedule and lane.")


def _has_webhook(targets: list[dict[str, Any]]) -> bool:
    return any(t["type"] == "webhook" for t in targets)


def _first_secret() -> tuple[list[dict[str, Any]], str]:
    from chalicelib.delivery import webhook

    secret = webhook.new_secret()
    return [{"secret": secret, "createdAt": clock.iso(clock.now()), "expiresAt": None}], secret


def create_report(principal: Principal, body: Any) -> tuple[ReportConfig, str | None]:
    """The stored report, and its webhook signing secret when it has a webhook target (shown this once)."""
    fields = parse_config(body)
    secrets, secret = _first_secret() if _has_webhook(fields["deliveryTargets"]) else (None, None)
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
        lane=fields["lane"],
        created_at=clock.iso(clock.now()),
        version=1,
        webhook_secrets=secrets,
        secret_version=1 if secrets else None,
    )
    try:
        # id_is_free: two creates with one reportId in one tenant; the second gets 409, never overwrites. The
        # key is (tenant, reportId): another tenant's report-123 is another item, and does not refuse this one.
        report.save(condition=ReportConfig.report_id.does_not_exist())
    except PutError as err:
        if err.cause_response_code == "ConditionalCheckFailedException":
            raise Conflict(f"A report with id '{fields['reportId']}' already exists.") from err
        raise
    return report, secret


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


# A found configuration is kept a few seconds per process: it takes a read off every generate. A PATCH or DELETE
# drops its entry in the process that made it (seen at once there); another process may answer from its kept
# copy for at most _KEEP_SECONDS. A deleted report never gets a job from a kept copy: creating a job
# condition-checks the stored report (jobs/create._commit, job_condition below). Misses are never kept.
# Kept by (tenant, reportId), as stored: one tenant's kept report never answers for another's id.
_FOUND: dict[tuple[str, str], tuple[float, ReportConfig]] = {}
_KEEP_SECONDS = 5.0


def _forget(tenant: str, report_id: str) -> None:
    _FOUND.pop((tenant, report_id), None)


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
    if report.lane:
        out["lane"] = report.lane
    disabled = report.disabled_targets or {}
    if disabled:
        out["disabledTargets"] = [{"target": i, "url": t["url"], "disabledAt": disabled[t["url"]]}
                                  for i, t in enumerate(report.delivery_targets or [])
                                  if t["type"] == "webhook" and t["url"] in disabled]
    return out


# --- management: list, update, delete ------------------------------------------------------------------------

IMMUTABLE = ("reportId", "ownerId", "createdAt", "disabledTargets")
LIST_SCAN_BUDGET = 1000  # reports read for one page at most (see list_reports)
DELETE_MARGIN_SECONDS = 5  # the final delete never runs this close to its mark's end
DELETE_MARK_SECONDS = 30


def version_of(report: ReportConfig) -> int:
    return int(report.version or 0)


def etag(report: ReportConfig) -> str:
    """Strong ETag of the representation: the version it names, then a digest of the body."""
    body = json.dumps(to_dict(report), sort_keys=True, separators=(",", ":"), default=str)
    return f'"v{version_of(report)}-{hashlib.sha256(body.encode()).hexdigest()[:24]}"'


def list_reports(principal: Principal, size: int, token: str | None) -> dict[str, Any]:
    """The caller's tenant's reports the caller may see (owns, or holds one of their allowedRoles), by reportId.

    Visibility is a filter on the tenant's partition, so a page is filled by reading on until `size` visible
    reports and one more are found: the token names the last report returned, never one merely read, so no
    report is skipped and a page with a nextToken is never short. Only past LIST_SCAN_BUDGET reports read for
    one request is a page returned short, with a token after the last report read (nothing before it skipped).
    """
    after = None
    start = paging.decode(token)
    if start is not None:
        after = start.get("after")
        if set(start) != {"after"} or not isinstance(after, str) or not REPORT_ID.fullmatch(after):
            raise ValidationFailed("nextToken: is not a token this API issued.", field="nextToken")
    condition = ReportConfig.report_id > after if after else None
    items: list[ReportConfig] = []
    read = 0
    for report in ReportConfig.query(principal.tenant, range_key_condition=condition, consistent_read=True,
                                     page_size=min(100, size * 2 + 1)):
        read += 1
        if may_generate(principal, report):
            if len(items) == size:
                return {"items": items, "nextToken": paging.encode({"after": items[-1].report_id})}
            items.append(report)
        elif read >= LIST_SCAN_BUDGET and len(items) < size:
            return {"items": items, "nextToken": paging.encode({"after": report.report_id})}
    return {"items": items, "nextToken": None}


def _owned(principal: Principal, report_id: str) -> ReportConfig:
    """404 for a report the caller cannot see; 403 for one they see (a role holder's) but do not own."""
    report = get_visible(principal, report_id)
    if report.owner_id != principal.user_id:
        raise Forbidden("Only the report's owner may change or delete it; holders of its allowedRoles may read "
                        "and generate it.")
    return report


def _check_if_match(report: ReportConfig, if_match: str | None, required: bool) -> None:
    if if_match is None or not if_match.strip():
        if required:
            raise PreconditionRequired("If-Match is required: send the ETag of GET /api/v1/reports/"
                                       f"{report.report_id}, so a change made since you read it is not lost.")
        return
    tags = [t.strip() for t in if_match.split(",")]
    if "*" not in tags and etag(report) not in tags:
        raise PreconditionFailed("The report has changed since this ETag was read (If-Match does not match its "
                                 "current ETag); read it again and reapply your change.")


def _same_version(version: int) -> Condition:
    return (ReportConfig.version == version) if version else ReportConfig.version.does_not_exist()


def _failed_condition(err: Exception) -> bool:
    return getattr(err, "cause_response_code", None) == "ConditionalCheckFailedException"


def update_report(principal: Principal, report_id: str, body: Any,
                  if_match: str | None) -> tuple[ReportConfig, str | None]:
    """A PATCH: owner only, If-Match required, the merged configuration validated as a create's is, and one
    write conditional on the version the ETag named (two PATCHes with one ETag: one wins, the other 412).

    Also returns the webhook secret made by this PATCH (its first webhook target), else None. Setting
    deliveryTargets enables again every webhook a 410 Gone had disabled: the owner has looked at them."""
    report = _owned(principal, report_id)
    _check_if_match(report, if_match, required=True)
    from chalicelib.api import models

    models.parse(models.ReportConfigPatch, body)
    current = {"reportId": report.report_id, "name": report.name, "deliveryTargets": report.delivery_targets,
               "allowedRoles": list(report.allowed_roles or []), "categories": list(report.categories),
               "schedule": report.schedule, "lane": report.lane}
    fields = parse_config({**current, **body})  # the create's rules, on the configuration as it would be
    version = version_of(report)
    schedule = fields["schedule"]
    secret = None
    extra = []
    if _has_webhook(fields["deliveryTargets"]) and not report.webhook_secrets:
        secrets, secret = _first_secret()
        extra = [ReportConfig.webhook_secrets.set(secrets), ReportConfig.secret_version.add(1)]
    if "deliveryTargets" in body and report.disabled_targets:
        extra.append(ReportConfig.disabled_targets.remove())
    actions: list[Action] = [*extra,
        ReportConfig.name.set(fields["name"]),
        ReportConfig.delivery_targets.set(fields["deliveryTargets"]),
        ReportConfig.allowed_roles.set(fields["allowedRoles"]),
        ReportConfig.categories.set(fields["categories"]),
        ReportConfig.schedule.set(schedule) if schedule else ReportConfig.schedule.remove(),
        ReportConfig.schedule_day.set(schedule["day"]) if schedule else ReportConfig.schedule_day.remove(),
        ReportConfig.lane.set(fields["lane"]) if fields["lane"] else ReportConfig.lane.remove(),
        ReportConfig.version.set(version + 1),
    ]
    try:
        # version_unchanged: the version the ETag named is still the stored one; else 412, nothing written.
        # not_being_deleted: a change answered 200 must not vanish with a delete that marked the report first.
        report.update(actions=actions, condition=ReportConfig.report_id.exists() & _same_version(version)
                      & _not_marked(int(time.time())))
    except UpdateError as err:
        if not _failed_condition(err):
            raise
        _forget(report.tenant, report.report_id)
        stored = _get(report.tenant, report.report_id, keep=False)
        if stored is None:
            raise NotFound(f"Report '{shown_id(report_id)}' was not found.") from err
        if version_of(stored) == version and not still_there(report.tenant, report.report_id):
            raise Conflict("The report is being deleted; it was not changed.") from err
        raise PreconditionFailed("The report changed while this PATCH ran; read it again and reapply your "
                                 "change.") from err
    _forget(report.tenant, report.report_id)
    return report, secret


def rotate_secret(principal: Principal, report_id: str) -> dict[str, Any]:
    """A new webhook secret (returned this once); the current one keeps signing beside it for a day, so a
    receiver can switch over without missing a message. Owner only."""
    from chalicelib.delivery import webhook

    report = _owned(principal, report_id)
    if not _has_webhook(report.delivery_targets or []):
        raise Conflict("This report has no webhook target; its secret is made when a webhook target is added.")
    now = time.time()
    until = int(now + SECRET_GRACE_SECONDS)
    kept = [dict(s, expiresAt=min(until, s["expiresAt"] or until)) for s in report.webhook_secrets or []
            if s.get("expiresAt") is None or s["expiresAt"] > now]
    secret = webhook.new_secret()
    secrets = [{"secret": secret, "createdAt": clock.iso(clock.now()), "expiresAt": None}, *kept][:5]
    seen = int(report.secret_version or 0)
    same = (ReportConfig.secret_version == seen) if seen else ReportConfig.secret_version.does_not_exist()
    try:
        # secrets_unchanged: two rotations at once; the loser's secret would never be stored, so it gets 409.
        report.update(actions=[ReportConfig.webhook_secrets.set(secrets), ReportConfig.secret_version.set(seen + 1)],
                      condition=ReportConfig.report_id.exists() & same & _not_marked(int(now)))
    except UpdateError as err:
        if not _failed_condition(err):
            raise
        raise Conflict("The report's secret changed, or the report is being deleted, while this ran; "
                       "try again.") from err
    finally:
        _forget(report.tenant, report.report_id)
    return {"webhookSecret": secret,
            "previousSecretExpiresAt": clock.iso(clock.from_epoch(until)) if kept else None}


def live_secrets(report: ReportConfig) -> list[str]:
    """The secrets a webhook of this report is signed with now, newest first (two during a rotation)."""
    now = time.time()
    return [s["secret"] for s in report.webhook_secrets or [] if s.get("expiresAt") is None or s["expiresAt"] > now]


def set_target_disabled(tenant: str, report_id: str, url: str, disabled: bool) -> None:
    """Mark a webhook URL of the report disabled (its receiver answered 410 Gone) or enabled again."""
    for _ in range(5):
        report = _get(tenant, report_id, keep=False)
        if report is None:
            return
        seen = report.disabled_targets or None
        marks = dict(seen or {})
        if disabled:
            marks[url] = clock.iso(clock.now())
        elif marks.pop(url, None) is None:
            return
        # marks_unchanged: two 410s for two URLs at once; each map is written over the one it read, or read again.
        unchanged = (ReportConfig.disabled_targets == seen) if seen else ReportConfig.disabled_targets.does_not_exist()
        try:
            report.update(actions=[ReportConfig.disabled_targets.set(marks) if marks
                                   else ReportConfig.disabled_targets.remove()],
                          condition=ReportConfig.report_id.exists() & unchanged)
            return
        except UpdateError as err:
            if not _failed_condition(err):
                raise
        finally:
            _forget(tenant, report_id)


def report_of(tenant: str, report_id: str, fresh: bool = False) -> ReportConfig | None:
    """The stored report (kept a few seconds unless `fresh`), or None: for the worker's deliveries."""
    return _get(tenant, report_id, keep=not fresh)


def active_job_status(tenant: str, report_id: str) -> str | None:
    """The status of an active job (any user's) of this report, or None.

    Reads the jobs' sparse `byActive` index (only live jobs are in it: every active job of the service, not a
    scan of history) and then the jobs themselves with consistent reads to match tenant and report.
    """
    from chalicelib.jobs.states import ACTIVE, in_order
    from chalicelib.tables import Job

    # In the state machine's order: a job moving on (Queued -> Processing -> CancellationRequested) between two
    # queries is in the later one. (The index is eventually consistent on DynamoDB: see docs/api.md.)
    ids = [j.job_id for status in in_order(ACTIVE) for j in Job.by_active.query(status.value)]
    for start in range(0, len(ids), 100):
        for job in Job.batch_get(ids[start:start + 100], consistent_read=True):
            if job.report_id == report_id and (job.tenant or job.owner_id) == tenant \
                    and job.status in {s.value for s in ACTIVE}:
                return job.status
    return None


def _not_marked(now: int) -> Condition:
    return ReportConfig.deleting_until.does_not_exist() | (ReportConfig.deleting_until < now)


def job_condition() -> Condition:
    """What creating a job checks of its report item in the same transaction (jobs/create._commit)."""
    return ReportConfig.report_id.exists() & (ReportConfig.deleting_until.does_not_exist()
                                              | (ReportConfig.deleting_until < int(time.time())))


def still_there(tenant: str, report_id: str) -> bool:
    """The report exists and no delete of it is under way (a retry must not revive a deleted report's job)."""
    report = _get(tenant, report_id, keep=False)
    return report is not None and (report.deleting_until is None or report.deleting_until < int(time.time()))


def explain_refused_job(tenant: str | None, report_id: str) -> None:
    """Raise why job_condition refused a job, if it did: the report is gone (404) or being deleted (409)."""
    report = _get(tenant or "", report_id, keep=False)
    if report is None:
        raise NotFound(f"Report '{shown_id(report_id)}' was not found; it may have just been deleted.")
    if report.deleting_until is not None and report.deleting_until >= int(time.time()) - 1:
        raise Conflict("The report is being deleted; no job was created.")


def delete_report(principal: Principal, report_id: str, if_match: str | None) -> None:
    """Owner only; 409 while a job of the report is active. Jobs and results stay until they expire.

    generate_vs_delete: the delete first marks the report (deletingUntil); job creation condition-checks that
    mark in its transaction, so after the mark no job starts, and every job that started before it is seen by
    the active-job check. Then the delete is conditional on the mark being still ours.
    """
    report = _owned(principal, report_id)
    _check_if_match(report, if_match, required=False)
    now = int(time.time())
    mark = now + DELETE_MARK_SECONDS
    not_marked = ReportConfig.deleting_until.does_not_exist() | (ReportConfig.deleting_until < now)
    condition = ReportConfig.report_id.exists() & not_marked
    if if_match and "*" not in if_match:
        condition &= _same_version(version_of(report))
    try:
        report.update(actions=[ReportConfig.deleting_until.set(mark)], condition=condition)
    except UpdateError as err:
        if not _failed_condition(err):
            raise
        current = _get(report.tenant, report.report_id, keep=False)
        if current is None:
            raise NotFound(f"Report '{shown_id(report_id)}' was not found.") from err
        if if_match and version_of(current) != version_of(report):
            raise PreconditionFailed("The report changed while this DELETE ran; read it again.") from err
        raise Conflict("Another request is deleting this report, or it changed meanwhile; try again.") from err
    status = active_job_status(report.tenant, report.report_id)
    if status is not None:
        try:
            report.update(actions=[ReportConfig.deleting_until.remove()],
                          condition=ReportConfig.deleting_until == mark)
        except UpdateError:
            pass  # the mark lapses by itself after DELETE_MARK_SECONDS
        raise Conflict(f"A job of this report is {status}; delete the report once its jobs have finished (or "
                       "cancel them).", jobStatus=status)
    if time.time() > mark - DELETE_MARGIN_SECONDS:
        # mark_still_ours: past its end, creates are allowed again and a job could have started unseen.
        raise Conflict("Checking the report's jobs took too long; nothing was deleted. Try again.")
    try:
        # version_marked: a PATCH cannot land after the mark (not_being_deleted), so this is the version the
        # caller's If-Match named, if it sent one.
        report.delete(condition=(ReportConfig.deleting_until == mark) & _same_version(version_of(report)))
    except DeleteError as err:
        if not _failed_condition(err):
            raise
        raise Conflict("The report changed while it was being deleted; try again.") from err
    finally:
        _forget(report.tenant, report.report_id)
