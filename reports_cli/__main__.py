"""`reports`: import expense lines, start report jobs and follow them from the command line.

Exit codes (for scripts): 0 completed / ok, 1 the job failed, 2 usage error, 3 the job was cancelled,
4 API or network error (including 401, 404, 409, 429), 5 timed out waiting, 130 interrupted.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from reports_cli import __version__, upload
from reports_cli.client import ApiError, Client, dumps, finished
from reports_cli.display import Watch, describe, label, outcome, report_table, table
from reports_cli.targets import TARGET_HELP, target, warn_secret

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED, EXIT_ERROR, EXIT_TIMEOUT = 0, 1, 2, 3, 4, 5
EXIT_INTERRUPTED = 130
DEFAULT_API_URL = "http://127.0.0.1:8000"
IMPORT_CHUNK = 5000  # lines per request, the API's limit
STATUSES = ("Queued", "Processing", "CancellationRequested", "Completed", "Failed", "Cancelled")


class Usage(Exception):
    """A usage error found after parsing (exit 2)."""


def status_code(job: dict[str, Any]) -> int:
    """The exit code a job's status stands for: 1 Failed, 3 Cancelled, else 0."""
    return {"Failed": EXIT_FAILED, "Cancelled": EXIT_CANCELLED}.get(job.get("status", ""), EXIT_OK)


def err(message: str) -> None:
    print(f"reports: error: {message}", file=sys.stderr, flush=True)


def note(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


# --- commands ----------------------------------------------------------------------------------------------


def cmd_import(client: Client, args: argparse.Namespace) -> int:
    """JSON files and CSV files within one request's limit: POST /expenses. Larger CSV files, and any import with
    --replace, --period or --report: POST /imports, the file PUT to its upload URL, the job followed in rows."""
    if args.period is not None and not PERIOD.fullmatch(args.period):
        raise Usage(f"--period must be a month as YYYY-MM, not {args.period!r}")
    via_imports = bool(args.replace or args.period or args.report)
    source: IO[bytes]
    if args.file == "-":
        raw = sys.stdin.buffer.read()
        source, name, size = io.BytesIO(raw), "<stdin>", len(raw)
    else:
        try:
            source, name = open(args.file, "rb"), args.file  # closed below, after the upload
            size = upload.size_of(Path(args.file))
        except OSError as exc:
            raise Usage(f"cannot read {args.file}: {exc.strerror or exc}") from exc
    with source:
        start = source.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
        source.seek(0)
        is_json = args.format == "json" or (args.format is None and (name.endswith(".json") or start == b"{"))
        if is_json and via_imports:
            raise Usage("--replace, --period and --report import a CSV file through /imports; this file is JSON")
        if not is_json and (via_imports or not upload.fits_one_request(source, size)):
            return import_large(client, args, source, name, size)
        try:
            text = source.read().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise Usage(f"cannot read {name}: it is not UTF-8 ({exc.reason})") from exc
    return import_small(client, args, text, name, is_json)


def import_small(client: Client, args: argparse.Namespace, text: str, name: str, is_json: bool) -> int:
    """One POST /expenses (a CSV of up to 5,000 lines, or a JSON file)."""
    chunks = [(text, "application/json")] if is_json else [(c, "text/csv") for c in csv_chunks(text)]
    imported, periods = 0, set()
    for number, (body, kind) in enumerate(chunks, 1):
        try:
            out = client.import_lines(body, kind)
        except ApiError as exc:
            if number > 1:
                exc.args = (f"{exc.args[0]} [request {number} of {len(chunks)}: the {imported} lines before it "
                            f"were imported]",)
            raise
        imported += int(out.get("imported", 0))
        periods.update(out.get("periods", []))
    if args.json:
        print(dumps({"imported": imported, "periods": sorted(periods)}))
    else:
        print(f"Imported {imported} lines from {name} (periods: {', '.join(sorted(periods)) or '-'})")
    return EXIT_OK


def import_large(client: Client, args: argparse.Namespace, source: Any, name: str, size: int) -> int:
    """POST /imports, PUT the file (streamed) to its upload URL, follow the job in rows to its end."""
    mode = "replace" if args.replace else "merge"
    answer = client.start_import(upload.request_body(mode, args.period, args.report))
    job: dict[str, Any] = answer["job"] if isinstance(answer.get("job"), dict) else answer
    if not answer.get("uploadUrl") or not job.get("jobId"):
        raise ApiError("the API's answer to POST /imports has no uploadUrl or job")
    note(args, f"Uploading {name} ({size} bytes) for import job {job['jobId']} ({mode})")
    client.upload(answer["uploadUrl"], source, size)

    def done(final: dict[str, Any]) -> None:
        if args.json:
            print(dumps(final))
        elif final.get("status") == "Completed":
            then = f"; report Completed. Result: reports result {final['jobId']}" if args.report else ""
            print(f"Imported {upload.imported_count(final)} lines from {name} (job {final['jobId']}){then}")
        if final.get("status") != "Completed":
            err(f"import of {name} {str(final.get('status')).lower()}: "
                f"{final.get('errorMessage') or final.get('statusMessage') or 'no reason given'}")

    return follow(client, args, job, unit="rows", on_final=done)


def csv_chunks(text: str, size: int = IMPORT_CHUNK) -> list[str]:
    """The CSV as requests of at most `size` lines, each with the header (quoted newlines kept intact)."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise Usage("the CSV file is empty; it needs the header lineId,date,vendor,amount,currency,description")
    header, body = rows[0], [r for r in rows[1:] if r]
    if len(body) <= size:
        return [text]
    out = []
    for start in range(0, len(body), size):
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(body[start:start + size])
        out.append(buffer.getvalue())
    return out


def print_report(args: argparse.Namespace, report: dict[str, Any], done: str) -> None:
    """`done` (or the JSON), then the webhook signing secret if this answer carries it: the only time it does."""
    if args.json:
        print(dumps(report), flush=True)
    else:
        print(done, flush=True)
        if report.get("webhookSecret"):
            print(f"Webhook secret: {report['webhookSecret']}", flush=True)
    if report.get("webhookSecret"):
        warn_secret()


def cmd_create_report(client: Client, args: argparse.Namespace) -> int:
    config: dict[str, Any] = {"reportId": args.report, "name": args.name or args.report,
                              "deliveryTargets": args.target or [{"type": "api", "mode": "async"}]}
    if args.category:
        config["categories"] = args.category
    if args.role:
        config["allowedRoles"] = args.role
    report = client.create_report(config)
    print_report(args, report, f"Created report {report['reportId']} ({len(report.get('categories', []))} categories)")
    return EXIT_OK


def cmd_rotate_secret(client: Client, args: argparse.Namespace) -> int:
    out = client.rotate_secret(args.report)
    print(dumps(out) if args.json else out["webhookSecret"], flush=True)  # stdout: just the secret, for scripts
    warn_secret(previous_expires_at=out.get("previousSecretExpiresAt"))
    return EXIT_OK


def cmd_retry_delivery(client: Client, args: argparse.Namespace) -> int:
    job = client.retry_delivery(args.job, args.n)
    if args.json:
        print(dumps(job))
        return EXIT_OK
    deliveries = job.get("deliveries") or []
    d = deliveries[args.n] if args.n < len(deliveries) else {}
    print(f"{job['jobId']}: delivery {args.n} ({d.get('type')} to {d.get('destination')}) is {d.get('status')}")
    note(args, f"its outcome shows in: reports status {job['jobId']}")
    return EXIT_OK


def cmd_list_reports(client: Client, args: argparse.Namespace) -> int:
    items: list[dict[str, Any]] = []
    token = None
    while True:
        page = client.list_reports(args.page_size, token)
        items.extend(page.get("items", []))
        token = page.get("nextToken")
        if not token or not args.all:
            break
    if args.json:
        print(dumps({"items": items, "nextToken": token}))
    elif not items:
        print("No reports.")
    else:
        print(report_table(items))
        if token:
            note(args, f"({len(items)} shown; --all lists every page)")
    return EXIT_OK


def schedule_day(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 28:
        raise argparse.ArgumentTypeError("must be a day of the month from 1 to 28")
    return int(value)


def cmd_update_report(client: Client, args: argparse.Namespace) -> int:
    changes: dict[str, Any] = {}
    if args.name is not None:
        changes["name"] = args.name
    if args.target:
        changes["deliveryTargets"] = args.target
    if args.category:
        changes["categories"] = args.category
    if args.role or args.no_roles:
        changes["allowedRoles"] = [] if args.no_roles else args.role
    if args.schedule_day is not None or args.no_schedule:
        changes["schedule"] = None if args.no_schedule else {"type": "monthly", "day": args.schedule_day}
    if not changes:
        raise Usage("nothing to change: give --name, --target, --category, --role/--no-roles or "
                    "--schedule-day/--no-schedule")
    report = client.update_report(args.report, changes, args.if_match)
    print_report(args, report, f"Updated report {report['reportId']}: {', '.join(sorted(changes))}")
    return EXIT_OK


def cmd_delete_report(client: Client, args: argparse.Namespace) -> int:
    client.delete_report(args.report, args.if_match)
    if args.json:
        print(dumps({"reportId": args.report, "deleted": True}))
    else:
        print(f"Deleted report {args.report} (its jobs and results stay until they expire)")
    return EXIT_OK


def follow(client: Client, args: argparse.Namespace, job: dict[str, Any], unit: str = "lines",
           on_final: Callable[[dict[str, Any]], None] | None = None) -> int:
    """Wait for a job with live progress (polling its statusUrl); print its outcome (or hand it to `on_final`);
    the exit code of its final status."""
    job_id = job["jobId"]
    try:
        with Watch(quiet=args.quiet, unit=unit) as watch:
            watch.update(job)
            final = client.wait(job_id, on_update=watch.update, timeout=args.timeout, job=job,
                                url=job.get("statusUrl"))
    except TimeoutError:
        err(f"job {job_id} is still running after {args.timeout:g} s; follow it with: reports status {job_id} --wait")
        return EXIT_TIMEOUT
    except KeyboardInterrupt:
        err(f"stopped waiting; job {job_id} goes on (reports status {job_id} --wait, or reports cancel {job_id})")
        return EXIT_INTERRUPTED
    if on_final is not None:
        on_final(final)
        return status_code(final)
    if args.json:
        print(dumps(final))
    note(args, outcome(final))
    return status_code(final)


def cmd_submit(client: Client, args: argparse.Namespace) -> int:
    # --period is required (argparse); --lane is optional (the report's lane, else standard)
    job = client.generate(args.report, args.period, args.idempotency_key, args.lane)
    if not args.wait:
        print(dumps(job) if args.json else job["jobId"])
        return EXIT_OK
    if not args.json:
        print(job["jobId"], flush=True)
    return follow(client, args, job)


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    job = client.job(args.job)
    if args.wait and not finished(job):
        return follow(client, args, job)
    print(dumps(job) if args.json else describe(job))
    return status_code(job)


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    items: list[dict[str, Any]] = []
    token, total = None, 0
    while True:
        page = client.jobs(args.status, args.page_size, token)
        items.extend(page.get("items", []))
        total, token = int(page.get("totalCount") or len(items)), page.get("nextToken")
        if not token or not args.all:
            break
    if args.json:
        print(dumps({"items": items, "totalCount": total, "nextToken": token}))
    elif not items:
        print("No jobs." if not args.status else f"No {args.status} jobs.")
    else:
        print(table(items))
        if token:
            note(args, f"({len(items)} of {total} shown; --all lists every page)")
    return EXIT_OK


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    job = client.cancel(args.job)
    if args.wait and not finished(job):
        code = follow(client, args, job)
        return EXIT_OK if code == EXIT_CANCELLED else (code if code != EXIT_OK else EXIT_FAILED)
    print(dumps(job) if args.json else f"{job['jobId']}: {label(job.get('status'))}")
    return EXIT_OK


def cmd_retry(client: Client, args: argparse.Namespace) -> int:
    job = client.retry(args.job)
    if args.wait:
        if not args.json:
            print(job["jobId"], flush=True)
        return follow(client, args, job)
    print(dumps(job) if args.json else f"{job['jobId']}: {label(job.get('status'))}")
    return EXIT_OK


def cmd_result(client: Client, args: argparse.Namespace) -> int:
    body = client.result(args.job, csv_format=args.csv)
    if not args.csv:
        try:
            body = (dumps(json.loads(body)) + "\n").encode("utf-8")
        except ValueError:
            pass
    if args.output and args.output != "-":
        try:
            Path(args.output).write_bytes(body)
        except OSError as exc:
            raise Usage(f"cannot write {args.output}: {exc.strerror or exc}") from exc
        note(args, f"Wrote {len(body)} bytes to {args.output}")
    else:
        sys.stdout.buffer.write(body)
        sys.stdout.flush()
    return EXIT_OK


# --- the command line --------------------------------------------------------------------------------------


def positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if number <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return number


def delivery_number(value: str) -> int:
    if not value.isdigit() or int(value) > 99:
        raise argparse.ArgumentTypeError("must be a delivery's number from 0 to 99 (as `reports status` lists them)")
    return int(value)


PERIOD = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")


def period(value: str) -> str:
    if not PERIOD.fullmatch(value):
        raise argparse.ArgumentTypeError("must be a month as YYYY-MM, e.g. 2026-01")
    return value


def page_size(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 100:
        raise argparse.ArgumentTypeError("must be an integer from 1 to 100")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    # Connection options work before or after the command (`reports --token T list` or `reports list --token T`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--api-url", default=argparse.SUPPRESS, metavar="URL",
                        help=f"API base URL (env REPORTS_API_URL, default {DEFAULT_API_URL})")
    common.add_argument("--token", default=argparse.SUPPRESS, help="bearer token (env REPORTS_TOKEN)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the API's JSON instead of text")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress or notes on stderr")
    wait = argparse.ArgumentParser(add_help=False)
    wait.add_argument("--timeout", type=positive, default=None, metavar="SECONDS",
                      help="with --wait: give up after this long (exit 5)")

    parser = argparse.ArgumentParser(
        prog="reports", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Command-line client for the async report generation API.",
        epilog="exit codes: 0 completed/ok, 1 job failed, 2 usage error, 3 job cancelled, "
               "4 API or network error,\n            5 timed out waiting, 130 interrupted\n\n"
               "example:\n  export REPORTS_TOKEN=<the token make run printed>\n"
               "  reports import lines.csv\n  reports create-report report-123 --name 'Monthly expenses'\n"
               "  reports submit report-123 --period 2026-01 --wait")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, handler: Callable[[Client, argparse.Namespace], int], help_text: str,
            parents: Sequence[argparse.ArgumentParser] = ()) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common, *parents], help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    sub = add("import", cmd_import,
              "import expense lines from a CSV (or JSON) file; '-' reads stdin. A CSV above one request's limit "
              "(5,000 lines or 6 MB) is uploaded through /imports and followed with progress in rows", [wait])
    sub.add_argument("file", metavar="FILE")
    sub.add_argument("--format", choices=("csv", "json"), default=None,
                     help="file format (default: from the name or content)")
    sub.add_argument("--replace", action="store_true",
                     help="replace the period's lines with the file's (through /imports; default: merge)")
    sub.add_argument("--period", metavar="YYYY-MM", help="the file's month (through /imports)")
    sub.add_argument("--report", metavar="REPORT_ID", help="then generate this report on the imported period "
                                                           "(through /imports)")

    sub = add("create-report", cmd_create_report,
              "create a report configuration (prints its webhook signing secret, once, if it has a webhook)")
    sub.add_argument("report", metavar="REPORT_ID", help="id: lower-case letters, digits and '-', 3-64 characters")
    sub.add_argument("--name", help="display name (default: the id)")
    sub.add_argument("--target", action="append", type=target, metavar="TARGET",
                     help=f"{TARGET_HELP} (repeat; default: api:async, which `submit` needs)")
    sub.add_argument("--category", action="append", metavar="NAME",
                     help="a category of the taxonomy (repeat; default: the standard taxonomy)")
    sub.add_argument("--role", action="append", metavar="ROLE", help="a role that may generate it (repeat)")

    sub = add("list-reports", cmd_list_reports, "list the report configurations you own or may generate")
    sub.add_argument("--page-size", type=page_size, default=20, metavar="N", help="reports per request (1-100)")
    sub.add_argument("--all", action="store_true", help="follow nextToken through every page")

    sub = add("update-report", cmd_update_report,
              "change a report configuration you own (sends If-Match: the ETag it reads first, or --if-match)")
    sub.add_argument("report", metavar="REPORT_ID")
    sub.add_argument("--name", help="new display name")
    sub.add_argument("--target", action="append", type=target, metavar="TARGET",
                     help=f"{TARGET_HELP} (repeat; replaces them all, and enables again a webhook disabled by 410 "
                          "Gone)")
    sub.add_argument("--category", action="append", metavar="NAME", help="a category (repeat; replaces the taxonomy)")
    roles = sub.add_mutually_exclusive_group()
    roles.add_argument("--role", action="append", metavar="ROLE", help="a role that may generate it (repeat; replaces)")
    roles.add_argument("--no-roles", action="store_true", help="no role may generate it (the owner only)")
    days = sub.add_mutually_exclusive_group()
    days.add_argument("--schedule-day", type=schedule_day, metavar="DAY", help="generate monthly on this day (1-28)")
    days.add_argument("--no-schedule", action="store_true", help="remove the schedule")
    sub.add_argument("--if-match", metavar="ETAG", help="only if the report is still at this ETag (else 412)")

    sub = add("rotate-secret", cmd_rotate_secret,
              "make a new webhook signing secret for a report you own and print it, once (the previous one keeps "
              "signing beside it for a day)")
    sub.add_argument("report", metavar="REPORT_ID")

    sub = add("delete-report", cmd_delete_report,
              "delete a report configuration you own (refused while one of its jobs is active)")
    sub.add_argument("report", metavar="REPORT_ID")
    sub.add_argument("--if-match", metavar="ETAG", help="only if the report is still at this ETag (else 412)")

    sub = add("submit", cmd_submit, "start a report job; prints the job id", [wait])
    sub.add_argument("report", metavar="REPORT_ID")
    sub.add_argument("--period", metavar="YYYY-MM", type=period, required=True,
                     help="month to report (required: no silent default that spends one of the hour's jobs on an "
                          "empty month)")
    sub.add_argument("--wait", action="store_true", help="show live progress until the job ends")
    sub.add_argument("--idempotency-key", metavar="KEY", help="send Idempotency-Key (safe to repeat)")
    sub.add_argument("--lane", choices=("standard", "flex", "batch"),
                     help="the job's cost lane (default: the report's lane, else standard)")

    sub = add("status", cmd_status, "show a job", [wait])
    sub.add_argument("job", metavar="JOB_ID")
    sub.add_argument("--wait", action="store_true", help="show live progress until the job ends")

    sub = add("list", cmd_list, "list your jobs, newest first")
    sub.add_argument("--status", choices=STATUSES)
    sub.add_argument("--page-size", type=page_size, default=20, metavar="N", help="jobs per request (1-100)")
    sub.add_argument("--all", action="store_true", help="follow nextToken through every page")

    sub = add("cancel", cmd_cancel, "cancel a job", [wait])
    sub.add_argument("job", metavar="JOB_ID")
    sub.add_argument("--wait", action="store_true", help="wait until it has stopped (exit 0 once Cancelled)")

    sub = add("retry", cmd_retry, "queue a Failed or Cancelled job again (resumes from its checkpoint)", [wait])
    sub.add_argument("job", metavar="JOB_ID")
    sub.add_argument("--wait", action="store_true", help="show live progress until the job ends")

    sub = add("retry-delivery", cmd_retry_delivery,
              "send one of a finished job's deliveries again (a Failed, Disabled or Delivered one)")
    sub.add_argument("job", metavar="JOB_ID")
    sub.add_argument("n", type=delivery_number, metavar="N", help="its number in `reports status JOB_ID` (from 0)")

    sub = add("result", cmd_result, "print a Completed job's result (JSON, or CSV with --csv)")
    sub.add_argument("job", metavar="JOB_ID")
    sub.add_argument("--csv", action="store_true", help="the lines as CSV")
    sub.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name, default in (("json", False), ("quiet", False)):
        if not hasattr(args, name):
            setattr(args, name, default)
    api_url = getattr(args, "api_url", None) or os.environ.get("REPORTS_API_URL") or DEFAULT_API_URL
    token = getattr(args, "token", None) or os.environ.get("REPORTS_TOKEN")
    if not api_url.startswith(("http://", "https://")):
        parser.error(f"the API URL must start with http:// or https://, not {api_url!r}")
    if not token:
        parser.error("no bearer token: pass --token or set REPORTS_TOKEN (make run prints one)")
    client = Client(api_url, token.strip())
    try:
        return args.handler(client, args)
    except Usage as exc:
        parser.exit(EXIT_USAGE, f"reports: error: {exc}\n")
    except ApiError as exc:
        err(str(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        err("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
