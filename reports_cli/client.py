"""HTTP client for the report API: problem+json errors, Retry-After and ETag-aware polling."""

from __future__ import annotations

import email.utils
import json
import re
import time
from collections.abc import Callable
from typing import Any, BinaryIO

import requests

DEFAULT_POLL_SECONDS = 2.0
MAX_POLL_SECONDS = 60.0
NETWORK_RETRIES = 5  # consecutive transport failures (or 5xx) tolerated while polling
# A job's `allowedActions` (the API's, from its state machine) that only a stopped job allows.
STOPPED_ACTIONS = frozenset({"retry", "result"})


def finished(job: dict[str, Any]) -> bool:
    """The job has stopped (nothing moves it but a retry): the API allows retrying it or reading its result, or,
    for a type that has neither (an import, a cache warm run), allows nothing at all while no cancel is under way
    (a running job allows `cancel`)."""
    actions = job.get("allowedActions") or ()
    if not STOPPED_ACTIONS.isdisjoint(actions):
        return True
    return "allowedActions" in job and not actions and job.get("status") != "CancellationRequested"


class ApiError(Exception):
    """An error answer (problem+json when the API sent one) or a transport failure (status None)."""

    def __init__(self, message: str, status: int | None = None, problem: dict[str, Any] | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.problem = problem or {}
        self.retry_after = retry_after

    @classmethod
    def from_response(cls, response: requests.Response) -> ApiError:
        problem: dict[str, Any] = {}
        try:
            body = response.json()
            if isinstance(body, dict):
                problem = body
        except ValueError:
            pass
        status = response.status_code
        title = problem.get("title") or response.reason or "HTTP error"
        detail = problem.get("detail")
        message = f"{status} {title}: {detail}" if detail else f"{status} {title} from {response.url}"
        extras = []
        if problem.get("existingJobId"):
            extras.append(f"existing job {problem['existingJobId']}")
        if problem.get("line") is not None:
            extras.append(f"line {problem['line']}")
        if problem.get("field") and f"{problem['field']}:" not in (detail or ""):
            extras.append(f"field {problem['field']}")
        wait = retry_after_seconds(response)
        if status == 429 and wait is not None:
            extras.append(f"retry in {wait:g} s")
        if status == 401:
            extras.append("check --token or REPORTS_TOKEN")
        if extras:
            message += f" ({'; '.join(extras)})"
        return cls(message, status, problem, wait)


def retry_after_seconds(response: requests.Response) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    raw = (response.headers.get("Retry-After") or "").strip()
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class Client:
    """One API base URL and bearer token; every method returns parsed JSON or raises ApiError."""

    def __init__(self, base_url: str, token: str, timeout: float = 30.0,
                 session: requests.Session | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()
        self.session.headers.update({"Authorization": f"Bearer {token}", "Accept": "application/json",
                                     "User-Agent": "reports-cli"})

    # --- plumbing --------------------------------------------------------------------------------------------

    def send(self, method: str, path: str, *, ok: tuple[int, ...] = (), **kwargs: Any) -> requests.Response:
        """The response, raising ApiError for transport failures and any status >= 400 not in `ok`."""
        url = path if path.startswith(("http://", "https://")) else f"{self.base_url}/api/v1{path}"
        kwargs.setdefault("timeout", self.timeout)
        kwargs.setdefault("allow_redirects", False)
        try:
            response = self.session.request(method, url, **kwargs)
        except requests.ConnectionError as err:
            raise ApiError(f"cannot reach the API at {self.base_url} ({_reason(err)}); is it running?") from err
        except requests.Timeout as err:
            raise ApiError(f"the API at {self.base_url} did not answer within {self.timeout:g} s") from err
        except requests.RequestException as err:
            raise ApiError(f"request to {url} failed: {err}") from err
        if response.status_code >= 400 and response.status_code not in ok:
            raise ApiError.from_response(response)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.send(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as err:
            raise ApiError(f"{response.status_code} answer from {response.url} is not JSON") from err

    # --- the API ---------------------------------------------------------------------------------------------

    def import_lines(self, body: str, content_type: str) -> dict[str, Any]:
        return self.json("POST", "/expenses", data=body.encode("utf-8"),
                         headers={"Content-Type": f"{content_type}; charset=utf-8"})

    def start_import(self, request: dict[str, Any]) -> dict[str, Any]:
        """POST /imports: 202 with the import job and `uploadUrl` (a presigned PUT, 15 minutes)."""
        return self.json("POST", "/imports", json=request)

    def upload(self, url: str, body: BinaryIO, size: int) -> None:
        """PUT the file to a presigned URL, streamed from `body` (`size` bytes: S3 takes no chunked upload). The
        URL carries its own signature: our bearer token is not sent."""
        try:
            response = requests.put(url, data=body, timeout=(self.timeout, None),
                                    headers={"Content-Type": "text/csv", "Content-Length": str(size)})
        except requests.RequestException as err:
            raise ApiError(f"uploading the file failed ({_reason(err)})") from err
        if response.status_code >= 400:
            code = re.search(r"<Code>([^<]+)</Code>", response.text or "")
            raise ApiError(f"uploading the file failed: HTTP {response.status_code}"
                           + (f" ({code.group(1)})" if code else ""), response.status_code)

    def create_report(self, config: dict[str, Any]) -> dict[str, Any]:
        return self.json("POST", "/reports", json=config)

    def get_report(self, report_id: str) -> dict[str, Any]:
        return self.json("GET", f"/reports/{_segment(report_id)}")

    def list_reports(self, page_size: int = 20, next_token: str | None = None) -> dict[str, Any]:
        params = {"pageSize": page_size, "nextToken": next_token}
        return self.json("GET", "/reports", params={k: v for k, v in params.items() if v is not None})

    def report_etag(self, report_id: str) -> str:
        """The report's current ETag (what PATCH and DELETE send as If-Match)."""
        return self.send("GET", f"/reports/{_segment(report_id)}").headers.get("ETag", "")

    def update_report(self, report_id: str, changes: dict[str, Any], etag: str | None = None) -> dict[str, Any]:
        """PATCH the report with If-Match: `etag`, or the ETag read just before (so a change made by someone
        else in between is refused with 412, not overwritten)."""
        etag = etag or self.report_etag(report_id)
        return self.json("PATCH", f"/reports/{_segment(report_id)}", json=changes, headers={"If-Match": etag})

    def rotate_secret(self, report_id: str) -> dict[str, Any]:
        """A new webhook signing secret: {"webhookSecret", "previousSecretExpiresAt"} (shown this once)."""
        return self.json("POST", f"/reports/{_segment(report_id)}/webhook-secret/rotate")

    def delete_report(self, report_id: str, etag: str | None = None) -> None:
        self.send("DELETE", f"/reports/{_segment(report_id)}", headers={"If-Match": etag} if etag else {})

    def generate(self, report_id: str, period: str | None, idempotency_key: str | None = None,
                 lane: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body = {**({"period": period} if period else {}), **({"lane": lane} if lane else {})}
        return self.json("POST", f"/reports/{_segment(report_id)}/generate", json=body or None, headers=headers)

    def job(self, job_id: str) -> dict[str, Any]:
        return self.json("GET", f"/jobs/{_segment(job_id)}")

    def jobs(self, status: str | None = None, page_size: int = 20, next_token: str | None = None) -> dict[str, Any]:
        params = {"pageSize": page_size, "status": status, "nextToken": next_token}
        return self.json("GET", "/jobs", params={k: v for k, v in params.items() if v is not None})

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self.json("DELETE", f"/jobs/{_segment(job_id)}")

    def retry(self, job_id: str) -> dict[str, Any]:
        return self.json("POST", f"/jobs/{_segment(job_id)}/retry")

    def retry_delivery(self, job_id: str, n: int) -> dict[str, Any]:
        """Send delivery `n` (its place in the job's `deliveries`) again; the job as it is then (202)."""
        return self.json("POST", f"/jobs/{_segment(job_id)}/deliveries/{int(n)}/retry")

    def result(self, job_id: str, csv_format: bool = False) -> bytes:
        """The result document (JSON or CSV bytes); a 303 is followed to its presigned URL without our token."""
        response = self.send("GET", f"/jobs/{_segment(job_id)}/result",
                             params={"format": "csv"} if csv_format else None)
        if response.status_code in (301, 302, 303, 307, 308) and response.headers.get("Location"):
            try:
                download = requests.get(response.headers["Location"], timeout=self.timeout)
            except requests.RequestException as err:
                raise ApiError(f"downloading the result failed ({_reason(err)})") from err
            if download.status_code >= 400:
                raise ApiError(f"downloading the result failed: HTTP {download.status_code}", download.status_code)
            return download.content
        return response.content

    def wait(self, job_id: str, on_update: Callable[[dict[str, Any]], None] | None = None,
             timeout: float | None = None, sleep: Callable[[float], None] = time.sleep,
             job: dict[str, Any] | None = None, url: str | None = None) -> dict[str, Any]:
        """Poll until the job is terminal (at `url`, its statusUrl, when given), honouring Retry-After and sending
        If-None-Match; the final job.

        Raises ApiError for a 4xx other than 429, or after NETWORK_RETRIES consecutive transport/5xx failures;
        TimeoutError when `timeout` seconds pass first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        etag: str | None = None
        failures = 0
        while True:
            delay = DEFAULT_POLL_SECONDS
            if job is not None and finished(job):
                return job
            headers = {"If-None-Match": etag} if etag else {}
            try:
                response = self.send("GET", url or f"/jobs/{_segment(job_id)}", headers=headers, ok=(429,))
                failures = 0
                if response.status_code == 200:
                    job = response.json()
                    etag = response.headers.get("ETag") or None
                    if on_update is not None:
                        on_update(job)
                # 304: nothing changed, keep the job we have; 429: wait what the server says.
                wait = retry_after_seconds(response)
                if wait is not None:
                    delay = wait
            except ApiError as err:
                if err.status is not None and err.status < 500:
                    raise
                failures += 1
                if failures > NETWORK_RETRIES:
                    raise
                delay = err.retry_after if err.retry_after is not None else min(MAX_POLL_SECONDS, 2.0 ** failures)
            if job is not None and finished(job):
                return job
            delay = min(MAX_POLL_SECONDS, delay)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(job_id)
                delay = min(delay, left)
            sleep(delay)


def _segment(value: str) -> str:
    return requests.utils.quote(value, safe="")


def _reason(err: Exception) -> str:
    text = str(err)
    for marker in ("Connection refused", "Name or service not known", "timed out", "No route to host"):
        if marker in text:
            return marker.lower()
    return type(err).__name__


def dumps(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)
