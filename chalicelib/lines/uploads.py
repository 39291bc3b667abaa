"""Where an import's file goes: one object per import job in the results bucket, PUT by the client through a
presigned URL, and announced by the bucket's ObjectCreated notification on the work queue (infra/template.yaml;
local/deploy.py sets it on moto)."""

from __future__ import annotations

import re

from chalicelib import deps
from chalicelib.settings import get_settings

UPLOAD_SECONDS = 15 * 60  # the presigned PUT's life (the API contract)
# How long past the URL's end the job waits for its file before the reaper fails it: a PUT started just before
# the URL expired may still be arriving, and S3's notification may lag.
UPLOAD_GRACE_SECONDS = 5 * 60
PREFIX = "imports/"
_KEY = re.compile(r"^imports/([0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12})\.csv$")
CONTENT_TYPE = "text/csv"


def object_key(job_id: str) -> str:
    return f"{PREFIX}{job_id}.csv"


def job_of(key: str) -> str | None:
    """The import job an object's key names, or None for any other object (a report's result, a stray PUT)."""
    match = _KEY.fullmatch(key)
    return match.group(1) if match else None


def presign(job_id: str) -> str:
    """The URL to PUT the job's file to (with `Content-Type: text/csv`), valid UPLOAD_SECONDS.

    The key is the server's, named by the job: the URL allows a PUT of that one object and nothing else.
    """
    return deps.client("s3").generate_presigned_url(
        "put_object", ExpiresIn=UPLOAD_SECONDS,
        Params={"Bucket": get_settings().results_bucket, "Key": object_key(job_id), "ContentType": CONTENT_TYPE})


def head(key: str) -> dict | None:
    """The object's metadata (ETag, ContentLength), or None while it has not arrived."""
    from botocore.exceptions import ClientError

    try:
        return deps.client("s3").head_object(Bucket=get_settings().results_bucket, Key=key)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def open_body(key: str, etag: str) -> object:
    """The object's body as a stream, only while it is still the file first read (`etag`): a second PUT through
    the same URL must not change an import half-way."""
    return deps.client("s3").get_object(Bucket=get_settings().results_bucket, Key=key, IfMatch=etag)["Body"]
