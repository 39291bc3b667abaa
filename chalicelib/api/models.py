"""The API's shapes, defined once: pydantic models of every request and response body and query string.

They serve three purposes:

- **Validation.** A request body or query string is read with `parse(Model, data)`. Each field's validator
  calls the rule written for it (chalicelib/lines/validation.py, chalicelib/reports/service.py,
  chalicelib/paging.py), which raises `ValidationFailed` with the message and `field` the API has always
  answered; pydantic lets that error through unchanged, so the first rule broken is the 400 the client sees,
  in the order the fields are declared here. Any error of pydantic's own (a type the rules let through) is
  mapped by `parse` to the same problem+json 400, naming the field by its JSON path (`deliveryTargets[0].url`).
- **The document.** `chalicelib/api/spec.py` writes `components.schemas` of chalicelib/api/openapi.json from
  these models (`make openapi`), and the query parameters of the operations from the `...Query` models.
- **The representation.** Response models describe what the API answers; tests read real answers through them.

Names are the JSON names (camelCase, through the alias generator); the Python attributes are snake_case.
Amounts are `Decimal` end to end, written as strings in JSON ("23.50" stays "23.50").
"""

import re
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.fields import FieldInfo
from pydantic.json_schema import SkipJsonSchema
from typing_extensions import TypeAliasType

from chalicelib import paging
from chalicelib.delivery import webhook
from chalicelib.errors import ValidationFailed
from chalicelib.jobs.states import DeliveryStatus as _DeliveryStatus
from chalicelib.jobs.states import JobAction
from chalicelib.jobs.states import JobStatus as _JobStatus
from chalicelib.jobs.states import StepStatus as _StepStatus
from chalicelib.jobs.types import REGISTRY as _TYPES
from chalicelib.jobs.types import JobType as _JobType
from chalicelib.jobs.types import Step as _Step
from chalicelib.lines import validation
from chalicelib.reports import service as reports
from chalicelib.settings import Settings

REF = "#/components/schemas/{model}"
MAX_IMPORT_LINES = Settings.max_import_lines  # the default: the document does not depend on a stage's settings
Shape = TypeVar("Shape", bound=BaseModel)


def ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


# --- parsing ---------------------------------------------------------------------------------------------------


def json_path(loc: tuple[int | str, ...]) -> str:
    """pydantic's error location as the API names a field: `deliveryTargets[0].url`, `lines[3]`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse(model: type[Shape], data: Any, **context: Any) -> Shape:
    """`data` read through `model`, or ValidationFailed: the rule's own (raised by a field's validator and let
    through by pydantic), else the first error of pydantic's own, naming the field by its JSON path."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        field = json_path(tuple(first["loc"]))
        message = first["msg"].rstrip(".")
        if field:
            raise ValidationFailed(f"{field}: {message[:1].lower()}{message[1:]}.", field=field) from None
        raise ValidationFailed(f"The body is not valid: {message}.") from None


class Model(BaseModel):
    """A JSON object of the API: camelCase members, no others."""

    # defer_build: a model's validator is built when it is first used, not when the API function imports this
    # module (cold start: the API reads a few of these models per request, never all of them).
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True,
                              extra="forbid", defer_build=True)

    def to_json(self) -> dict[str, Any]:
        """The JSON representation: members that were set (an absent optional member stays absent)."""
        return self.model_dump(mode="json", exclude_unset=True)


def _every_member(model: type[BaseModel], data: Any) -> Any:
    """`data` with every member of `model` that it lacks as None: each member's rule then says what an absent
    member means (a default, or "name is required: ...") in its own words, instead of pydantic's "missing"."""
    if not isinstance(data, dict):
        return data
    absent = _ABSENT.get(model)
    if absent is None:
        absent = _ABSENT[model] = {f.alias or name: None for name, f in model.model_fields.items()}
    return {**absent, **data}


_ABSENT: dict[type[BaseModel], dict[str, None]] = {}


def _rule(check: Any) -> BeforeValidator:
    """A field validator that runs `check(value)`: it returns the canonical value or raises ValidationFailed."""
    return BeforeValidator(lambda value: check(value))


# --- closed sets of values ------------------------------------------------------------------------------------
# Each one written out, in its source's order (a schema `enum`, validated as one): a Literal built at run time from
# an enum or a tuple is not a type a type checker can read. tests/unit/test_openapi_generated.py holds each one equal
# to its source (`test_the_literals_are_their_sources`). An enum's set lists its members (statuses are spelled in
# chalicelib/jobs/states.py only): the schema lists their values, and a value validates as its member.

JobStatusValue = Literal[_JobStatus.QUEUED, _JobStatus.PROCESSING, _JobStatus.CANCELLATION_REQUESTED,
                         _JobStatus.COMPLETED, _JobStatus.FAILED, _JobStatus.CANCELLED]
DeliveryStatusValue = Literal[_DeliveryStatus.PENDING, _DeliveryStatus.DELIVERED, _DeliveryStatus.FAILED,
                              _DeliveryStatus.DISABLED]
JobActionValue = Literal[JobAction.CANCEL, JobAction.RETRY, JobAction.RESULT, JobAction.SETTLE]
JobTypeValue = Literal[_JobType.EXPENSE_REPORT, _JobType.LINES_IMPORT, _JobType.IMPORT_AND_REPORT, _JobType.CACHE_WARM]
StepStatusValue = Literal[_StepStatus.PENDING, _StepStatus.RUNNING, _StepStatus.COMPLETED, _StepStatus.FAILED,
                          _StepStatus.SKIPPED, _StepStatus.CANCELLED]
StepNameValue = Literal[_Step.UPLOAD, _Step.VALIDATE, _Step.STAGE, _Step.COMMIT, _Step.COLLECT, _Step.CATEGORIZE,
                        _Step.ASSEMBLE, _Step.DELIVER, _Step.SELECT, _Step.REFRESH]
# chalicelib.delivery.webhook.EVENTS, and its first three: the final events (a job's deliveries)
WebhookEventValue = Literal["job.completed", "job.failed", "job.cancelled", "job.progress"]
FinalEventValue = Literal["job.completed", "job.failed", "job.cancelled"]
# chalicelib.categorize.prices.LANES
LaneValue = Literal["standard", "flex", "batch"]
# The `type` of a job's events (the audit trail): this list is their definition.
EventType = Literal["created", "started", "rate_limited", "resumed", "cancel_requested", "cancelled", "completed",
                    "failed", "reaped", "retried", "delivery_attempt", "delivery_retry_requested", "step"]
# The `uri` of every type of chalicelib/api/problem_types.py (TYPES)
ProblemTypeUri = Literal[
    "urn:reports:problem:validation-failed", "urn:reports:problem:unauthorized", "urn:reports:problem:forbidden",
    "urn:reports:problem:not-found", "urn:reports:problem:method-not-allowed", "urn:reports:problem:conflict",
    "urn:reports:problem:active-job-exists", "urn:reports:problem:not-async-report",
    "urn:reports:problem:invalid-transition", "urn:reports:problem:precondition-failed",
    "urn:reports:problem:payload-too-large", "urn:reports:problem:unsupported-media-type",
    "urn:reports:problem:idempotency-key-reused", "urn:reports:problem:no-lines",
    "urn:reports:problem:precondition-required",
    "urn:reports:problem:rate-limited", "urn:reports:problem:internal-error",
    "urn:reports:problem:service-unavailable"]


# --- shared values (each one a named schema of the document) --------------------------------------------------

Timestamp = TypeAliasType("Timestamp", Annotated[str, Field(
    pattern="Z$", json_schema_extra={"format": "date-time"},
    description="ISO 8601 UTC with `Z` (millisecond precision), e.g. `2026-01-15T08:30:00.123Z`.")])
Period = TypeAliasType("Period", Annotated[str, Field(
    pattern=validation.PERIOD.pattern, description="A calendar month `YYYY-MM`.", examples=["2026-01"])])
ReportId = TypeAliasType("ReportId", Annotated[str, Field(pattern=reports.REPORT_ID.pattern,
                                                          examples=["report-123"])])
LineId = TypeAliasType("LineId", Annotated[str, Field(
    pattern=validation.LINE_ID.pattern, examples=["tx-1"],
    description="Identifies a line within its month (see ExpenseLineInput.lineId).")])
_AMOUNT_SCHEMA = {
    "type": "string", "pattern": validation.AMOUNT.pattern,
    "description": f"A decimal string: optional minus, at most {validation.AMOUNT_INT_DIGITS} digits before the "
                   f"point and {validation.AMOUNT_FRACTION_DIGITS} after. Stored and returned as a string, never a "
                   "float: an amount imported as a JSON number comes back as its exact digits (23.5 as \"23.5\", "
                   "1E+2 as \"100\").",
    "examples": ["23.50"]}
# A Decimal, written as its exact digits (str(Decimal("23.50")) is "23.50": never through a float).
Amount = TypeAliasType("Amount", Annotated[Decimal, PlainSerializer(str, return_type=str, when_used="json"),
                                           WithJsonSchema(_AMOUNT_SCHEMA)])
_LIMIT = "9" * validation.AMOUNT_INT_DIGITS + "." + "9" * validation.AMOUNT_FRACTION_DIGITS
AmountInput = TypeAliasType("AmountInput", Annotated[Decimal, WithJsonSchema({
    "description": "An amount to import: a decimal string (see Amount: written plainly, no exponent) or a JSON "
                   "number. A number is read exactly as written, as a decimal, never through a binary float, and "
                   "stored as the decimal string of its value as written: 23.5 as \"23.5\", 23.50 as \"23.50\", 0.1 "
                   "as \"0.1\", 25E-2 as \"0.25\", 100 as \"100\". Either kind keeps at most "
                   f"{validation.AMOUNT_INT_DIGITS} digits before the point and {validation.AMOUNT_FRACTION_DIGITS} "
                   "after: a number with more (1e400, 0.12345) is 400, as are NaN and infinities (not JSON), true, "
                   "false and null.",
    "oneOf": [ref("Amount"), {"type": "number", "minimum": float("-" + _LIMIT), "maximum": float(_LIMIT)}],
    "examples": ["23.50", 23.5]})])
Currency = TypeAliasType("Currency", Annotated[str, Field(pattern=validation.CURRENCY.pattern,
                                                          description="ISO 4217 code in capitals.",
                                                          examples=["USD"])])
Category = TypeAliasType("Category", Annotated[str, Field(min_length=1, max_length=64,
                                                          description="One of the report's `categories`.")])
JobStatus = TypeAliasType("JobStatus", Annotated[JobStatusValue, Field(
    description="`Completed`, `Failed` and `Cancelled` are terminal.")])
WebhookEvent = TypeAliasType("WebhookEvent", Annotated[WebhookEventValue, Field(
    description="`job.completed`, `job.failed`, `job.cancelled`: the job became that final status (tracked in the "
                "job's `deliveries`, retried). `job.progress`: the job checkpointed while it runs, at most one every "
                "10 s per job; never retried and not listed in `deliveries`.")])
DeliveryStatus = TypeAliasType("DeliveryStatus", Annotated[DeliveryStatusValue, Field(
    description="`Pending`: waiting for its first attempt or a retry. `Delivered` (final): a 2xx answer, or SES "
                "accepted the email. `Failed` (final): 8 attempts failed, or a failure no retry can mend (SES "
                "rejected the message, the report was deleted). `Disabled` (final): the receiver answered 410 Gone, "
                "now or earlier, and the report's target is disabled.")])
WebhookSecret = TypeAliasType("WebhookSecret", Annotated[str, Field(
    pattern="^whsec_[A-Za-z0-9+/]+={0,2}$",
    description="A Standard Webhooks signing secret: `whsec_` and the base64 of 32 random bytes. The HMAC key is "
                "the base64-decoded part after `whsec_`.",
    json_schema_extra={"example": "whsec_Y/myW0ikxfO1KupEoRgiizi3wQpO6Y3QTRwOHIIdbsA="})])
NullableText = Annotated[str | None, WithJsonSchema({"type": ["string", "null"]})]


def _or_null(name: str) -> WithJsonSchema:
    """The schema of the named value `name` or null: `oneOf: [<name>, null]`."""
    return WithJsonSchema({"oneOf": [ref(name), {"type": "null"}]})


_MaybeTime = Annotated[Timestamp | None, _or_null("Timestamp")]
_MaybePeriod = Annotated[Period | None, _or_null("Period")]
# A member that is absent or has a value, never null: None is only its Python default (an unset member, which
# `to_json` leaves out), so it is left out of the member's schema (`name: str | Absent = Field(None, ...)`).
Absent = SkipJsonSchema[None]


# --- report configurations -------------------------------------------------------------------------------------


class ApiDeliveryTarget(Model):
    model_config = ConfigDict(json_schema_extra={
        "description": "Delivery through this API; `mode: async` is what `generate` needs (without it, 409 \"Report "
                       "is not configured for asynchronous generation.\")."})
    type: Literal["api"]
    mode: Literal["async", "sync"]


class EmailDeliveryTarget(Model):
    model_config = ConfigDict(json_schema_extra={
        "description": "When a job of the report is `Completed`, an email is sent through Amazon SES (from the "
                       "stage's sender, `SES_FROM`) to `to`: the totals per category and currency, the number of "
                       "lines needing review and a link to the result in the body, and the CSV report attached (a "
                       "CSV over 7 MB is linked instead, by a presigned link valid 7 days). Failed and cancelled "
                       "jobs send no email. An invalid address is 400 with `field: deliveryTargets[i].to`.",
        "example": {"type": "email", "to": "finance@example.com"}})
    type: Literal["email"]
    # The rule (reports.service._one_address) takes up to 384 characters; the document has always said 320.
    to: Annotated[str, Field(json_schema_extra={"format": "email", "maxLength": 320})]


class WebhookDeliveryTarget(Model):
    model_config = ConfigDict(json_schema_extra={
        "description": "A signed HTTP POST (Standard Webhooks) to `url` on each event listed; the requests are "
                       "described in this document's `webhooks`. The signing secret is made with the report's first "
                       "webhook target and shown once, as `webhookSecret`.",
        "example": {"type": "webhook", "url": "https://hooks.example.com/reports",
                    "events": ["job.completed", "job.failed"]}})
    type: Literal["webhook"]
    url: str = Field(max_length=webhook.MAX_URL_LENGTH, json_schema_extra={"format": "uri"}, description=(
        "An `https` URL of a public host. Refused with 400 (`field: deliveryTargets[i].url`) when it is not https, "
        "carries `user:password@`, or names a private, loopback, link-local or otherwise non-public address: an IP "
        "literal in any spelling, or a name such as `localhost`, `*.local`, `*.internal`. Every send resolves the "
        "name again and connects only to an address that passed the same check; redirects are not followed. On a "
        "local stack (`WEBHOOK_ALLOW_LOOPBACK=1`, never on a deployed stage) `http(s)://127.0.0.1[:port]` and "
        "`localhost` are also accepted."))
    events: list[WebhookEvent] = Field(
        min_length=1, max_length=len(webhook.EVENTS), json_schema_extra={"uniqueItems": True},
        description="The events to send; each at most once (400 `field: deliveryTargets[i].events` otherwise). "
                    "Stored in the order of the enum.")


DeliveryTarget = TypeAliasType("DeliveryTarget", Annotated[
    Union[ApiDeliveryTarget, EmailDeliveryTarget, WebhookDeliveryTarget],  # noqa: UP007 (a tagged union)
    Field(discriminator="type", description="Where a report's jobs are delivered. In a report's `deliveryTargets` "
                                            "no two targets may be the same (400 naming the repeated one).")])


class Schedule(Model):
    model_config = ConfigDict(json_schema_extra={
        "description": "Generates the previous month's report for the owner on `day` of every month (UTC); such "
                       "jobs have `trigger: schedule`. `day` stops at 28 so that every month has it."})
    type: Literal["monthly"]
    day: int = Field(ge=1, le=28)


_TEXT_ITEM = "Printable, not blank; surrounding whitespace is trimmed."
_TextItem = Annotated[str, Field(min_length=1, max_length=64, description=_TEXT_ITEM)]
_RoleList = Annotated[list[_TextItem], Field(max_length=20, json_schema_extra={"uniqueItems": True})]
_CategoryList = Annotated[list[_TextItem], Field(min_length=1, max_length=50, json_schema_extra={"uniqueItems": True})]
_TARGETS = ("1 to 10 targets, no two the same; more than 10 is 400 with `field: deliveryTargets`, a bad target 400 "
            "naming it (`deliveryTargets[0]`, `deliveryTargets[0].url`, `deliveryTargets[0].events`, "
            "`deliveryTargets[0].to`). `generate` needs an `api` target with `mode: async`; a report with a "
            "`schedule` is generated on its day whatever its targets.")
_ROLES = "At most 20 roles; holders may view and generate the report. Default: none."
_CATEGORIES = f"The taxonomy, 1 to 50 categories. Default: {', '.join(reports.DEFAULT_CATEGORIES)}."
_NAME = "Printable, not blank; trimmed."
# The members of a configuration, each with its rule (reports.service). Declared in the order the rules are
# checked: the first one broken is the answer.
_Name = Annotated[str, _rule(reports.check_name), Field(min_length=1, max_length=200, description=_NAME)]
_Categories = Annotated[_CategoryList | None, _rule(reports.check_categories),
                        Field(description=_CATEGORIES)]
_Targets = Annotated[list[DeliveryTarget], _rule(reports.check_targets), Field(min_length=1, max_length=10)]
_Roles = Annotated[_RoleList | None, _rule(reports.check_roles), Field(description=_ROLES)]
_Schedule = Annotated[Schedule | None, _rule(reports.check_schedule)]
_LANE = ("The cost lane of the report's jobs: `standard` (interactive requests), `flex` (the provider's flex tier at "
         "batch prices, slower; falls back to standard when the provider has no flex capacity) or `batch` (the "
         "provider's Batch API: half price, answers within 24 hours). Default (absent or null): `standard` for jobs "
         "generated through the API, `batch` for scheduled ones. A `lane` in the generate body wins over this one.")
_Lane = Annotated[LaneValue | None, _rule(reports.check_lane), Field(description=_LANE)]


class ReportConfigInput(Model):
    # A report configuration to create (and, on a PATCH, the configuration as it would be after the change).
    model_config = ConfigDict(json_schema_extra={
        "description": "A report configuration to create. Unknown fields are 400. `null` for an optional field is "
                       "the same as leaving it out.",
        "example": {"reportId": "report-123", "name": "Monthly expenses",
                    "deliveryTargets": [{"type": "api", "mode": "async"},
                                        {"type": "email", "to": "finance@example.com"},
                                        {"type": "webhook", "url": "https://hooks.example.com/reports",
                                         "events": ["job.completed", "job.failed"]}],
                    "allowedRoles": ["finance"], "categories": ["Airfare", "Lodging"],
                    "schedule": {"type": "monthly", "day": 1}}})

    report_id: Annotated[ReportId | None, _rule(reports.check_report_id)] = Field(
        None, description="Optional; minted as `report-<uuid4>` when absent. 409 if it exists.")
    name: _Name
    categories: _Categories = None
    delivery_targets: _Targets = Field(description=_TARGETS)
    allowed_roles: _Roles = None
    schedule: _Schedule = None
    lane: _Lane = None

    @model_validator(mode="before")
    @classmethod
    def _members(cls, data: Any) -> Any:
        reports.check_config_members(data)
        return _every_member(cls, data)

    def fields(self) -> dict[str, Any]:
        """The configuration to store: defaults filled in, the reportId minted when absent."""
        return {
            "reportId": self.report_id or reports.mint_report_id(),
            "name": self.name,
            "deliveryTargets": [t.model_dump(mode="json") for t in self.delivery_targets],
            "allowedRoles": list(self.allowed_roles or []),
            "categories": list(self.categories or []),
            "schedule": self.schedule.model_dump(mode="json") if self.schedule else None,
            "lane": self.lane,
        }


class ReportConfigPatch(Model):
    # A PATCH's members. Its own rules are the ones of a PATCH (no immutable member, at least one member); the
    # members' rules run on the configuration as it would be after the change (ReportConfigInput).
    model_config = ConfigDict(json_schema_extra={
        "minProperties": 1,
        "description": "Any of the changeable fields; each is validated as on create, on the configuration as it "
                       "would be after the change. `reportId`, `ownerId`, `createdAt` and `disabledTargets` cannot "
                       "be changed (400 naming the field); other unknown fields are 400. `null` resets an optional "
                       "field as on create: `allowedRoles` to none, `categories` to the default taxonomy, `schedule` "
                       "to no schedule. Jobs already created keep their own copy of the categories.",
        "example": {"name": "Monthly expenses (EU)", "categories": ["Airfare", "Lodging", "Other"]}})

    name: str | Absent = Field(None, min_length=1, max_length=200, description=_NAME)
    delivery_targets: Annotated[list[DeliveryTarget], Field(min_length=1, max_length=10)] | Absent = Field(
        None,
        description=_TARGETS + " Setting `deliveryTargets` enables again every webhook target a 410 Gone had "
                               "disabled.")
    allowed_roles: _RoleList | None = Field(None, description=_ROLES)
    categories: _CategoryList | None = Field(None, description=_CATEGORIES)
    schedule: Schedule | None = None
    lane: LaneValue | None = Field(None, description=_LANE)

    @model_validator(mode="wrap")
    @classmethod
    def _members(cls, data: Any, handler: Any) -> Any:
        reports.check_patch_members(data)
        return cls.model_construct()  # the values: checked by ReportConfigInput, on the merged configuration


class DisabledTarget(Model):
    model_config = ConfigDict(json_schema_extra={
        "description": "A webhook target that is not sent to: its receiver answered 410 Gone. Setting "
                       "`deliveryTargets` (PATCH), or retrying a `Disabled` delivery, enables it again."})
    target: int = Field(ge=0, le=9, description="The target's index in `deliveryTargets`.")
    url: str = Field(description="The webhook target's `url`.")
    disabled_at: Timestamp = Field(description="When its receiver answered 410 Gone.")


class ReportConfig(Model):
    # A report configuration as the API answers it.
    report_id: ReportId
    name: str
    owner_id: str = Field(description="The `sub` of the user who created it (a user of the report's tenant).")
    delivery_targets: list[DeliveryTarget]
    allowed_roles: list[str]
    categories: list[str] = Field(min_length=1)
    schedule: Schedule | Absent = Field(None, description="Present only when the report has a schedule.")
    lane: LaneValue | Absent = Field(None, description="Present only when the report names a lane. " + _LANE)
    created_at: Timestamp
    disabled_targets: list[DisabledTarget] | Absent = Field(
        None, json_schema_extra={"readOnly": True},
        description="Present only when a webhook target is disabled (its receiver answered 410 Gone). Read-only: a "
                    "PATCH that names it is 400 (`field: disabledTargets`).")
    webhook_secret: WebhookSecret | Absent = Field(
        None, json_schema_extra={"readOnly": True},
        description="The webhook signing secret, shown once: only in the 201 answer of `POST /reports` for a report "
                    "with a webhook target, and in the 200 answer of the `PATCH` that added the report's first "
                    "webhook target. No later answer (`GET`, lists, other PATCHes) carries it; keep it, or rotate it "
                    "(`POST /reports/{reportId}/webhook-secret/rotate`).")


class WebhookSecretRotation(Model):
    model_config = ConfigDict(json_schema_extra={"example": {
        "webhookSecret": "whsec_pPlD2k1dSMvB/I9uit2LZo3AYLxqdE3bC/oQh+z0TyM=",
        "previousSecretExpiresAt": "2026-02-02T09:00:00.000Z"}})
    webhook_secret: WebhookSecret = Field(description="The new secret, shown this once.")
    previous_secret_expires_at: _MaybeTime = Field(
        description="Until when the previous secret still signs, beside the new one (24 h from now); null when "
                    "there was no previous secret.")


class ReportList(Model):
    model_config = ConfigDict(json_schema_extra={
        "description": "The caller's tenant's reports that the caller owns or holds one of the `allowedRoles` of, "
                       "in ascending `reportId` order.",
        "example": {"items": [], "nextToken": None}})
    items: list[ReportConfig] = Field(max_length=100)
    next_token: NullableText = Field(
        description="Token of the next page; null on the last. A page with a token is full (pageSize items).")


# --- expense lines ---------------------------------------------------------------------------------------------


def _line_rule(check: Any) -> BeforeValidator:
    """A validator of one member of an expense line: `check(value, fail)`, `fail` naming the line in words."""

    def run(value: Any, info: ValidationInfo) -> Any:
        context = info.context or {}
        fail = context.get("fail") or validation.line_failure(context.get("where", "The line"), context.get("line"))
        return check(value, fail)

    return BeforeValidator(run)


class ExpenseLineInput(Model):
    # One expense line to import. Read with context `where` (the line in words: "Line 3 of lines (counting from 1)",
    # "Row 4 of the CSV ...") and `line` (`lines[2]`, `row 4`): they start every message about it (and `fail`,
    # validation.line_failure(where, line), made once per line).
    model_config = ConfigDict(json_schema_extra={"example": {
        "lineId": "tx-1", "date": "2026-01-15", "vendor": "UBER *TRIP 8841", "amount": "23.50", "currency": "USD",
        "description": "ride to airport"}})

    # lineId and description are optional; their defaults are never used (`_members` gives each rule every member,
    # an absent one as None: lineId's mints a UUID, description's stores ""). `default_factory` marks them optional
    # in the schema (not `required`) without writing a default there.
    line_id: Annotated[str, _line_rule(validation.line_id_rule), WithJsonSchema({
        "oneOf": [ref("LineId"), {"type": "string", "maxLength": 0}, {"type": "null"}]})] = Field(
        default_factory=str,
        description="Optional. When absent or empty the line is named by its content and its occurrence among "
                    "identical lines of the request or file (24 hex digits of a SHA-256, `-1`, `-2`...), so "
                    "importing the same lines again stores nothing new. Identifies the line within its month: "
                    "re-importing it with a date in the same month replaces the stored line, which then takes the "
                    "place of this import in report order. Unique within one request. Reports list lines in import "
                    "order, not by lineId.")
    date: Annotated[str, _line_rule(validation.date_rule)] = Field(
        pattern=validation.DATE.pattern, json_schema_extra={"format": "date"},
        description="A calendar date; its month is the line's period.")
    vendor: Annotated[str, _line_rule(validation.vendor_rule)] = Field(
        min_length=1, max_length=200, description="Printable, not blank; trimmed.")
    amount: Annotated[AmountInput, _line_rule(validation.amount_rule)]
    currency: Annotated[Currency, _line_rule(validation.currency_rule)]
    description: Annotated[str, _line_rule(validation.description_rule),
                           WithJsonSchema({"type": ["string", "null"], "maxLength": 500})] = Field(
        default_factory=str, description="Optional printable text; trimmed; stored as `\"\"` when absent.")

    @model_validator(mode="before")
    @classmethod
    def _members(cls, data: Any, info: ValidationInfo) -> Any:
        context = info.context or {}
        validation.check_line_members(data, context.get("where", "The line"), context.get("line"))
        return _every_member(cls, data)

    def stored(self) -> dict[str, str]:
        """The line as the store keeps it: every member a string, the amount its exact digits."""
        return {"lineId": self.line_id, "date": self.date, "vendor": self.vendor, "amount": str(self.amount),
                "currency": self.currency, "description": self.description}


class ExpenseImport(Model):
    # A JSON import. Read with context `max_lines` (the stage's limit; the document names the default).
    lines: Annotated[list[ExpenseLineInput], BeforeValidator(
        lambda raws, info: validation.check_lines(raws, (info.context or {}).get("max_lines", MAX_IMPORT_LINES)))
    ] = Field(min_length=1, max_length=MAX_IMPORT_LINES)

    @model_validator(mode="before")
    @classmethod
    def _members(cls, data: Any) -> Any:
        if not isinstance(data, dict) or set(data) != {"lines"}:
            raise ValidationFailed("The body must be a JSON object with one member, lines: an array of expense "
                                   "lines.", field="lines")
        return data

    def stored(self) -> list[dict[str, str]]:
        return [line.stored() for line in self.lines]


class ExpenseLine(Model):
    line_id: LineId
    date: str = Field(json_schema_extra={"format": "date"})
    vendor: str
    amount: Amount
    currency: Currency
    description: str


class ImportResult(Model):
    model_config = ConfigDict(json_schema_extra={"example": {"imported": 1, "periods": ["2026-01"]}})
    imported: int = Field(ge=1, le=MAX_IMPORT_LINES, description="Lines stored (new or replaced).")
    periods: list[Period] = Field(min_length=1, json_schema_extra={"uniqueItems": True},
                                  description="The months the lines fall in, ascending.")


class ExpenseLinePage(Model):
    model_config = ConfigDict(json_schema_extra={"description": "The caller's lines of one month in `lineId` order."})
    items: list[ExpenseLine] = Field(max_length=1000)
    next_token: NullableText = Field(
        description="Pass as `nextToken` for the next page; `null` on the last page. A page that ends exactly at the "
                    "last line may still carry a token whose page is empty.")


# --- jobs ------------------------------------------------------------------------------------------------------


class GenerateRequest(Model):
    # The optional body of `generate`. Known gap, kept as it was: the document allows `"period": null`, but the
    # rule (check_period) refuses it with 400 `field: period`; one of the two has to change, deliberately.
    model_config = ConfigDict(json_schema_extra={"example": {"period": "2026-01", "lane": "flex"}})
    period: Annotated[_MaybePeriod, _rule(validation.check_period)] = Field(
        None, description="The month to report on; absent or `null`: the current UTC month.")
    lane: Annotated[LaneValue | None, _rule(reports.check_lane)] = Field(
        None, description="The job's cost lane; absent or `null`: the report's `lane`, else `standard`.")

    @model_validator(mode="before")
    @classmethod
    def _members(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not set(data) <= {"period", "lane"}:
            field = next((k for k in data if k not in ("period", "lane")), "period") if isinstance(data, dict) \
                else "period"
            raise ValidationFailed('The body must be {"period": "YYYY-MM", "lane": "standard|flex|batch"} (both '
                                   'optional) or empty.', field=field)
        return data


_Count = Annotated[int, Field(ge=0)]


class WarmCounts(Model):
    model_config = ConfigDict(json_schema_extra={
        "description": "What a `cache_warm` job did with its tenant's vendors seen in the last 30 days.",
        "example": {"vendorsRefreshed": 40, "vendorsFailed": 2, "vendorsSkipped": 118}})
    vendors_refreshed: _Count = Field(description="Asked again and cached (a confident answer).")
    vendors_failed: _Count = Field(description="Asked again without a cacheable answer (flagged, unsure, or "
                                               "refused); asked again by the next run.")
    vendors_skipped: _Count = Field(description="Not due: a fresh cache entry, or a person's answer.")


class ImportRowError(Model):
    row: int = Field(ge=1, description="The file's own row number: the header is row 1, a blank line is a row too.")
    field: NullableText = Field(description="The column at fault (`amount`, `date`...), when one is.")
    message: str = Field(description="What is wrong, in words, starting with the row.")


class ImportProgress(Model):
    model_config = ConfigDict(json_schema_extra={
        "description": "A `lines_import` or `import_and_report` job's file and what became of it.",
        "example": {"mode": "merge", "stage": "done", "rows": 20000, "storedLines": 20000, "newLines": 20000,
                    "errors": [], "errorCount": 0, "uploadExpiresAt": "2026-01-31T10:15:00Z"}})
    mode: Literal["merge", "replace"]
    stage: Literal["upload", "validate", "stage", "commit", "done"] = Field(description=(
        "Where the import is: waiting for its file, checking rows, storing them under a new version of the "
        "period's lines, making that version current, or done (the lines are the period's)."))
    rows: int | None = Field(ge=0, description="Expense rows in the file (blank lines not counted), once read.")
    stored_lines: int | None = Field(ge=0, description="Lines the period holds after the import, once committed.")
    new_lines: int | None = Field(ge=0, description=(
        "`merge`: lines the import added to the period (0 for a file imported again); null for `replace`."))
    errors: list[ImportRowError] = Field(max_length=100, description="The first 100 invalid rows, in file order.")
    error_count: int = Field(ge=0, description="Invalid rows in all (the ones past the first 100 are counted only).")
    upload_expires_at: Timestamp = Field(description="When the upload URL stopped (or stops) working.")


_TYPES_LISTED = "; ".join(f"`{t.value}` ({spec.label}: {', '.join(f'`{s.value}`' for s in spec.steps)})"
                          for t, spec in _TYPES.items())


class JobStep(Model):
    model_config = ConfigDict(json_schema_extra={
        "description": "One of the job's ordered steps. A step's transitions are audit events of type `step` "
                       "(detail: `step`, `from`, `to`, `attempts`). A retry resumes at the first step that is "
                       "neither `Completed` nor `Skipped`: the steps done before are not done again.",
        "example": {"name": "categorize", "status": _StepStatus.RUNNING.value, "startedAt": "2026-01-31T10:00:01.000Z",
                    "completedAt": None, "attempts": 1, "progressPercent": 40, "errorMessage": None}})
    name: StepNameValue = Field(description=f"The step, in its type's order: {_TYPES_LISTED}.")
    status: StepStatusValue = Field(description=(
        "`Pending` (not begun), `Running`, `Completed`, `Failed` (the job failed in it; `deliver`: a delivery did "
        "not arrive), `Skipped` (nothing to do in it: categorize of an empty period, deliver when no target wants "
        "`job.completed`), `Cancelled` (the job was cancelled before it finished). `deliver` (a report with an email "
        "or webhook target) runs after the job is `Completed`, settled by its `deliveries`."))
    started_at: _MaybeTime = Field(description="When its latest attempt began.")
    completed_at: _MaybeTime = Field(description="When it became Completed, Failed, Skipped or Cancelled.")
    attempts: int = Field(ge=0, description=(
        "How many times it was begun: 1 for a step that ran once; more when a retry resumed in it or a worker "
        "that died in it was replaced."))
    progress_percent: int | None = Field(ge=0, le=100, json_schema_extra={"type": ["integer", "null"]},
                                         description="Its own progress where it counts work (`categorize`: lines, "
                                                     "`refresh`: vendors); null otherwise.")
    error_message: NullableText = Field(description="Why it failed (user-safe); null otherwise.")


class Usage(Model):
    model_config = ConfigDict(json_schema_extra={
        "description": "What the job's model requests used so far, and what that is estimated to cost from the "
                       "price table of the job's model and lane (README: Lanes and prices). Counted with the "
                       "job's progress, so it grows while the job runs.",
        "example": {"modelRequests": 12, "inputTokens": 26112, "cachedTokens": 18432, "outputTokens": 3310,
                    "estimatedCostUsd": "0.003091", "flexFallbacks": 0}})
    model_requests: _Count = Field(description="Answered model requests (a batch's answered requests included).")
    input_tokens: _Count = Field(description="Prompt tokens, cached ones included.")
    cached_tokens: _Count = Field(description="Prompt tokens the provider served from its prompt cache.")
    output_tokens: _Count = Field(description="Completion tokens.")
    estimated_cost_usd: Annotated[str | None, WithJsonSchema({"type": ["string", "null"],
                                                              "pattern": "^[0-9]+\\.[0-9]{6}$"})] = Field(
        description="A decimal string in USD, from the price table; null when the job's model is not in it.")
    flex_fallbacks: _Count = Field(description="Flex-lane requests the provider had no flex capacity for, sent "
                                               "again on the standard tier (and priced there).")


class WebhookJob(Model):
    # The job representation (as `GET /jobs/{jobId}` answers it) without `deliveries`.
    job_id: str = Field(json_schema_extra={"format": "uuid"}, description="Random UUID v4.")
    report_id: ReportId
    period: _MaybePeriod = Field(description=(
        "The month the job reads; null only for an import created without `period` whose file is not read yet."))
    type: JobTypeValue = Field(description=(
        "The job's type, from one registry (its label and steps): " + _TYPES_LISTED + ". The rate limit of jobs "
        "per rolling hour counts per user and type."))
    type_label: str = Field(description="The type's label, for people (the dashboard and the CLI show it).",
                            examples=[_TYPES[_JobType.EXPENSE_REPORT].label])
    status: JobStatus
    status_message: NullableText = Field(description="Human-readable progress.")
    progress_percent: int = Field(ge=0, le=100, description="processedLines / totalLines, at most 99 until "
                                                            "`Completed` (then 100).")
    total_lines: _Count = Field(description="Lines of the period to process.")
    processed_lines: _Count = Field(description="Lines finished (categorized or flagged).")
    failed_lines: _Count = Field(description="Lines flagged for manual review.")
    cached_lines: _Count = Field(description=(
        "Lines answered from the tenant's vendor cache without a model request: the report's lines whose `source` "
        "is `cache` (an answer stored by an earlier job's model request, or by a person settling a line). A vendor "
        "met again within the job reuses its first answer and keeps that answer's source, so it is not counted "
        "here. Offline (no model configured) the rules answer and nothing is cached, so this is 0 unless a person "
        "settled one of the vendors before."))
    retry_count: _Count = Field(description=(
        "Model request retries: how many times a categorization request to the model provider was sent again "
        "(after a rate limit or a transient error) while this job ran. Not how many times the job was retried "
        "(POST /retry): that shows in the events (`retried`). 0 offline."))
    trigger: Literal["api", "schedule"] = Field(description=(
        "`api`: a user's request; `schedule`: the report's schedule or the nightly cache warming."))
    steps: list[JobStep] = Field(description="The job's steps in order, each with its status (see JobStep).")
    lane: LaneValue = Field("standard", description=(
        "The cost lane: `standard`, `flex` or `batch` (README: Lanes and prices). A `batch` job waits on the "
        "provider's batch (`statusMessage` says so) before its lines are categorized; lines the batch leaves "
        "unanswered are asked on the standard lane."))
    usage: Usage | Absent = Field(None, description="What the job's model requests used so far (every job this "
                                                   "API answers has it).")
    created_at: Timestamp
    started_at: _MaybeTime
    updated_at: Timestamp
    completed_at: _MaybeTime = Field(description="When the job became terminal.")
    estimated_completion_at: _MaybeTime
    error_message: NullableText = Field(description="Why the job failed; null otherwise.")
    status_url: str = Field(json_schema_extra={"format": "uri"}, description=(
        "`https://<host>/api/v1/jobs/{jobId}`: scheme and host from the request (`X-Forwarded-Proto`, `Host`), or "
        "PUBLIC_BASE_URL when set."))
    result_url: Annotated[str | None, WithJsonSchema({"type": ["string", "null"], "format": "uri"})] = Field(
        description="`<statusUrl>/result` once `Completed`, null before.")
    allowed_actions: list[JobActionValue] = Field(json_schema_extra={"uniqueItems": True}, description=(
        "What the caller may do with the job now, from its status: `cancel` (DELETE) while `Queued` or "
        "`Processing`; `retry` (POST /retry) once `Failed` or `Cancelled`; `result` (GET /result) and `settle` "
        "(PATCH a line) once `Completed`; none while `CancellationRequested`. Clients decide which actions to offer "
        "from this list, not from the status."))
    warm: WarmCounts | None = Field(default=None, description=(
        "A `cache_warm` job's vendors (null for every other type). Such a job is the tenant's own (one per tenant "
        "a warm run finds vendors due for, `trigger: schedule`): its `admin`s see it in `GET /jobs` and may cancel "
        "it; it is never retried and has no result. `reportId` is `cache-warm`, `period` the month it ran in, "
        "and `totalLines`/`processedLines` count its due vendors and those asked so far."))
    import_: ImportProgress | None = Field(default=None, alias="import", description=(
        "An import's file and what became of it (null for every other type). While it imports, `totalLines` and "
        "`processedLines` count the file's rows checked and stored; an `import_and_report` job then counts its "
        "report's lines as any report job. An import without a report has `reportId` `lines-import`."))


class Delivery(Model):
    model_config = ConfigDict(json_schema_extra={
        "description": "One delivery of a final job to one report target. The delay after failed attempt 1 to 7 is "
                       "5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (\u00b110% jitter; about a day in all), or the "
                       "receiver's `Retry-After` on a 429 or 503 when that is longer; after the 8th the delivery is "
                       "`Failed`.",
        "example": {"target": 1, "type": "webhook", "event": "job.completed",
                    "destination": "https://hooks.example.com/reports", "status": _DeliveryStatus.PENDING.value,
                    "attempts": 2, "lastError": "HTTP 500", "at": "2026-01-31T10:00:36.120Z",
                    "nextAttemptAt": "2026-01-31T10:05:31.004Z"}})
    target: int = Field(ge=0, le=9, description="The target's index in the report's `deliveryTargets` when the job "
                                                "became final.")
    type: Literal["webhook", "email"]
    event: FinalEventValue = Field(description="The final event sent (email: `job.completed` only).")
    destination: str = Field(description="The webhook's URL or the email address.")
    status: DeliveryStatus
    attempts: int = Field(ge=0, le=8, description="Attempts made so far (0 until the first; a retry starts again "
                                                  "at 0).")
    last_error: NullableText = Field(description=(
        "Why the last attempt failed (`HTTP 500`, `timed out after 15 s`, `connection refused`, `blocked: ...`); "
        "null after a success or before any attempt."))
    at: _MaybeTime = Field(description="When the last attempt was made.")
    next_attempt_at: _MaybeTime = Field(description="When the next attempt is due, while `Pending`; null otherwise.")


class Job(WebhookJob):
    # A job as `GET /jobs/{jobId}` answers it.
    deliveries: list[Delivery] = Field(description=(
        "One per report target that wants the job's final event (email targets: `job.completed`; webhook targets: "
        "the events they list), planned in the same write as the final status; `[]` until the job is final, and "
        "for a report with only `api` targets. Retry one with `POST /jobs/{jobId}/deliveries/{n}/retry`, `n` being "
        "its place in this list from 0."))


class ImportRequest(Model):
    # POST /imports. A file of any size the bucket takes: the answer carries the URL to PUT it to.
    model_config = ConfigDict(json_schema_extra={"example": {"format": "csv", "mode": "merge", "period": "2026-01"}})
    format: Literal["csv"] = Field(description="The file's format: `csv`, as POST /expenses takes it.")
    mode: Literal["merge", "replace"] = Field("merge", description=(
        "`merge` (default): the file's lines are added to the period's, a line with the same `lineId` replaced. "
        "`replace`: the period's lines become exactly the file's (the way to correct a month)."))
    period: Annotated[Period | Absent, _rule(validation.check_period)] = Field(None, description=(
        "The month the file holds; a row of another month is an error. Absent: the month of the file's first row. "
        "With it, one import of the period runs at a time (409 `existingJobId`)."))
    report_id: ReportId | Absent = Field(None, description=(
        "Generate this report on the period once the lines are stored (type `import_and_report`); the same "
        "permission and async target as `generate` are needed."))


class ImportAccepted(Job):
    # 202 to POST /imports: the job, and where to PUT its file.
    upload_url: str = Field(json_schema_extra={"format": "uri"}, description=(
        "A presigned S3 URL: PUT the file there with `Content-Type: text/csv`, within 15 minutes. The job starts "
        "when the file arrives; one never uploaded fails with a message saying so."))
    upload_expires_at: Timestamp = Field(description="When `uploadUrl` stops working (15 minutes on).")


class WebhookPayload(Model):
    model_config = ConfigDict(json_schema_extra={
        "description": "The body of every webhook request: compact JSON, under 20 kB."})
    type: WebhookEvent
    timestamp: Timestamp = Field(description="When this attempt was made (the `webhook-timestamp`).")
    data: WebhookJob


class JobList(Model):
    model_config = ConfigDict(json_schema_extra={
        "description": "The caller's jobs, newest first.",
        "example": {"items": [], "page": 1, "pageSize": 20, "totalCount": 0, "nextToken": None}})
    items: list[Job] = Field(max_length=100)
    page: int = Field(ge=1)
    page_size: int = Field(ge=1, le=100)
    total_count: _Count = Field(description=(
        "All the caller's jobs matching `status`, on every page: exact, kept by counters (per day of creation and "
        "status), so it costs the same for 10,000 jobs as for 10."))
    next_token: NullableText = Field(description="Token of the next page; null on the last.")


class Event(Model):
    at: Timestamp
    type: EventType
    detail: dict[str, Any] = Field(description=(
        "Facts of the event (free form, type dependent). `delivery_attempt`: `n` (the delivery's place in "
        "`deliveries`), `target`, `type`, `event`, `attempt`, `outcome` (`delivered` or `failed`), `status`, and "
        "`error` and `nextAttemptAt` when they apply. `delivery_retry_requested`: `n`, `target`, `type`, `from` (the "
        "status retried) and `by`."))


class EventList(Model):
    model_config = ConfigDict(json_schema_extra={"description": "One page of the job's audit trail, oldest first."})
    items: list[Event]
    next_token: NullableText = Field(description="Pass as `nextToken` for the next page; null on the last page.")


# --- results ---------------------------------------------------------------------------------------------------


class Total(Model):
    model_config = ConfigDict(json_schema_extra={
        "description": "Sum of the settled lines of one category in one currency (lines needing review are not in "
                       "any total)."})
    category: str
    currency: Currency
    amount: Annotated[Decimal, PlainSerializer(str, return_type=str, when_used="json"), WithJsonSchema({
        "type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$", "description": "Decimal string."})]
    lines: int = Field(ge=1)


class ResultLine(Model):
    line_id: LineId
    date: str = Field(json_schema_extra={"format": "date"})
    vendor: str
    amount: Amount
    currency: Currency
    description: str = Field(description="The line's description as imported (`\"\"` when it had none), as in the "
                                         "CSV export.")
    category: NullableText = Field(description="One of the report's categories; null when no category could be "
                                               "given (then `needsReview` is true).")
    confidence: float = Field(ge=0, le=1)
    source: Literal["cache", "model", "rules", "manual"] = Field(
        description="Who answered: the vendor cache, the model, the offline rules, or a person (PATCH).")
    needs_review: bool


class Result(Model):
    job_id: str = Field(json_schema_extra={"format": "uuid"})
    report_id: ReportId
    period: Period
    generated_at: Timestamp
    totals: list[Total]
    needs_review: _Count = Field(description="Lines flagged for review.")
    lines: list[ResultLine] = Field(description=(
        "Every line of the period, in import order (see importExpenses): lines imported earlier first, a request's "
        "lines in its order. Lines stored before import order was kept come first, by lineId. `?format=csv` lists "
        "them in the same order."))


class LinePatch(Model):
    # A person's category for one line. (Its rules stay in jobs/actions.settle_line, which checks them after it has
    # found the job, so that another user's job is 404 whatever the body.)
    model_config = ConfigDict(json_schema_extra={"example": {"category": "Lodging"}})
    category: Category = Field(description="One of the report's categories (its taxonomy as of the job's creation); "
                                           "anything else is 400.")


# --- meta ------------------------------------------------------------------------------------------------------

_Check = Literal["ok", "missing", "timeout", "unreachable", "denied", "error"]


class Health(BaseModel):
    status: Literal["ok"]


class ReadinessChecks(Model):
    model_config = ConfigDict(json_schema_extra={"description": "Each part's answer: `ok`, or why not."})
    table: _Check = Field(description="The job table (GetItem).")
    queue: _Check = Field(description="The work queue (GetQueueAttributes).")
    bucket: _Check = Field(description="The results bucket (HeadBucket).")


class Readiness(Model):
    status: Literal["ready"]
    checks: ReadinessChecks


class Problem(Model):
    # RFC 9457 problem details (chalicelib/api/problems.py writes them).
    model_config = ConfigDict(extra="allow", json_schema_extra={
        "description": "RFC 9457 problem details. `type` is one of the registered problem types (listed, with status "
                       "and title, in `x-problem-types`); its `title` is always the same. Extension members appear "
                       "only where they apply."})
    type: ProblemTypeUri = Field(
        json_schema_extra={"format": "uri"}, description="`urn:reports:problem:<slug>`, a slug of `x-problem-types`.")
    title: str
    status: int = Field(ge=400, le=599, description="The HTTP status code of the response.")
    detail: str = Field(description="What went wrong, for a person to read.")
    existing_job_id: str | Absent = Field(None, json_schema_extra={"format": "uuid"}, description=(
        "409 on generate/retry: the active job for the same user, report and period."))
    field: str | Absent = Field(None, description=(
        "400: the input field at fault (e.g. `period`, `pageSize`, `currency`, `deliveryTargets[0]`, "
        "`deliveryTargets[0].url`, `n`)."))
    line: str | Absent = Field(None, description=(
        "400 on expense import: the line at fault, `lines[i]` (JSON, 0-based) or `row N` (CSV, the header is row "
        "1)."))
    job_status: JobStatus | Absent = Field(None, description="409 on job actions: the job's current status.")
    delivery_status: DeliveryStatus | Absent = Field(
        None, description="409 on a delivery retry: the delivery's status (`Pending`).")
    checks: ReadinessChecks | Absent = Field(
        None, description="503 on `GET /health/ready`: each part's answer.")


# --- query strings ---------------------------------------------------------------------------------------------


class Query(Model):
    """A query string: its parameters by name; others are ignored, as they always were."""

    model_config = ConfigDict(extra="ignore")


def _page_size(what: str, default: int, maximum: int, note: str = "") -> tuple[FieldInfo, BeforeValidator]:
    """The metadata of a `pageSize` parameter: `page_size: Annotated[int, *_page_size(...)]`."""
    return (FieldInfo.from_field(default, ge=1, le=maximum,
                                 description=f"{what} per page, 1-{maximum} (default {default}{note}); anything else "
                                             "is 400."),
            BeforeValidator(lambda raw: paging.page_size(raw, default=default, maximum=maximum)))


# Checked where the token is read (its content depends on the list): only documented here.
NextTokenParam = Annotated[str | None, WithJsonSchema({"type": "string", "maxLength": 2048}), Field(
    None, description="Opaque token from the previous page's `nextToken`; anything else (a token that is not one "
                      "this API issued, or one edited to name a key DynamoDB refuses) is 400 with `field: "
                      "nextToken`.")]


def _page(raw: Any) -> int:
    if not isinstance(raw, str) or not re.fullmatch(r"[0-9]{1,5}", raw) or not 1 <= int(raw) <= 10_000:
        raise ValidationFailed("page: must be an integer from 1 to 10000.", field="page")
    return int(raw)


def _result_format(raw: Any) -> str:
    fmt = raw or "json"
    if fmt not in ("json", "csv"):
        raise ValidationFailed("format: must be json or csv.", field="format")
    return fmt


class ReportListQuery(Query):
    page_size: Annotated[int, *_page_size("Reports", 20, 100)]
    next_token: NextTokenParam


class ExpenseListQuery(Query):
    period: Annotated[Period, _rule(validation.check_period)] = Field(description="The month (`YYYY-MM`); required.")
    page_size: Annotated[int, *_page_size("Lines", 100, 1000)]
    next_token: NextTokenParam

    @model_validator(mode="before")
    @classmethod
    def _period_required(cls, data: Any) -> Any:
        return {"period": None, **data}  # absent: "period: must be a month YYYY-MM.", as the rule says


class ExpenseDeleteQuery(Query):
    period: Annotated[Period, _rule(validation.check_period)] = Field(description="The month (`YYYY-MM`); required.")

    @model_validator(mode="before")
    @classmethod
    def _period_required(cls, data: Any) -> Any:
        return {"period": None, **data}


class JobListQuery(Query):
    page_size: Annotated[int, *_page_size("Jobs", 20, 100)]
    page: Annotated[int | None, BeforeValidator(_page), WithJsonSchema(
        {"type": "integer", "minimum": 1, "maximum": 10000})] = Field(
        None, json_schema_extra={"default": 1},
        description="1-based page number, 1-10000 (default 1); ignored when `nextToken` is given. A page past the end "
                    "is empty.")
    # Checked by jobs.service.list_jobs, after pageSize and page, as it always was.
    status: Annotated[JobStatus | None, PlainValidator(lambda raw: raw, json_schema_input_type=JobStatus)] = \
        Field(None, description="Only jobs with this status; an unknown status is 400.")
    next_token: NextTokenParam


class EventListQuery(Query):
    page_size: Annotated[int, *_page_size("Events", 1000, 1000, ": a whole trail in one page for almost every job")]
    next_token: NextTokenParam


class ResultQuery(Query):
    format: Annotated[Literal["json", "csv"], BeforeValidator(_result_format)] = Field(
        "json", description="`json` (default) or `csv` (the lines as CSV); anything else is 400.")


# The models whose schemas the document holds, in its order (a model they use comes with it).
REQUESTS: tuple[type[BaseModel], ...] = (ReportConfigInput, ReportConfigPatch, ExpenseImport, ExpenseLineInput,
                                        GenerateRequest, LinePatch, ImportRequest)
RESPONSES: tuple[type[BaseModel], ...] = (Problem, ReportConfig, ReportList, WebhookSecretRotation, ImportResult,
                                         ExpenseLinePage, Job, ImportAccepted, JobList, EventList, Result, Health,
                                         Readiness, WebhookPayload)
QUERIES: tuple[type[Query], ...] = (ReportListQuery, ExpenseListQuery, JobListQuery, EventListQuery, ResultQuery)
