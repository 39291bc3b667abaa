"""Delivery after completion: signed webhooks and SES email, each a tracked unit of work on the real SQS path.

The receiver is a real HTTP server on 127.0.0.1 (WEBHOOK_ALLOW_LOOPBACK, as `make run` sets it); signatures are
checked with the `standardwebhooks` package, an implementation of the spec independent of ours.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from chalicelib import messages, reaper
from chalicelib.delivery import service as delivery
from chalicelib.delivery import webhook
from chalicelib.settings import get_settings
from chalicelib.tables import Job
from tests.integration.test_worker import Api
from tests.support import HandOff, Receiver, deliver, deliver_until, drain, expense_lines, receive, vendors


@pytest.fixture
def api(client, token_for):
    # A user (and tenant) of their own: their lines of the month are this test's only.
    tenant = f"t-{uuid.uuid4().hex[:10]}"
    caller = Api(client, token_for(tenant=tenant))
    caller.tenant = tenant
    return caller


def make_report(api: Api, targets: list[dict], **extra) -> tuple[str, dict]:
    report_id = f"r-{uuid.uuid4().hex[:12]}"
    status, body = api.call("post", "/reports", {"reportId": report_id, "name": "Delivered",
                                                 "deliveryTargets": targets, **extra})
    assert status == 201, body
    return report_id, body


def generate(api: Api, report_id: str, n: int = 12, period: str = "2026-01") -> str:
    assert api.call("post", "/expenses", {"lines": expense_lines(n, vendors(3), period)})[0] == 201
    status, body = api.call("post", f"/reports/{report_id}/generate", {"period": period})
    assert status == 202, body
    return body["jobId"]


def hook(url: str, *events: str) -> dict:
    return {"type": "webhook", "url": url, "events": list(events or ["job.completed"])}


def attempts_of(api: Api, job_id: str) -> list[dict]:
    return [e["detail"] for e in api.call("get", f"/jobs/{job_id}/events")[1]["items"]
            if e["type"] == "delivery_attempt"]


def work_until_delivery(job_id: str) -> messages.Deliver:
    """Run the job's messages until the first Deliver message shows; return it, left undelivered."""
    for _ in range(100):
        for m in receive({job_id}, wait=1):
            message = messages.parse(m["Body"])
            if isinstance(message, messages.Deliver):
                return message
            deliver([m])
    raise AssertionError("no delivery message was queued")


def test_a_completed_job_is_posted_to_its_webhook_signed_as_the_spec_says(api):
    with Receiver() as rx:
        report_id, created = make_report(api, [{"type": "api", "mode": "async"}, hook(rx.url, "job.completed",
                                                                                        "job.failed")])
        secret = created["webhookSecret"]
        assert secret.startswith("whsec_")
        # Shown once: no later representation carries it.
        assert "webhookSecret" not in api.call("get", f"/reports/{report_id}")[1]
        listed = api.call("get", "/reports?pageSize=100")[1]["items"]
        assert [r for r in listed if r["reportId"] == report_id] and all("webhookSecret" not in r for r in listed)
        job_id = generate(api, report_id, n=12)
        drain({job_id})

        job = api.job(job_id)
        assert job["status"] == "Completed" and job["processedLines"] == 12
        [d] = job["deliveries"]
        assert {k: d[k] for k in ("target", "type", "event", "destination", "status", "attempts", "lastError")} == {
            "target": 1, "type": "webhook", "event": "job.completed", "destination": rx.url, "status": "Delivered",
            "attempts": 1, "lastError": None}
        [request] = rx.requests
        payload = Webhook(secret).verify(request["body"], request["headers"])
        assert payload["type"] == "job.completed"
        assert (payload["data"]["jobId"], payload["data"]["status"], payload["data"]["processedLines"]) == (
            job_id, "Completed", 12)
        assert "deliveries" not in payload["data"] and len(request["body"]) < 20_000
        assert request["headers"]["webhook-id"].startswith("msg_")
        with pytest.raises(WebhookVerificationError):
            Webhook(webhook.new_secret()).verify(request["body"], request["headers"])
        assert [(a["attempt"], a["status"]) for a in attempts_of(api, job_id)] == [(1, "Delivered")]


def test_a_receiver_answering_500_is_retried_through_queue_delays_and_retry_after_is_honoured(api, monkeypatch):
    monkeypatch.setattr(webhook, "backoff_seconds", lambda attempt: 1.0 if attempt < 8 else None)
    with Receiver(answers=[(500, {}), (503, {"Retry-After": "3"})]) as rx:
        report_id, _ = make_report(api, [{"type": "api", "mode": "async"}, hook(rx.url)])
        job_id = generate(api, report_id)
        deliver_until({job_id}, lambda: [d["status"] for d in api.job(job_id)["deliveries"]] == ["Delivered"],
                      timeout=40)
        [d] = api.job(job_id)["deliveries"]
        assert (d["attempts"], d["lastError"], api.job(job_id)["status"]) == (3, None, "Completed")
        assert len(rx.requests) == 3
        # One message, three attempts: the receiver can tell a retry from a new event by its webhook-id.
        assert len({r["headers"]["webhook-id"] for r in rx.requests}) == 1
        assert rx.requests[2]["at"] - rx.requests[1]["at"] >= 2.5  # the 503's Retry-After: 3, not the 1 s backoff
    assert [(a["attempt"], a["status"], a.get("error")) for a in attempts_of(api, job_id)] == [
        (1, "Pending", "HTTP 500"), (2, "Pending", "HTTP 503"), (3, "Delivered", None)]


def test_gone_disables_the_target_until_a_retry_enables_it_again(api):
    with Receiver(answers=[(410, {})]) as rx:
        report_id, _ = make_report(api, [{"type": "api", "mode": "async"}, hook(rx.url)])
        first = generate(api, report_id)
        drain({first})
        [d] = api.job(first)["deliveries"]
        assert (d["status"], d["attempts"]) == ("Disabled", 1) and "410" in d["lastError"]
        assert api.job(first)["status"] == "Completed"
        report = api.call("get", f"/reports/{report_id}")[1]
        assert [(t["target"], t["url"]) for t in report["disabledTargets"]] == [(1, rx.url)]

        second = generate(api, report_id)  # the same month again: nothing is sent to a disabled target
        drain({second})
        [d] = api.job(second)["deliveries"]
        assert (d["status"], d["attempts"]) == ("Disabled", 0) and len(rx.requests) == 1

        status, body = api.call("post", f"/jobs/{second}/deliveries/0/retry")
        assert status == 202 and body["deliveries"][0]["status"] == "Pending"
        drain({second})
        assert api.job(second)["deliveries"][0]["status"] == "Delivered" and len(rx.requests) == 2
        assert "disabledTargets" not in api.call("get", f"/reports/{report_id}")[1]


def test_a_hanging_receiver_times_out_and_the_job_stays_completed(api, monkeypatch):
    monkeypatch.setattr(webhook, "backoff_seconds", lambda attempt: 600.0)
    quick = dataclasses.replace(get_settings(), webhook_timeout_seconds=1.0)
    with Receiver(hang=True) as rx:
        report_id, _ = make_report(api, [{"type": "api", "mode": "async"}, hook(rx.url)])
        job_id = generate(api, report_id)
        drain({job_id}, quick)
        job = api.job(job_id)
        [d] = job["deliveries"]
        assert job["status"] == "Completed"
        assert (d["status"], d["attempts"]) == ("Pending", 1) and "timed out" in d["lastError"]
        assert d["nextAttemptAt"] is not None and len(rx.requests) == 1


def test_retrying_a_delivery_is_refused_while_it_is_under_way_and_for_what_is_not_there(api, monkeypatch,
                                                                                          token_for, client):
    monkeypatch.setattr(webhook, "backoff_seconds", lambda attempt: 600.0)
    with Receiver(default=500) as rx:
        report_id, _ = make_report(api, [{"type": "api", "mode": "async"}, hook(rx.url)])
        job_id = generate(api, report_id)
        drain({job_id})
        assert api.job(job_id)["deliveries"][0]["status"] == "Pending"
        status, body = api.call("post", f"/jobs/{job_id}/deliveries/0/retry")
        assert status == 409 and body["deliveryStatus"] == "Pending"
        assert api.call("post", f"/jobs/{job_id}/deliveries/1/retry")[0] == 404
        assert api.call("post", f"/jobs/{job_id}/deliveries/x/retry")[0] == 400
        stranger = Api(client, token_for(sub=f"u-{uuid.uuid4().hex[:10]}"))
        assert stranger.call("post", f"/jobs/{job_id}/deliveries/0/retry")[0] == 404
        assert len(rx.requests) == 1 and api.job(job_id)["deliveries"][0]["attempts"] == 1


def test_one_attempt_at_a_time_a_duplicate_message_during_an_attempt_sends_nothing(api, monkeypatch):
    with Receiver() as rx:
        report_id, _ = make_report(api, [{"type": "api", "mode": "async"}, hook(rx.url)])
        job_id = generate(api, report_id)
        message = work_until_delivery(job_id)
        entered, release, outcome = threading.Event(), threading.Event(), []
        real_post = webhook.post

        def held_post(*args, **kwargs):
            entered.set()
            release.wait(10)
            return real_post(*args, **kwargs)

        monkeypatch.setattr(webhook, "post", held_post)
        first = threading.Thread(target=lambda: outcome.append(delivery.handle(message)))
        first.start()
        assert entered.wait(10)
        # SQS delivers the same message again while the first attempt is still sending.
        assert delivery.handle(message) == "taken"
        release.set()
        first.join(10)
        assert outcome == ["Delivered"]
        assert delivery.handle(message) == "done"
        assert len(rx.requests) == 1
        assert [(a["attempt"], a["status"]) for a in attempts_of(api, job_id)] == [(1, "Delivered")]


def overdue(job_id: str, n: int = 0) -> None:
    """Make delivery `n` look as if its attempt was due minutes ago (its message lost)."""
    Job(job_id).update(actions=[Job.deliveries[n].next_at.set(int(time.time()) - delivery.OVERDUE_SECONDS - 60)])


def test_deliveries_the_queue_refused_at_completion_are_sent_by_the_reaper(api, monkeypatch):
    with Receiver() as rx:
        report_id, _ = make_report(api, [{"type": "api", "mode": "async"}, hook(rx.url)])
        job_id = generate(api, report_id)

        def refused(*args, **kwargs):
            raise messages.SendFailed(["0"])

        monkeypatch.setattr(delivery.messages, "send_batch", refused)
        drain({job_id})
        monkeypatch.undo()
        job = api.job(job_id)
        assert job["status"] == "Completed" and job["deliveries"][0]["status"] == "Pending"
        assert Job.get(job_id, consistent_read=True).active_status == delivery.DELIVERING  # the outbox mark
        assert receive({job_id}) == [] and rx.requests == []
        assert reaper.reap()["deliveries"] == 0  # a writer may still be queuing it: not yet overdue
        overdue(job_id)
        assert reaper.reap()["deliveries"] == 1
        drain({job_id})
        assert api.job(job_id)["deliveries"][0]["status"] == "Delivered" and len(rx.requests) == 1
        assert Job.get(job_id, consistent_read=True).active_status is None  # nothing Pending: the mark is gone
        assert reaper.reap()["deliveries"] == 0


def test_a_dead_lettered_delivery_fails_the_delivery_never_the_job(api, monkeypatch):
    monkeypatch.setattr(webhook, "backoff_seconds", lambda attempt: 600.0)
    with Receiver(default=500) as rx:
        report_id, _ = make_report(api, [{"type": "api", "mode": "async"}, hook(rx.url)])
        job_id = generate(api, report_id)
        drain({job_id})
        stored = Job.get(job_id, consistent_read=True).deliveries[0]
        body = messages.Deliver(job_id, 0, stored.id, 2).to_body()
        assert reaper.dead_letter(body, "5") == {"outcome": "failed", "jobId": job_id}
        job = api.job(job_id)
        assert job["status"] == "Completed" and job["deliveries"][0]["status"] == "Failed"
        assert "dead-letter" in job["deliveries"][0]["lastError"]
        # A progress webhook that dead-letters is dropped; the job is untouched.
        progress = messages.Deliver(job_id, 1, "msg_x", 1, "job.progress").to_body()
        assert reaper.dead_letter(progress, "5")["outcome"] == "dropped"
        assert api.job(job_id)["status"] == "Completed" and len(rx.requests) == 1


def test_a_retried_job_drops_the_deliveries_of_the_status_it_left(api, monkeypatch):
    monkeypatch.setattr(webhook, "backoff_seconds", lambda attempt: 600.0)
    with Receiver(default=500) as rx:
        report_id, _ = make_report(api, [{"type": "api", "mode": "async"}, hook(rx.url, "job.cancelled",
                                                                                        "job.completed")])
        job_id = generate(api, report_id)
        assert api.call("delete", f"/jobs/{job_id}")[0] == 200
        drain({job_id})
        stored = Job.get(job_id, consistent_read=True).deliveries[0]
        assert stored.event == "job.cancelled" and stored.status == "Pending"  # its receiver answered 500
        assert api.call("post", f"/jobs/{job_id}/retry")[0] == 202
        assert api.job(job_id)["deliveries"] == []
        # The job.cancelled retry still on the queue finds nothing to send: the job is no longer cancelled.
        assert delivery.handle(messages.Deliver(job_id, 0, stored.id, 2)) == "stale"
        rx.default = 200
        drain({job_id})
        job = api.job(job_id)
        assert job["status"] == "Completed"
        assert [(d["event"], d["status"]) for d in job["deliveries"]] == [("job.completed", "Delivered")]
        assert rx.events() == ["job.cancelled", "job.completed"]


def test_a_delivery_goes_only_to_a_target_its_report_still_has(api):
    with Receiver() as rx, Receiver() as other:
        report_id, _ = make_report(api, [{"type": "api", "mode": "async"}, hook(rx.url)])
        job_id = generate(api, report_id)
        message = work_until_delivery(job_id)
        # The owner points the report elsewhere before the attempt: the planned URL no longer receives it.
        response = api.client.http.get(f"/api/v1/reports/{report_id}", headers=api.headers)
        assert api.client.http.patch(f"/api/v1/reports/{report_id}",
                                     headers={**api.headers, "If-Match": response.headers["ETag"]},
                                     body=json.dumps({"deliveryTargets": [{"type": "api", "mode": "async"},
                                                                          hook(other.url)]})).status_code == 200
        assert delivery.handle(message) == "Failed"
        [d] = api.job(job_id)["deliveries"]
        assert d["status"] == "Failed" and "no longer has this target" in d["lastError"]
        assert rx.requests == [] and other.requests == []


def test_a_rotated_secret_signs_beside_the_new_one_and_only_the_owner_rotates(api, client, token_for):
    with Receiver() as rx:
        report_id, created = make_report(api, [{"type": "api", "mode": "async"}, hook(rx.url)],
                                         allowedRoles=["finance"])
        old = created["webhookSecret"]
        status, rotated = api.call("post", f"/reports/{report_id}/webhook-secret/rotate")
        assert status == 200 and rotated["webhookSecret"].startswith("whsec_") and rotated["webhookSecret"] != old
        assert rotated["previousSecretExpiresAt"] is not None
        job_id = generate(api, report_id)
        drain({job_id})
        [request] = rx.requests
        assert len(request["headers"]["webhook-signature"].split(" ")) == 2
        for secret in (rotated["webhookSecret"], old):  # each alone verifies: receivers switch when they like
            assert Webhook(secret).verify(request["body"], request["headers"])["data"]["jobId"] == job_id

    member = Api(client, token_for(roles=["finance"], tenant=api.tenant))
    assert member.call("post", f"/reports/{report_id}/webhook-secret/rotate")[0] == 403
    assert Api(client, token_for(tenant="another-tenant")).call(
        "post", f"/reports/{report_id}/webhook-secret/rotate")[0] == 404


def test_progress_webhooks_go_out_at_most_every_ten_seconds_per_job(api):
    with Receiver() as rx:
        report_id, created = make_report(api, [{"type": "api", "mode": "async"},
                                               hook(rx.url, "job.progress", "job.completed")])
        job_id = generate(api, report_id, n=60)  # three batches of 20: three checkpoints
        batches = dataclasses.replace(get_settings(), line_batch_size=20)
        # Each message is handed to another thread as it is sent: a progress webhook goes out mid-job, as it
        # would with a fleet of workers (taken up after the job's end, it would be dropped: the final event says
        # more).
        with HandOff(batches):
            drain({job_id}, batches)
        assert rx.events() == ["job.progress", "job.completed"]  # the later checkpoints fell inside 10 s
        assert Webhook(created["webhookSecret"]).verify(rx.requests[0]["body"], rx.requests[0]["headers"])[
            "data"]["status"] == "Processing"
        job = api.job(job_id)
        assert [d["event"] for d in job["deliveries"]] == ["job.completed"]  # progress is not tracked
        assert delivery.progress(job_id, job_id, report_id) == 0  # no such report in that tenant: nothing


@pytest.mark.parametrize(("target", "field"), [
    (hook("http://hooks.example.com/in"), "deliveryTargets[0].url"),
    (hook("https://10.0.0.7/in"), "deliveryTargets[0].url"),
    (hook("https://169.254.169.254/latest/meta-data"), "deliveryTargets[0].url"),
    (hook("https://192.168.1.20:8443/in"), "deliveryTargets[0].url"),
    (hook("https://user:pw@hooks.example.com/in"), "deliveryTargets[0].url"),
    (hook("https://hooks.example.com/in", "job.finished"), "deliveryTargets[0].events"),
    ({"type": "webhook", "url": "https://hooks.example.com/in", "events": []}, "deliveryTargets[0].events"),
    ({"type": "webhook", "url": "https://hooks.example.com/in", "events": ["job.completed"], "secret": "x"},
     "deliveryTargets[0]"),
    ({"type": "email", "to": "not-an-address"}, "deliveryTargets[0].to"),
    ({"type": "email", "to": "a@example.com\r\nBcc: b@example.com"}, "deliveryTargets[0].to"),
])
def test_a_bad_delivery_target_is_refused_naming_the_field_and_nothing_is_stored(api, target, field):
    report_id = f"r-{uuid.uuid4().hex[:12]}"
    status, body = api.call("post", "/reports", {"reportId": report_id, "name": "Bad", "deliveryTargets": [target]})
    assert status == 400 and body["field"] == field, body
    assert api.call("get", f"/reports/{report_id}")[0] == 404


def test_more_than_ten_targets_or_a_bad_patch_changes_nothing(api):
    targets = [{"type": "email", "to": f"p{i}@example.com"} for i in range(11)]
    report_id = f"r-{uuid.uuid4().hex[:12]}"
    status, body = api.call("post", "/reports", {"reportId": report_id, "name": "Many", "deliveryTargets": targets})
    assert status == 400 and body["field"] == "deliveryTargets"
    assert api.call("get", f"/reports/{report_id}")[0] == 404

    report_id, _ = make_report(api, [{"type": "api", "mode": "async"}])
    response = api.client.http.get(f"/api/v1/reports/{report_id}", headers=api.headers)
    tag, before = response.headers["ETag"], response.body
    response = api.client.http.patch(f"/api/v1/reports/{report_id}", headers={**api.headers, "If-Match": tag},
                                     body='{"deliveryTargets": [{"type": "webhook", "url": "https://10.1.2.3/x", '
                                          '"events": ["job.completed"]}]}')
    assert response.status_code == 400
    after = api.client.http.get(f"/api/v1/reports/{report_id}", headers=api.headers)
    assert (after.headers["ETag"], after.body) == (tag, before)


def test_loopback_receivers_are_refused_where_the_allowance_is_off(api, monkeypatch):
    from chalicelib.reports import service as reports

    monkeypatch.setattr(reports, "get_settings",
                        lambda: dataclasses.replace(get_settings(), webhook_allow_loopback=False))
    status, body = api.call("post", "/reports", {"name": "Local", "deliveryTargets": [hook("http://127.0.0.1:9/in")]})
    assert status == 400 and body["field"] == "deliveryTargets[0].url"


def test_a_webhook_added_by_a_patch_gets_its_secret_in_that_response_only(api):
    with Receiver() as rx:
        report_id, created = make_report(api, [{"type": "api", "mode": "async"}])
        assert "webhookSecret" not in created
        response = api.client.http.get(f"/api/v1/reports/{report_id}", headers=api.headers)
        patched = api.client.http.patch(
            f"/api/v1/reports/{report_id}", headers={**api.headers, "If-Match": response.headers["ETag"]},
            body=f'{{"deliveryTargets": [{{"type": "api", "mode": "async"}}, {{"type": "webhook", "url": '
                 f'"{rx.url}", "events": ["job.completed"]}}]}}')
        assert patched.status_code == 200
        secret = json.loads(patched.body)["webhookSecret"]
        job_id = generate(api, report_id)
        drain({job_id})
        [request] = rx.requests
        assert Webhook(secret).verify(request["body"], request["headers"])["type"] == "job.completed"


def test_a_failed_and_a_cancelled_job_are_announced_to_the_targets_that_asked(api):
    with Receiver() as rx:
        report_id, _ = make_report(api, [{"type": "api", "mode": "async"},
                                         hook(rx.url, "job.cancelled", "job.failed"),
                                         {"type": "email", "to": "someone@example.com"}])
        job_id = generate(api, report_id)
        assert api.call("delete", f"/jobs/{job_id}")[0] == 200
        drain({job_id})
        job = api.job(job_id)
        assert job["status"] == "Cancelled"
        # The email target wants a finished report only; the webhook asked for job.cancelled.
        assert [(d["type"], d["event"], d["status"]) for d in job["deliveries"]] == [
            ("webhook", "job.cancelled", "Delivered")]
        assert rx.events() == ["job.cancelled"]


def mails_to(endpoint: str, address: str) -> list[dict]:
    from local import mailbox

    return [m for m in mailbox.sent(endpoint, limit=1000) if address in m["destinations"]]


def attachment_of(endpoint: str, message_id: str) -> bytes:
    from email import message_from_string, policy

    from local import mailbox

    message = message_from_string(mailbox.raw(endpoint, message_id), policy=policy.default)
    [part] = list(message.iter_attachments())
    return part.get_payload(decode=True)


def test_a_completed_job_is_mailed_with_its_totals_and_its_csv_through_ses(api, aws_endpoint):
    address = f"finance-{uuid.uuid4().hex[:8]}@example.com"
    report_id, _ = make_report(api, [{"type": "api", "mode": "async"}, {"type": "email", "to": address}])
    job_id = generate(api, report_id, n=9)
    drain({job_id})
    [d] = api.job(job_id)["deliveries"]
    assert (d["type"], d["destination"], d["status"], d["attempts"]) == ("email", address, "Delivered", 1)
    [mail] = mails_to(aws_endpoint, address)  # read from moto's SES over the wire
    assert report_id in mail["subject"] and "2026-01" in mail["subject"]
    assert mail["source"] == get_settings().ses_from
    result = api.result(job_id)
    for total in result["totals"]:
        assert total["category"] in mail["body"]
    assert f"/api/v1/jobs/{job_id}/result" in mail["body"]
    assert mail["attachments"] == [f"{report_id}-2026-01.csv"]
    csv_text = api.client.http.get(f"/api/v1/jobs/{job_id}/result?format=csv", headers=api.headers).body
    assert attachment_of(aws_endpoint, mail["messageId"]) == (csv_text if isinstance(csv_text, bytes)
                                                               else csv_text.encode())


def test_a_scheduled_email_report_is_generated_for_last_month_and_mailed_once(api, aws_endpoint):
    """Run by the local scheduler's own handler, as EventBridge would fire it on the report's day."""
    from datetime import UTC, datetime

    import app as app_module
    from local.scheduler import scheduled_handlers

    address = f"monthly-{uuid.uuid4().hex[:8]}@example.com"
    # Day 27: no other test schedules a report then, and the run below is dated, so any real date works.
    report_id, _ = make_report(api, [{"type": "email", "to": address}], schedule={"type": "monthly", "day": 27})
    assert api.call("post", "/expenses", {"lines": expense_lines(6, vendors(2), "2026-10")})[0] == 201
    # Delivered only by email: the API does not generate it.
    status, body = api.call("post", f"/reports/{report_id}/generate", {"period": "2026-10"})
    assert status == 409 and body["detail"] == "Report is not configured for asynchronous generation."

    handler = {h.name: h for h in scheduled_handlers(app_module.app)}["run_scheduled_reports"]
    when = datetime(2026, 11, 27, 0, 5, tzinfo=UTC)
    handler.fire(when=when)
    handler.fire(when=when)  # a second run that day (a retry, a second scheduler): nothing more
    jobs = [j for j in api.call("get", "/jobs?pageSize=100")[1]["items"] if j["reportId"] == report_id]
    assert [(j["trigger"], j["period"]) for j in jobs] == [("schedule", "2026-10")]
    job_id = jobs[0]["jobId"]
    drain({job_id})
    job = api.job(job_id)
    assert job["status"] == "Completed" and job["processedLines"] == 6
    assert [(d["type"], d["status"]) for d in job["deliveries"]] == [("email", "Delivered")]
    handler.fire(when=when)
    [mail] = mails_to(aws_endpoint, address)
    assert "2026-10" in mail["subject"] and mail["attachments"] == [f"{report_id}-2026-10.csv"]
