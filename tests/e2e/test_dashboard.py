"""The dashboard page (GET /) in headless Chromium: Debian's `chromium`, driven by Playwright's bundled driver.

Never a downloaded browser: Playwright launches the system executable. Without one the tests skip with the
reason, except under CI=true, where a missing browser is a failure. Screenshots go to test-artifacts/dashboard/.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.worker_gate import WorkerGate
from tests.support import Receiver

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run", "--disable-sync"]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
TIMEOUT_MS = 20_000  # every expectation polls up to this deadline; none sleeps a fixed time
JOB_URL = re.compile(r"/api/v1/jobs/[0-9a-f-]{36}$")


def chromium_path() -> str | None:
    for candidate in (os.environ.get("CHROMIUM_PATH"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _unavailable() -> str | None:
    if chromium_path() is None:
        return "no Chromium found (install Debian's `chromium` package: apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (make test installs requirements-dev.txt)"
    return None


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    reason = _unavailable()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"browser tests cannot run under CI=true: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    context = browser.new_context(viewport=DESKTOP, accept_downloads=True)
    tab = context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    outside: list[str] = []
    tab.on("request", lambda r: outside.append(r.url) if not r.url.startswith(("http://127.0.0.1", "blob:",
                                                                              "data:")) else None)
    try:
        yield tab
        assert not errors, f"JavaScript errors on the page: {errors}"
        assert not outside, f"the page fetched something not from the API: {outside}"
    finally:
        shot(tab, f"{request.node.name}-last")  # what the page showed at the end, passed or failed
        context.close()


def shot(tab: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    tab.screenshot(path=str(path), full_page=True)
    return path


def expense_csv(count: int, period: str, unmatched: int = 0) -> str:
    """`count` lines the rules categorizer knows, the last `unmatched` of them with vendors it does not."""
    vendors = ["UBER *TRIP 8841", "DELTA AIR 0062345", "Marriott Downtown", "SQ *BLUE BOTTLE COFFEE"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["lineId", "date", "vendor", "amount", "currency", "description"])
    for i in range(count):
        vendor = f"Zqxv Holdings {i}" if i >= count - unmatched else vendors[i % len(vendors)]
        writer.writerow([f"tx-{i:04d}", f"{period}-{1 + i % 28:02d}", vendor, f"{10 + i % 90}.25", "USD", ""])
    return out.getvalue()


def sign_in(tab: Any, base: str, token: str) -> None:
    from playwright.sync_api import expect

    tab.goto(f"{base}/")
    tab.get_by_label("Bearer token").fill(token)
    tab.get_by_role("button", name="Use token").click()
    expect(tab.locator("#whoami")).to_contain_text("Signed in as")


def job_card(tab: Any, report_id: str) -> Any:
    return tab.locator("#jobs > li").filter(has_text=report_id)


class Api:
    def __init__(self, base: str, token: Any) -> None:
        self.base, self.session = base, requests.Session()
        self.session.headers.update(token.headers)

    def setup(self, lines: int, period: str, categories: list[str] | None = None, unmatched: int = 0,
              targets: list[dict[str, Any]] | None = None) -> str:
        report_id = f"dash-{uuid.uuid4().hex[:10]}"
        config: dict[str, Any] = {"reportId": report_id, "name": "Dashboard test",
                                  "deliveryTargets": [{"type": "api", "mode": "async"}, *(targets or [])]}
        if categories:
            config["categories"] = categories
        assert self.session.post(f"{self.base}/api/v1/reports", json=config, timeout=10).status_code == 201
        response = self.session.post(f"{self.base}/api/v1/expenses", data=expense_csv(lines, period, unmatched),
                                     headers={"Content-Type": "text/csv"}, timeout=30)
        assert response.status_code == 201, response.text
        return report_id


def test_start_a_job_watch_it_move_complete_download_the_csv_and_settle_a_flagged_line(
        api_stack: str, gate: WorkerGate, token_for: Any, page: Any) -> None:
    from playwright.sync_api import expect

    token, report_id, period = token_for(), f"dash-{uuid.uuid4().hex[:10]}", "2026-03"
    sign_in(page, api_stack, token)
    expect(page.locator("#jobs-summary")).to_have_text("No jobs yet. Start one above.")

    # Import the lines and create the report from the page, as a new user would.
    page.get_by_text("Import expense lines (CSV)").click()
    page.get_by_label("CSV file").set_input_files(files=[{
        "name": "lines.csv", "mimeType": "text/csv", "buffer": expense_csv(250, period, unmatched=2).encode()}])
    page.get_by_role("button", name="Import lines").click()
    expect(page.locator("#notice")).to_contain_text("Imported 250 lines (periods: 2026-03)")
    page.get_by_text("Create a report configuration").click()
    page.get_by_label("New report id").fill(report_id)
    page.get_by_label("Name", exact=True).fill("Dashboard expenses")
    # No "Other" in the taxonomy: the two unknown vendors are flagged for review.
    page.get_by_label("Categories, one per line").fill("Airfare\nLodging\nGround Transportation\nMeals & Entertainment")
    page.get_by_role("button", name="Create report").click()
    expect(page.locator("#notice")).to_contain_text(f"Created report {report_id}")
    expect(page.get_by_label("Report id", exact=True)).to_have_value(report_id)
    expect(page.get_by_label("Period")).to_have_value(period)

    gate.watch(report_id)
    polls: list[Any] = []
    page.on("response", lambda r: polls.append(r) if JOB_URL.search(r.url) else None)
    page.get_by_role("button", name="Start job").click()
    card = job_card(page, report_id)
    expect(card).to_have_count(1)
    expect(card.locator(".badge")).to_have_text(re.compile("Queued|Processing"))

    # The worker holds after its first checkpoint: 100 of 250 lines, the bar at 40 %.
    gate.wait_reached()
    expect(card.locator(".f-lines")).to_have_text("100 / 250")
    expect(card.locator("progress")).to_have_attribute("value", "40")
    expect(card.locator(".badge")).to_have_text("Processing")
    expect(card.get_by_role("button", name="Cancel")).to_be_visible()
    # The type's label and the steps as the API returns them: collect done, categorize under way.
    expect(card.locator(".job-type")).to_have_text("Generate report")
    steps = card.get_by_role("list", name="Steps").locator("li")
    expect(steps).to_have_text(["Collect: Completed", re.compile(r"^Categorize: Running( \d+%)?$"),
                                "Assemble: Pending"])
    expect(steps.nth(1)).to_have_attribute("aria-current", "step")
    # Unchanged job: the next poll sends If-None-Match and gets a 304; the page keeps the body it has.
    with page.expect_response(lambda r: r.status == 304 and bool(JOB_URL.search(r.url))) as not_modified:
        pass
    assert not_modified.value.request.headers.get("if-none-match"), "polls must send If-None-Match"
    expect(card.locator(".f-lines")).to_have_text("100 / 250")
    shot(page, "progress-40-percent")

    gate.open()
    expect(card.locator(".badge")).to_have_text("Completed")
    expect(card.locator("progress")).to_have_attribute("value", "100")
    expect(card.locator(".f-lines")).to_have_text("250 / 250")
    expect(card.locator(".f-flagged")).to_have_text("2")
    expect(card.locator(".f-lane")).to_have_text("standard")
    expect(steps).to_have_text(["Collect: Completed", "Categorize: Completed", "Assemble: Completed"])
    expect(card.locator(".steps li[aria-current]")).to_have_count(0)
    expect(card).to_have_attribute("data-polling", "false")  # terminal: no more polls
    assert all(r.request.headers.get("authorization") == f"Bearer {token}" for r in polls)
    shot(page, "completed")

    with page.expect_download() as download_info:
        card.get_by_role("button", name="Download CSV").click()
    download = download_info.value
    assert download.suggested_filename == f"{report_id}-{period}.csv"
    saved = ARTIFACTS / "completed-result.csv"
    download.save_as(saved)
    rows = list(csv.DictReader(io.StringIO(saved.read_text())))
    assert len(rows) == 250 and rows[0]["lineId"] == "tx-0000" and rows[0]["category"] == "Ground Transportation"
    assert sum(r["needsReview"] == "true" for r in rows) == 2

    # Settle one of the flagged lines from the result panel.
    card.get_by_role("link", name="View result").click()
    flagged = card.locator("ul.flagged > li")
    expect(flagged).to_have_count(2)
    expect(card.get_by_role("table")).to_contain_text("Ground Transportation")
    first = flagged.first
    first.get_by_label(re.compile("^Category for Zqxv Holdings")).select_option("Lodging")
    first.get_by_role("button", name=re.compile("^Settle")).click()
    expect(page.locator("#notice")).to_contain_text("settled as Lodging")
    expect(flagged).to_have_count(1)
    expect(card.locator(".f-flagged")).to_have_text("1")
    shot(page, "result-settled")


def test_cancel_a_running_job_from_the_page(api_stack: str, gate: WorkerGate, token_for: Any, page: Any) -> None:
    from playwright.sync_api import expect

    token = token_for()
    report_id = gate.watch(Api(api_stack, token).setup(250, "2026-04"))
    sign_in(page, api_stack, token)
    page.get_by_label("Report id", exact=True).fill(report_id)
    page.get_by_label("Period").fill("2026-04")
    page.get_by_role("button", name="Start job").click()
    card = job_card(page, report_id)
    gate.wait_reached()
    expect(card.locator(".f-lines")).to_have_text("100 / 250")

    card.get_by_role("button", name="Cancel").click()
    expect(card.locator(".badge")).to_have_text("Cancelling")
    expect(card.get_by_role("button", name="Cancel")).to_be_hidden()
    gate.open()  # the worker checks for cancellation before its next batch
    expect(card.locator(".badge")).to_have_text("Cancelled")
    expect(card.locator(".message")).to_have_text("Cancelled after 100 of 250 lines")
    # The cancel settled the steps not finished: categorize (under way) and assemble (not begun).
    expect(card.get_by_role("list", name="Steps").locator("li")).to_have_text(
        ["Collect: Completed", re.compile(r"^Categorize: Cancelled"), "Assemble: Cancelled"])
    expect(card).to_have_attribute("data-polling", "false")
    expect(card.get_by_role("button", name="Retry")).to_be_visible()
    expect(card.get_by_role("button", name="Download CSV")).to_be_hidden()
    shot(page, "cancelled")


def test_401_429_and_network_errors_get_a_clear_message(api_stack: str, token_for: Any, page: Any) -> None:
    from playwright.sync_api import expect

    notice = page.locator("#notice [role=alert]")
    page.goto(f"{api_stack}/")
    page.get_by_label("Bearer token").fill("not-a-token")
    page.get_by_role("button", name="Use token").click()
    expect(notice).to_contain_text("Your token was not accepted: The bearer token is invalid.")
    expect(page.get_by_label("Bearer token")).to_be_focused()

    sign_in(page, api_stack, token_for())
    expect(page.locator("#notice [role=alert]")).to_have_count(0)
    problem = {"type": "urn:reports:problem:rate-limited", "title": "Too many requests", "status": 429,
               "detail": "At most 20 jobs may be created per hour; try again in 42 s."}
    page.route("**/api/v1/reports/*/generate", lambda route: route.fulfill(
        status=429, headers={"Retry-After": "42", "Content-Type": "application/problem+json"},
        body=json.dumps(problem)))
    page.get_by_label("Report id", exact=True).fill("any-report")
    page.get_by_role("button", name="Start job").click()
    expect(notice).to_contain_text("Too many requests: At most 20 jobs may be created per hour")
    expect(notice).to_contain_text("Try again in 42 s.")

    page.route("**/api/v1/jobs?*", lambda route: route.abort("connectionrefused"))
    page.get_by_role("button", name="Refresh list").click()
    expect(notice).to_contain_text("Loading the jobs failed: cannot reach the API at http://127.0.0.1")
    shot(page, "network-error")


def test_layout_is_labelled_keyboard_usable_and_fits_a_phone(api_stack: str, worker: Any, token_for: Any,
                                                           page: Any, browser: Any) -> None:
    from playwright.sync_api import expect

    token = token_for()
    api = Api(api_stack, token)
    report_id = api.setup(3, "2026-05")
    api.session.post(f"{api_stack}/api/v1/reports/{report_id}/generate", json={"period": "2026-05"}, timeout=10)

    # Keyboard only: Tab to the token field, type, Enter submits.
    served = page.goto(f"{api_stack}/")
    assert served is not None and served.headers["content-type"] == "text/html; charset=utf-8"
    assert served.headers["x-frame-options"] == "DENY" and "authorization" not in served.request.headers
    page.keyboard.press("Tab")
    expect(page.get_by_label("Bearer token")).to_be_focused()
    page.keyboard.type(token)
    page.keyboard.press("Enter")
    expect(job_card(page, report_id).locator(".badge")).to_have_text("Completed")
    job_card(page, report_id).get_by_role("link", name="View result").click()
    expect(job_card(page, report_id).get_by_role("table")).to_be_visible()
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('input, select, textarea, button, progress')]
        .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                     && !e.getAttribute('aria-labelledby') && !e.textContent.trim())
        .map(e => e.outerHTML)""")
    assert unlabelled == []
    shot(page, "desktop")

    phone = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    try:
        tab = phone.new_page()
        tab.goto(f"{api_stack}/")
        tab.get_by_label("Bearer token").fill(token)
        tab.get_by_role("button", name="Use token").click()
        expect(job_card(tab, report_id).locator(".badge")).to_have_text("Completed")
        job_card(tab, report_id).get_by_role("link", name="View result").click()
        expect(job_card(tab, report_id).get_by_role("table")).to_be_visible()
        assert tab.evaluate("document.documentElement.scrollWidth") <= PHONE["width"], "horizontal scrolling"
        shot(tab, "phone")
    finally:
        phone.close()


def test_a_banner_shows_while_the_api_is_not_ready(api_stack: str, page: Any) -> None:
    from playwright.sync_api import expect

    banner = page.locator("#readiness")
    page.goto(f"{api_stack}/")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")  # the real /health/ready: ready
    expect(banner).to_be_hidden()

    problem = {"type": "urn:reports:problem:service-unavailable", "title": "Service unavailable", "status": 503,
               "detail": "Not ready: the queue (timeout) did not answer as expected.",
               "checks": {"table": "ok", "queue": "timeout", "bucket": "ok"}}
    page.route("**/health/ready", lambda route: route.fulfill(
        status=503, headers={"Retry-After": "5", "Content-Type": "application/problem+json"},
        body=json.dumps(problem)))
    page.reload()
    expect(banner).to_be_visible()
    expect(banner).to_have_attribute("role", "alert")
    expect(banner).to_contain_text("The API is not ready: its work queue (timeout) does not answer.")
    expect(banner).to_contain_text("Checking again in 5 s.")
    shot(page, "not-ready")

    page.unroute("**/health/ready")
    banner.get_by_role("button", name="Check again").click()
    expect(banner).to_be_hidden()
    expect(page.locator("body")).to_have_attribute("data-ready", "true")

    page.route("**/health/ready", lambda route: route.abort("connectionrefused"))
    banner_text = "Cannot reach the API at " + api_stack
    page.evaluate("document.getElementById('readiness-check').click()")  # the button is hidden while ready
    expect(banner).to_contain_text(banner_text)


def test_list_create_edit_and_delete_reports_from_the_page(api_stack: str, token_for: Any, page: Any) -> None:
    from playwright.sync_api import expect

    tenant = f"dash-{uuid.uuid4().hex[:8]}"
    token, colleague = token_for(tenant=tenant, roles=("finance",)), token_for(tenant=tenant)
    shared = Api(api_stack, colleague)
    shared_id = f"dash-shared-{uuid.uuid4().hex[:6]}"
    assert shared.session.post(f"{api_stack}/api/v1/reports", timeout=10, json={
        "reportId": shared_id, "name": "Colleague's report", "allowedRoles": ["finance"],
        "deliveryTargets": [{"type": "api", "mode": "async"}]}).status_code == 201
    sign_in(page, api_stack, token)
    items = page.locator("#reports > li")
    expect(items).to_have_count(1)
    expect(items.first).to_contain_text("Colleague's report")
    # A role holder may use it, not edit or delete it.
    expect(items.first.get_by_role("button", name=f"Use report {shared_id}")).to_be_visible()
    expect(items.first.get_by_role("button", name=re.compile("^(Edit|Delete) report"))).to_have_count(0)

    # Create with targets and a schedule.
    report_id = f"dash-{uuid.uuid4().hex[:10]}"
    page.get_by_text("Create a report configuration").click()
    page.get_by_label("New report id").fill(report_id)
    page.get_by_label("Name", exact=True).fill("Made on the page")
    page.get_by_label("Delivery targets, one per line").fill("api:async\nemail:cfo@example.com")
    page.get_by_label("Monthly on day").fill("3")
    page.get_by_role("button", name="Create report").click()
    expect(page.locator("#notice")).to_contain_text(f"Created report {report_id}")
    mine = items.filter(has_text=report_id)
    expect(mine).to_contain_text("email:cfo@example.com")
    expect(mine).to_contain_text("monthly on day 3")
    expect(items).to_have_count(2)

    # Bad input: a clear error, nothing stored.
    mine.get_by_role("button", name=f"Edit report {report_id}").click()
    expect(page.get_by_label("Name", exact=True)).to_have_value("Made on the page")
    expect(page.get_by_label("New report id")).to_have_value(report_id)
    page.get_by_label("Delivery targets, one per line").fill("email:not-an-address")
    page.get_by_role("button", name="Save report").click()
    expect(page.locator("#notice")).to_contain_text("deliveryTargets")
    before = requests.get(f"{api_stack}/api/v1/reports/{report_id}", headers=token.headers, timeout=10).json()
    assert before["deliveryTargets"][1] == {"type": "email", "to": "cfo@example.com"}

    # Edit: name, roles, categories, targets, schedule removed.
    page.get_by_label("Name", exact=True).fill("Renamed on the page")
    page.get_by_label("Allowed roles").fill("audit, finance")
    page.get_by_label("Categories, one per line").fill("Travel\nOther")
    page.get_by_label("Delivery targets, one per line").fill("api:async")
    page.get_by_label("Monthly on day").fill("")
    page.get_by_role("button", name="Save report").click()
    expect(page.locator("#notice")).to_contain_text(f"Saved report {report_id}")
    expect(mine).to_contain_text("Renamed on the page")
    stored = requests.get(f"{api_stack}/api/v1/reports/{report_id}", headers=token.headers, timeout=10).json()
    assert (stored["name"], stored["allowedRoles"], stored["categories"], stored["deliveryTargets"]) == (
        "Renamed on the page", ["audit", "finance"], ["Travel", "Other"], [{"type": "api", "mode": "async"}])
    assert "schedule" not in stored

    # Someone else changes it while the form is open: 412, and the form shows the current version.
    mine.get_by_role("button", name=f"Edit report {report_id}").click()
    expect(page.get_by_label("Name", exact=True)).to_have_value("Renamed on the page")
    etag = requests.get(f"{api_stack}/api/v1/reports/{report_id}", headers=token.headers, timeout=10).headers["ETag"]
    assert requests.patch(f"{api_stack}/api/v1/reports/{report_id}", json={"name": "Changed elsewhere"},
                          headers={**token.headers, "If-Match": etag}, timeout=10).status_code == 200
    page.get_by_label("Name", exact=True).fill("Lost update")
    page.get_by_role("button", name="Save report").click()
    expect(page.locator("#notice")).to_contain_text("was changed elsewhere")
    expect(page.get_by_label("Name", exact=True)).to_have_value("Changed elsewhere")
    page.get_by_role("button", name="Cancel editing").click()
    shot(page, "reports-edited")

    # Delete: two clicks (the second confirms).
    mine.get_by_role("button", name=f"Delete report {report_id}").click()
    mine.get_by_role("button", name=f"Confirm delete of report {report_id}").click()
    expect(page.locator("#notice")).to_contain_text(f"Deleted report {report_id}")
    expect(items).to_have_count(1)
    assert requests.get(f"{api_stack}/api/v1/reports/{report_id}", headers=token.headers,
                        timeout=10).status_code == 404


def test_a_webhook_target_made_on_the_page_shows_its_secret_once(api_stack: str, token_for: Any, page: Any) -> None:
    from playwright.sync_api import expect

    token, report_id = token_for(), f"dash-{uuid.uuid4().hex[:10]}"
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=api_stack)
    sign_in(page, api_stack, token)
    page.get_by_text("Create a report configuration").click()
    page.get_by_label("New report id").fill(report_id)
    page.get_by_label("Name", exact=True).fill("Hooked")
    page.get_by_label("Delivery targets, one per line").fill("api:async\nemail:cfo@example.com")
    page.get_by_role("button", name="Add webhook").click()
    expect(page.get_by_label("Webhook 1 URL")).to_be_focused()
    page.get_by_label("Webhook 1 URL").fill("https://hooks.example.com/reports")
    events = page.get_by_role("group", name="Events for webhook 1")
    events.get_by_label("job.cancelled").uncheck()
    events.get_by_label("job.progress").check()
    page.get_by_role("button", name="Create report").click()

    box = page.locator("#secret-box")
    expect(box).to_be_visible()
    expect(box).to_contain_text("Copy it now: it is not shown again")
    expect(box).to_contain_text(f"Report {report_id} signs its webhooks")
    secret = page.get_by_label("Secret", exact=True).input_value()
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/=]+", secret), secret
    box.get_by_role("button", name="Copy secret").click()
    expect(box).to_contain_text("Copied to the clipboard.")
    assert page.evaluate("navigator.clipboard.readText()") == secret
    shot(page, "webhook-secret")
    stored = requests.get(f"{api_stack}/api/v1/reports/{report_id}", headers=token.headers, timeout=10).json()
    assert stored["deliveryTargets"] == [
        {"type": "api", "mode": "async"}, {"type": "email", "to": "cfo@example.com"},
        {"type": "webhook", "url": "https://hooks.example.com/reports",
         "events": ["job.completed", "job.failed", "job.progress"]}]
    assert "webhookSecret" not in stored
    mine = page.locator("#reports > li").filter(has_text=report_id)
    expect(mine).to_contain_text("webhook:https://hooks.example.com/reports (job.completed, job.failed, job.progress)")

    # Once: a reload (or any later read) does not show it again.
    page.reload()
    expect(page.locator("#reports > li").filter(has_text=report_id)).to_have_count(1)
    expect(box).to_be_hidden()
    assert secret not in page.content()

    # Editing only the name leaves the targets out of the PATCH (so nothing is enabled again) and mints no secret.
    mine.get_by_role("button", name=f"Edit report {report_id}").click()
    expect(page.get_by_label("Webhook 1 URL")).to_have_value("https://hooks.example.com/reports")
    expect(page.get_by_label("Delivery targets, one per line")).to_have_value("api:async\nemail:cfo@example.com")
    expect(events.get_by_label("job.progress")).to_be_checked()
    expect(events.get_by_label("job.cancelled")).not_to_be_checked()
    page.get_by_label("Name", exact=True).fill("Hooked, renamed")
    with page.expect_request(lambda r: r.method == "PATCH") as patch:
        page.get_by_role("button", name="Save report").click()
    assert patch.value.post_data_json["name"] == "Hooked, renamed" and "deliveryTargets" not in \
        patch.value.post_data_json
    expect(page.locator("#notice")).to_contain_text(f"Saved report {report_id}")
    expect(mine).to_contain_text("Hooked, renamed")  # the list is drawn again after a save
    expect(box).to_be_hidden()

    # The owner rotates it (two clicks): a new secret, shown once the same way.
    mine.get_by_role("button", name=f"Rotate the webhook secret of report {report_id}").click()
    mine.get_by_role("button", name=f"Confirm rotating the webhook secret of report {report_id}").click()
    expect(box).to_be_visible()
    expect(box).to_contain_text("The previous secret keeps signing beside it until")
    rotated = page.get_by_label("Secret", exact=True).input_value()
    assert rotated.startswith("whsec_") and rotated != secret
    box.get_by_role("button", name="I have copied it").click()
    expect(box).to_be_hidden()
    assert rotated not in page.content()


def test_a_patch_adding_the_first_webhook_shows_the_secret(api_stack: str, token_for: Any, page: Any) -> None:
    from playwright.sync_api import expect

    token = token_for()
    report_id = Api(api_stack, token).setup(1, "2026-06")
    sign_in(page, api_stack, token)
    mine = page.locator("#reports > li").filter(has_text=report_id)
    expect(mine.get_by_role("button", name=re.compile("Rotate"))).to_have_count(0)  # no webhook yet
    mine.get_by_role("button", name=f"Edit report {report_id}").click()
    page.get_by_role("button", name="Add webhook").click()
    page.get_by_role("button", name="Save report").click()  # no URL yet: said so, nothing sent
    expect(page.locator("#notice")).to_contain_text("Type the URL of webhook 1, or remove it.")
    page.get_by_label("Webhook 1 URL").fill("https://hooks.example.com/added")
    page.get_by_role("button", name="Save report").click()
    expect(page.locator("#secret-box")).to_be_visible()
    assert page.get_by_label("Secret", exact=True).input_value().startswith("whsec_")
    expect(mine.get_by_role("button", name=f"Rotate the webhook secret of report {report_id}")).to_be_visible()


def test_a_finished_jobs_deliveries_show_in_its_card_and_retry_sends_again(
        api_stack: str, worker: Any, token_for: Any, page: Any) -> None:
    from playwright.sync_api import expect

    token = token_for()
    api = Api(api_stack, token)
    # The receiver first answers 410 Gone (the delivery is Disabled, and the report shows its webhook disabled),
    # then 200: the Retry button enables the target again and sends the delivery once more.
    with Receiver(answers=[(410, {})]) as hooks:
        report_id = api.setup(3, "2026-07", targets=[{"type": "webhook", "url": hooks.url,
                                                      "events": ["job.completed"]}])
        assert api.session.post(f"{api_stack}/api/v1/reports/{report_id}/generate", json={"period": "2026-07"},
                                timeout=10).status_code == 202
        sign_in(page, api_stack, token)
        card = job_card(page, report_id)
        expect(card.locator(".badge")).to_have_text("Completed")
        row = card.locator(".deliveries tbody tr")
        expect(row).to_have_count(1)
        expect(row.locator(".d-status")).to_have_text("Disabled")
        cells = row.locator("td")
        expect(cells.nth(0)).to_have_text("webhook")
        expect(cells.nth(1)).to_have_text(hooks.url)
        expect(cells.nth(2)).to_have_text("job.completed")
        expect(cells.nth(4)).to_have_text("1")
        expect(cells.nth(5)).to_contain_text("410 Gone")
        expect(card).to_have_attribute("data-polling", "false")  # nothing pending: no more polls
        page.get_by_role("button", name="Refresh reports").click()
        report = page.locator("#reports > li").filter(has_text=report_id)
        expect(report.locator(".disabled-target")).to_contain_text(f"Webhook {hooks.url} is disabled")
        shot(page, "delivery-disabled")
        assert len(hooks.requests) == 1

        row.get_by_role("button", name=re.compile("^Retry delivery 1: webhook")).click()
        expect(page.locator("#notice")).to_contain_text(f"Delivery to {hooks.url} queued again.")
        expect(row.locator(".d-status")).to_have_text("Delivered")
        expect(cells.nth(4)).to_have_text("1")
        expect(cells.nth(5)).to_have_text("–")
        expect(card).to_have_attribute("data-polling", "false")
        assert len(hooks.requests) == 2
        assert hooks.requests[0]["headers"]["webhook-id"] == hooks.requests[1]["headers"]["webhook-id"]
        page.get_by_role("button", name="Refresh reports").click()
        expect(report.locator(".disabled-target")).to_have_count(0)
        shot(page, "delivery-retried")
