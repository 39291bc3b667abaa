"""PynamoDB models of the tables declared in infra/template.yaml."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from functools import lru_cache
from typing import Any, TypeVar, cast

from botocore.parsers import JSONParser, ResponseParserFactory
from pynamodb.attributes import (
    BooleanAttribute,
    JSONAttribute,
    ListAttribute,
    MapAttribute,
    NumberAttribute,
    TTLAttribute,
    UnicodeAttribute,
)
from pynamodb.connection import Connection, TableConnection
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex, IncludeProjection
from pynamodb.models import Model

from chalicelib.deps import BOTO_CONFIG
from chalicelib.settings import get_settings

# Nothing here reads the settings at import: a table's name, region and endpoint are read when a model first
# makes its connection (`_TableMeta`), so importing this module (a test collecting it, a tool listing tables)
# fixes nothing about the environment.


class _TableMeta(type):
    """The metaclass of a model's `Meta`: PynamoDB reads `Meta.table_name` (and region, host) at each connection
    check, so these properties read the settings at first use, not at import."""

    table: str  # the table's name without the stage's prefix

    @property
    def table_name(cls) -> str:
        return get_settings().table(cls.table)

    @property
    def region(cls) -> str:
        return get_settings().region

    @property
    def host(cls) -> str | None:
        return get_settings().aws_endpoint_url


class _Meta(metaclass=_TableMeta):
    # Every attribute PynamoDB would fill in at class creation (MetaModel), since `_table` sets Meta afterwards.
    # Timeouts and retries: chalicelib.deps.BOTO_CONFIG (only the client of `connection()` is ever used).
    connect_timeout_seconds = BOTO_CONFIG.connect_timeout
    read_timeout_seconds = BOTO_CONFIG.read_timeout
    max_retry_attempts = BOTO_CONFIG.retries["total_max_attempts"] - 1  # also caps batch-write retries
    max_pool_connections = 10  # PynamoDB's default
    extra_headers = None
    aws_access_key_id = None
    aws_secret_access_key = None
    aws_session_token = None


_M = TypeVar("_M", bound=Model)


def _table(name: str) -> Callable[[type[_M]], type[_M]]:
    """Give a model its table: `Meta` is set after the class is made, because PynamoDB's metaclass would ask the
    Meta of a class body for its region and host (reading the settings at import)."""

    def bind(model: type[_M]) -> type[_M]:
        setattr(model, "Meta", _TableMeta("Meta", (_Meta,), {"table": name}))  # noqa: B010 (PynamoDB's Meta type)
        return model

    return bind


@lru_cache(maxsize=1)
def connection() -> Connection:
    """One connection for transactions: building one per call reloads botocore's models (~0.1 s)."""
    s = get_settings()
    conn = Connection(region=s.region, host=s.aws_endpoint_url, connect_timeout_seconds=BOTO_CONFIG.connect_timeout,
                      read_timeout_seconds=BOTO_CONFIG.read_timeout, retry_configuration=BOTO_CONFIG.retries)
    endpoint = conn.client._endpoint
    endpoint._response_parser_factory = _PlainReads.replacing(endpoint._response_parser_factory)
    return conn


_PLAIN_OUTPUTS = frozenset({"GetItemOutput", "QueryOutput", "ScanOutput", "BatchGetItemOutput",
                            "BatchWriteItemOutput", "PutItemOutput", "UpdateItemOutput", "DeleteItemOutput",
                            "TransactWriteItemsOutput", "TransactGetItemsOutput"})


class _PlainJSONParser(JSONParser):
    """A data-plane answer is already its parsed form: json.loads is all it needs.

    botocore walks every attribute value of every item against the service model after json.loads, to decode
    blobs and timestamps; a data-plane output has no timestamps, so only a body with a binary value ("B", "BS")
    needs that walk. Reading 300 lines, the walk took a third of the time from the request to the models.
    """

    def _do_parse(self, response: dict, shape: Any) -> dict:
        body = response["body"]
        if shape is not None and shape.name in _PLAIN_OUTPUTS and b'"B"' not in body and b'"BS"' not in body:
            parsed = json.loads(body) if body else {}
            self._inject_response_metadata(parsed, response["headers"])
            return parsed
        return super()._do_parse(response, shape)


class _PlainReads(ResponseParserFactory):
    @classmethod
    def replacing(cls, original: ResponseParserFactory) -> ResponseParserFactory:
        factory = cls()
        factory._defaults = dict(getattr(original, "_defaults", {}))
        return factory

    def create_parser(self, protocol_name: str) -> Any:
        if protocol_name == "json":
            return _PlainJSONParser(**self._defaults)
        return super().create_parser(protocol_name)


_client_lock = threading.Lock()


class _Model(Model):
    """Every table shares the one botocore client of `connection()`.

    PynamoDB builds a client per model class, and a thread that finds one missing builds its own: the worker's
    model-request threads each built clients at once (a botocore session and service model apiece), which cost
    a fifth of a worker's CPU and most of its memory growth in the scale-out benchmark.
    """

    @classmethod
    def _get_connection(cls) -> TableConnection:
        table = super()._get_connection()
        if table.connection._client is None:
            with _client_lock:
                table.connection._client = connection().client
        return table


def _texts(**options: Any) -> ListAttribute[str]:
    """A list of strings. (PynamoDB's stubs type `ListAttribute(of=UnicodeAttribute)` as a list of attributes.)"""
    return cast("ListAttribute[str]", ListAttribute(of=UnicodeAttribute, **options))


class ScheduleIndex(GlobalSecondaryIndex):
    class Meta:
        index_name = "bySchedule"
        projection = AllProjection()

    schedule_day = NumberAttribute(hash_key=True, attr_name="scheduleDay")
    report_id = UnicodeAttribute(range_key=True, attr_name="reportId")


@_table("reports")
class ReportConfig(_Model):
    """A report id is unique within its tenant (the tenant key of chalicelib.auth), not across tenants."""

    tenant = UnicodeAttribute(hash_key=True)
    report_id = UnicodeAttribute(range_key=True, attr_name="reportId")
    owner_id = UnicodeAttribute(attr_name="ownerId")
    name = UnicodeAttribute()
    delivery_targets = JSONAttribute(attr_name="deliveryTargets")
    allowed_roles = _texts(attr_name="allowedRoles", default=list)
    categories = _texts()
    schedule = JSONAttribute(null=True)
    schedule_day = NumberAttribute(null=True, attr_name="scheduleDay")
    created_at = UnicodeAttribute(attr_name="createdAt")
    # Bumped by every write (create: 1, each PATCH: +1); the ETag names it and a PATCH is conditional on it.
    # None on a report stored before it existed: version 0.
    version = NumberAttribute(null=True)
    # Set (epoch seconds) while a DELETE checks for active jobs: creating a job condition-checks it is absent or
    # past (jobs/create._commit), so no job starts between that check and the delete. Past, it is ignored.
    deleting_until = NumberAttribute(null=True, attr_name="deletingUntil")
    # Standard Webhooks signing secrets, newest first: [{"secret": "whsec_...", "createdAt": iso, "expiresAt":
    # epoch | None}]. Never in a representation after the response that created it (chalicelib/delivery).
    webhook_secrets = JSONAttribute(null=True, attr_name="webhookSecrets")
    # Bumped by each rotation: two rotations at once, one wins (the other would hand out a secret never stored).
    secret_version = NumberAttribute(null=True, attr_name="secretVersion")
    # Webhook URLs whose receiver answered 410 Gone: {url: iso time}. Not sent to until re-enabled.
    disabled_targets = JSONAttribute(null=True, attr_name="disabledTargets")
    # The cost lane of its jobs (categorize/prices.LANES); None: the default of the job's trigger.
    lane = UnicodeAttribute(null=True)
    by_schedule = ScheduleIndex()


@_table("lines")
class ExpenseLine(_Model):
    owner_period = UnicodeAttribute(hash_key=True, attr_name="ownerPeriod")
    line_id = UnicodeAttribute(range_key=True, attr_name="lineId")
    date = UnicodeAttribute()
    vendor = UnicodeAttribute()
    amount = UnicodeAttribute()  # decimal string: never a float in storage
    currency = UnicodeAttribute()
    description = UnicodeAttribute(default="")
    imported_at = UnicodeAttribute(attr_name="importedAt")
    # Import order (lines/store.import_seq): reports list lines by it. None on a line stored before it existed.
    import_seq = UnicodeAttribute(null=True, attr_name="importSeq")
    # Set at import (lines/store.line_expiry); None on a line stored before it existed: kept until deleted.
    expires_at = TTLAttribute(null=True, attr_name="expiresAt")


@_table("lines")
class LinesGarbage(_Model):
    """A version of a period's lines no longer current (replaced, deleted, or an import's that never committed),
    due for deletion at `due`: one partition (`gc#versions`) sorted by due time, swept by the reaper
    (lines/versions.sweep). In the lines table, where no line's key can take that partition (a period is YYYY-MM)."""

    owner_period = UnicodeAttribute(hash_key=True, attr_name="ownerPeriod")  # always GC_PARTITION
    line_id = UnicodeAttribute(range_key=True, attr_name="lineId")  # "<due epoch, 10 digits>#<lines partition>"
    partition = UnicodeAttribute()  # the ownerPeriod of the version's lines
    owner_id = UnicodeAttribute(attr_name="ownerId")
    period = UnicodeAttribute()
    version = UnicodeAttribute()
    expires_at = TTLAttribute(null=True, attr_name="expiresAt")


class Delivery(MapAttribute):
    """One delivery of a finished job to one of its report's targets (chalicelib/delivery/service.py)."""

    id = UnicodeAttribute()  # the webhook-id: the same across the attempts of one delivery
    target = NumberAttribute()  # its place in the report's deliveryTargets
    type = UnicodeAttribute()  # email | webhook
    event = UnicodeAttribute()  # job.completed | job.failed | job.cancelled
    destination = UnicodeAttribute()
    status = UnicodeAttribute()  # DeliveryStatus
    attempts = NumberAttribute(default=0)
    last_error = UnicodeAttribute(null=True, attr_name="lastError")
    at = UnicodeAttribute(null=True)  # the last attempt's end
    next_at = NumberAttribute(default=0, attr_name="nextAt")  # epoch seconds: not attempted before
    lease_until = NumberAttribute(default=0, attr_name="leaseUntil")  # epoch seconds: an attempt under way
    # The report's createdAt when planned: an attempt goes out only while the same report (not one deleted and
    # made again with that id, by someone else and with another secret) still has this destination.
    report_created_at = UnicodeAttribute(null=True, attr_name="reportCreatedAt")


class JobStep(MapAttribute):
    """One of a job's ordered steps (chalicelib/jobs/stepplan.py): written only by the job store (store/steps.py)."""

    name = UnicodeAttribute()  # a jobs.types.Step
    status = UnicodeAttribute(default="Pending")  # a jobs.states.StepStatus
    started_at = UnicodeAttribute(null=True, attr_name="startedAt")
    completed_at = UnicodeAttribute(null=True, attr_name="completedAt")
    attempts = NumberAttribute(default=0)
    progress = NumberAttribute(null=True, attr_name="progressPercent")  # only a step that counts its work
    error = UnicodeAttribute(null=True, attr_name="errorMessage")  # user-safe


class OwnerIndex(GlobalSecondaryIndex):
    class Meta:
        index_name = "byOwner"
        projection = AllProjection()

    owner_id = UnicodeAttribute(hash_key=True, attr_name="ownerId")
    created_at = UnicodeAttribute(range_key=True, attr_name="createdAt")


class ActiveIndex(GlobalSecondaryIndex):
    class Meta:
        index_name = "byActive"
        # Keys and chunkCount only (infra/template.yaml): heartbeatAt moves at every checkpoint, and each move
        # rewrites the index entry. The reaper reads a job it acts on by key (reaper.stale_jobs).
        projection = IncludeProjection(["chunkCount"])

    active_status = UnicodeAttribute(hash_key=True, attr_name="activeStatus")
    heartbeat_at = UnicodeAttribute(range_key=True, attr_name="heartbeatAt")


@_table("jobs")
class Job(_Model):
    job_id = UnicodeAttribute(hash_key=True, attr_name="jobId")
    owner_id = UnicodeAttribute(attr_name="ownerId")
    # The tenant key (chalicelib.auth) the vendor cache is scoped by; None on a job from before tenants, whose
    # owner key is a bare sub and so is its tenant key too.
    tenant = UnicodeAttribute(null=True)
    report_id = UnicodeAttribute(attr_name="reportId")
    period = UnicodeAttribute()
    type = UnicodeAttribute(default="expense_report")
    status = UnicodeAttribute()
    # Mirrors status while the job is live, absent once terminal (sparse index).
    active_status = UnicodeAttribute(null=True, attr_name="activeStatus")
    status_message = UnicodeAttribute(null=True, attr_name="statusMessage")
    trigger = UnicodeAttribute(default="api")
    categories = _texts(default=list)
    total_lines = NumberAttribute(default=0, attr_name="totalLines")
    processed_lines = NumberAttribute(default=0, attr_name="processedLines")
    failed_lines = NumberAttribute(default=0, attr_name="failedLines")
    cached_lines = NumberAttribute(default=0, attr_name="cachedLines")
    retry_count = NumberAttribute(default=0, attr_name="retryCount")
    created_at = UnicodeAttribute(attr_name="createdAt")
    started_at = UnicodeAttribute(null=True, attr_name="startedAt")
    updated_at = UnicodeAttribute(attr_name="updatedAt")
    completed_at = UnicodeAttribute(null=True, attr_name="completedAt")
    heartbeat_at = UnicodeAttribute(null=True, attr_name="heartbeatAt")
    estimated_completion_at = UnicodeAttribute(null=True, attr_name="estimatedCompletionAt")
    error_message = UnicodeAttribute(null=True, attr_name="errorMessage")
    lock_key = UnicodeAttribute(attr_name="lockKey")
    # Checkpoint: the last lineId whose result is written; "" before the first batch.
    cursor = UnicodeAttribute(default="")
    lease_owner = UnicodeAttribute(null=True, attr_name="leaseOwner")
    lease_until = NumberAttribute(null=True, attr_name="leaseUntil")
    rate_limited_seconds = NumberAttribute(default=0, attr_name="rateLimitedSeconds")
    reap_count = NumberAttribute(default=0, attr_name="reapCount")
    result_key = UnicodeAttribute(null=True, attr_name="resultKey")
    needs_review = NumberAttribute(default=0, attr_name="needsReview")
    result_version = NumberAttribute(default=0, attr_name="resultVersion")
    # Fan-out: how many chunks the job was split into (0: worked whole) and how many are done.
    chunk_count = NumberAttribute(default=0, attr_name="chunkCount")
    chunks_done = NumberAttribute(default=0, attr_name="chunksDone")
    # The plan, recorded once before any chunk exists: chunk n is (bounds[n-1], bounds[n]] ("" for open ends).
    chunk_bounds = _texts(null=True, attr_name="chunkBounds")
    # Wall-clock rate-limit accounting (runner.note_wait): the end of the latest wait counted, epoch seconds.
    limited_until = NumberAttribute(null=True, attr_name="limitedUntil")
    # Recheck after a retry (worker/recheck.py): the last flagged lineId asked again.
    recheck_after = UnicodeAttribute(null=True, attr_name="recheckAfter")
    # Set by retry: flagged lines before the cursor are tried again once on resume.
    recheck_flagged = BooleanAttribute(default=False, attr_name="recheckFlagged")
    # Deliveries of the job's last final status (chalicelib/delivery/service.py); gone when it is retried.
    deliveries = ListAttribute(of=Delivery, null=True)
    # Set with activeStatus "Delivering" at the final transition: whose mark it is (a later final status makes
    # its own), so only that outbox's writer or sweep clears it. "<id>:unplanned" when planning failed.
    outbox_id = UnicodeAttribute(null=True, attr_name="outboxId")
    # A cache_warm job's vendors (categorize/warm_jobs.py): asked and cached, asked and not cached, seen but not due.
    vendors_refreshed = NumberAttribute(null=True, attr_name="vendorsRefreshed")
    vendors_failed = NumberAttribute(null=True, attr_name="vendorsFailed")
    vendors_skipped = NumberAttribute(null=True, attr_name="vendorsSkipped")
    # The version of the period's lines the job reads (lines/versions.py), pinned when it starts: a report reads
    # the lines it started on whatever an import commits meanwhile. None: the period's unversioned lines.
    lines_version = UnicodeAttribute(null=True, attr_name="linesVersion")
    # A lines_import / import_and_report job's file and progress (lines/importer.py): {"key", "mode", "stage",
    # "version", "rows", "stored", "new", "errors", "errorCount", ...}. None for every other type.
    lines_import = JSONAttribute(null=True, attr_name="linesImport")
    # The cost lane (categorize/prices.LANES); None on a job from before lanes: standard.
    lane = UnicodeAttribute(null=True)
    # What the job's model requests used (categorize/usage.py), added with the checkpoints' counts. The cost in
    # billionths of a USD, so that it adds exactly; `usageUnpriced` counts answers the price table cannot price.
    usage_requests = NumberAttribute(null=True, attr_name="usageRequests")
    usage_input_tokens = NumberAttribute(null=True, attr_name="usageInputTokens")
    usage_cached_tokens = NumberAttribute(null=True, attr_name="usageCachedTokens")
    usage_output_tokens = NumberAttribute(null=True, attr_name="usageOutputTokens")
    usage_cost_nanos = NumberAttribute(null=True, attr_name="usageCostNanos")
    usage_unpriced = NumberAttribute(null=True, attr_name="usageUnpriced")
    flex_fallbacks = NumberAttribute(null=True, attr_name="flexFallbacks")
    # The batch lane (worker/batchlane.py): the provider's batch, its state (submitted -> collected, or
    # cancelled) and the S3 keys of the request plan and of the collected answers.
    batch_id = UnicodeAttribute(null=True, attr_name="batchId")
    batch_state = UnicodeAttribute(null=True, attr_name="batchState")
    batch_plan_key = UnicodeAttribute(null=True, attr_name="batchPlanKey")
    batch_answers_key = UnicodeAttribute(null=True, attr_name="batchAnswersKey")
    # The plan of a batch about to be created (written before the create, removed when the job records the batch):
    # the job's next invocation looks for that batch at the provider only when it is set.
    batch_intent = UnicodeAttribute(null=True, attr_name="batchIntent")
    # The job's ordered steps and a version every steps write checks and bumps (store/steps.steps_unchanged);
    # absent on a job from before steps.
    steps = ListAttribute(of=JobStep, null=True)
    steps_version = NumberAttribute(default=0, attr_name="stepsVersion")
    expires_at = TTLAttribute(attr_name="expiresAt")
    by_owner = OwnerIndex()
    by_active = ActiveIndex()


@_table("chunks")
class JobChunk(_Model):
    """A range of a large job's lines, (after, upto], worked by one invocation at a time."""

    job_id = UnicodeAttribute(hash_key=True, attr_name="jobId")
    chunk = NumberAttribute(range_key=True)
    after = UnicodeAttribute(default="")
    upto = UnicodeAttribute(default="")  # "" for the last chunk: up to the end of the month's lines
    cursor = UnicodeAttribute(default="")
    status = UnicodeAttribute(default="Pending")  # Pending | Running | Done
    lease_owner = UnicodeAttribute(null=True, attr_name="leaseOwner")
    lease_until = NumberAttribute(null=True, attr_name="leaseUntil")
    heartbeat_at = UnicodeAttribute(attr_name="heartbeatAt")
    reap_count = NumberAttribute(default=0, attr_name="reapCount")
    processed = NumberAttribute(default=0)
    expires_at = TTLAttribute(attr_name="expiresAt")


@_table("events")
class JobEvent(_Model):
    job_id = UnicodeAttribute(hash_key=True, attr_name="jobId")
    event_key = UnicodeAttribute(range_key=True, attr_name="eventKey")
    at = UnicodeAttribute()
    type = UnicodeAttribute()
    detail = JSONAttribute(default=dict)
    expires_at = TTLAttribute(attr_name="expiresAt")


@_table("results")
class LineResult(_Model):
    job_id = UnicodeAttribute(hash_key=True, attr_name="jobId")
    line_id = UnicodeAttribute(range_key=True, attr_name="lineId")
    date = UnicodeAttribute()
    vendor = UnicodeAttribute()
    amount = UnicodeAttribute()
    currency = UnicodeAttribute()
    description = UnicodeAttribute(default="")
    category = UnicodeAttribute(null=True)
    confidence = NumberAttribute(default=0)
    source = UnicodeAttribute()
    needs_review = BooleanAttribute(default=False, attr_name="needsReview")
    # The expense line's import order, copied by the worker (worker/rows.py); the report lists lines by it.
    import_seq = UnicodeAttribute(null=True, attr_name="importSeq")
    expires_at = TTLAttribute(attr_name="expiresAt")


class SeenDayIndex(GlobalSecondaryIndex):
    class Meta:
        index_name = "bySeenDay"
        projection = AllProjection()

    seen_day = UnicodeAttribute(hash_key=True, attr_name="seenDay")
    cache_key = UnicodeAttribute(range_key=True, attr_name="cacheKey")


@_table("vendor-cache")
class VendorSeen(_Model):
    """`seen#<cache key>`: a vendor met by one tenant's job, for the nightly cache warmer."""

    cache_key = UnicodeAttribute(hash_key=True, attr_name="cacheKey")
    # The tenant key whose cache the warmer fills; None on a note from before tenants (the warmer skips it).
    tenant = UnicodeAttribute(null=True)
    seen_day = UnicodeAttribute(attr_name="seenDay")
    vendor = UnicodeAttribute()
    description = UnicodeAttribute(default="")
    categories = _texts()
    expires_at = TTLAttribute(attr_name="expiresAt")
    by_seen_day = SeenDayIndex()


@_table("vendor-cache")
class VendorCacheEntry(_Model):
    """One tenant's answer for a vendor under a taxonomy: `<tenant scope>#<taxonomy>#<vendor>` (categorize/cache.py)."""

    cache_key = UnicodeAttribute(hash_key=True, attr_name="cacheKey")
    vendor = UnicodeAttribute()
    category = UnicodeAttribute()
    confidence = NumberAttribute()
    source = UnicodeAttribute()
    model = UnicodeAttribute(null=True)
    updated_at = UnicodeAttribute(attr_name="updatedAt")
    expires_at = TTLAttribute(null=True, attr_name="expiresAt")
    # Set on an answer under the confidence bar: only that job's other chunks read it (categorize/cache.py).
    job_id = UnicodeAttribute(null=True, attr_name="jobId")


@_table("vendor-cache")
class VendorClaim(_Model):
    """"One chunk of this job is asking the model about this vendor until `until`" (categorize/claims.py).

    In the vendor-cache table beside the answers, under its own key (`claim#{jobId}#{cacheKey}`), so a claim is
    never read as an answer and never blocks another job.
    """

    cache_key = UnicodeAttribute(hash_key=True, attr_name="cacheKey")
    owner = UnicodeAttribute()
    until = NumberAttribute()  # epoch seconds
    expires_at = TTLAttribute(attr_name="expiresAt")


@_table("control")
class Control(_Model):
    """Locks and rate windows: small items written next to the job in one transaction."""

    pk = UnicodeAttribute(hash_key=True)
    job_id = UnicodeAttribute(null=True, attr_name="jobId")
    stamps: MapAttribute[str, Any] = MapAttribute(null=True)  # rate window: {jobId: epoch seconds}
    version = NumberAttribute(default=0)
    # Shared model-provider limiter: bucket levels at `level_at` (epoch seconds).
    level_requests = NumberAttribute(null=True, attr_name="levelRequests")
    level_tokens = NumberAttribute(null=True, attr_name="levelTokens")
    level_at = NumberAttribute(null=True, attr_name="levelAt")
    # Its limits learned from the provider's x-ratelimit-limit-* headers (0: not advertised), the probe that is
    # learning them (until when it may go alone), and the end of the last 429's hold (epoch seconds).
    learned_rpm = NumberAttribute(null=True, attr_name="learnedRpm")
    learned_tpm = NumberAttribute(null=True, attr_name="learnedTpm")
    probe_until = NumberAttribute(null=True, attr_name="probeUntil")
    held_until = NumberAttribute(null=True, attr_name="heldUntil")
    # Job counts of one user and creation day, by status (jobs/counts.py): top-level, so a transition can ADD.
    n_queued = NumberAttribute(null=True, attr_name="nQueued")
    n_processing = NumberAttribute(null=True, attr_name="nProcessing")
    n_cancellation_requested = NumberAttribute(null=True, attr_name="nCancellationRequested")
    n_completed = NumberAttribute(null=True, attr_name="nCompleted")
    n_failed = NumberAttribute(null=True, attr_name="nFailed")
    n_cancelled = NumberAttribute(null=True, attr_name="nCancelled")
    # A period's lines pointer (`lines#<owner>#<period>`, lines/versions.py): the version its lines are read from.
    lines_version = UnicodeAttribute(null=True, attr_name="linesVersion")
    # Fair shares' demand registry (chalicelib/fair/demand.py), one item: "tenant|message" -> when it is visible,
    # "tenant|invocation" -> when that invocation's entry lapses.
    fair_waiting: MapAttribute[str, Any] = MapAttribute(null=True, attr_name="fairWaiting")
    fair_running: MapAttribute[str, Any] = MapAttribute(null=True, attr_name="fairRunning")
    fair_rescue: MapAttribute[str, Any] = MapAttribute(null=True, attr_name="fairRescue")  # tenant -> until
    fair_taken: MapAttribute[str, Any] = MapAttribute(null=True, attr_name="fairTaken")  # tenant -> last take
    expires_at = TTLAttribute(null=True, attr_name="expiresAt")
