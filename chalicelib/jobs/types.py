"""The job types: one registry that the API, worker, dashboard, CLI and OpenAPI document read.

Every long-running piece of work is a job of one of these types, tracked the same way: a status from the one state
machine (jobs/states.py), ordered steps (the unit a retry resumes from), a trigger (`api` for a user's request,
`schedule` for EventBridge) and a rate limit of `JOBS_PER_HOUR` per user and type.

Delivery is not a type of its own here: a report's webhook and email deliveries are the `deliver` step of the job
whose result they carry (chalicelib/delivery), so a delivery is tracked on that job.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class JobType(StrEnum):
    EXPENSE_REPORT = "expense_report"
    LINES_IMPORT = "lines_import"
    IMPORT_AND_REPORT = "import_and_report"
    CACHE_WARM = "cache_warm"


class Step(StrEnum):
    """Every step name any type uses, in no particular order (a type's `steps` give the order)."""

    # lines_import: the file arrives, every row is checked, the rows are written to a staged version, then the
    # staged version becomes the period's lines in one conditional write.
    UPLOAD = "upload"
    VALIDATE = "validate"
    STAGE = "stage"
    COMMIT = "commit"
    # expense_report: count and pin the period's lines, categorize them, write the report, deliver it.
    COLLECT = "collect"
    CATEGORIZE = "categorize"
    ASSEMBLE = "assemble"
    DELIVER = "deliver"
    # cache_warm: choose the tenant's vendors due a refresh, then ask the model again.
    SELECT = "select"
    REFRESH = "refresh"


_IMPORT = (Step.UPLOAD, Step.VALIDATE, Step.STAGE, Step.COMMIT)
_REPORT = (Step.COLLECT, Step.CATEGORIZE, Step.ASSEMBLE)


@dataclass(frozen=True)
class JobTypeSpec:
    type: JobType
    label: str  # what the dashboard and CLI show (`typeLabel`)
    steps: tuple[Step, ...]  # in order; `deliver` is added to a report job whose report has delivery targets
    trigger: str = "api"  # the trigger of a job of this type unless its creator says otherwise
    description: str = ""


REGISTRY: dict[JobType, JobTypeSpec] = {spec.type: spec for spec in (
    JobTypeSpec(JobType.EXPENSE_REPORT, "Generate report", _REPORT,
                description="Categorize a period's expense lines and write the report."),
    JobTypeSpec(JobType.LINES_IMPORT, "Import expense lines", _IMPORT,
                description="Validate an uploaded CSV file and store its lines, all or none."),
    JobTypeSpec(JobType.IMPORT_AND_REPORT, "Import and generate", _IMPORT + _REPORT,
                description="Import an uploaded CSV file, then generate a report on the imported period."),
    JobTypeSpec(JobType.CACHE_WARM, "Warm vendor cache", (Step.SELECT, Step.REFRESH), trigger="schedule",
                description="Refresh a tenant's vendor cache (nightly)."),
)}


def spec(job_type: str | JobType) -> JobTypeSpec:
    return REGISTRY[JobType(job_type)]


def label(job_type: str | JobType) -> str:
    return spec(job_type).label


def steps_for(job_type: str | JobType, deliver: bool = False) -> tuple[Step, ...]:
    """The ordered steps of a new job of `job_type`; `deliver` when its report has non-API delivery targets."""
    steps = spec(job_type).steps
    if deliver and Step.ASSEMBLE in steps:
        steps = steps + (Step.DELIVER,)
    return steps
