"""Part `cost`: cost per 1,000 lines on each lane (standard, flex, batch), cold and warm prompt cache, with the
share of input tokens the provider served from its prompt cache.

Each lane runs two jobs of LINES lines over VENDORS vendors the vendor cache has never seen, for one tenant, against
the provider simulator (which reports `usage.prompt_tokens_details.cached_tokens` for a prefix it has seen under the
same `prompt_cache_key`): cold, right after the simulator's prompt cache is cleared, then warm, a second job of the
same tenant and taxonomy (new vendors, so every line still needs the model). Every work message is handled as its
own Lambda invocation (CONCURRENCY at once); a batch job's batch is collected by the poller (the
poll_provider_batches schedule) as soon as the simulator finishes it (BATCH_DELAY s). Figures are the job's own
`usage` (API), costed from the price table (chalicelib/categorize/prices.py). The floor in the same run: the
cheapest lane's cost, warm, as the ratio base.
"""

from __future__ import annotations

import dataclasses
import uuid
from decimal import Decimal
from typing import Any

from bench.api import InProcessApi, new_user
from bench.common import heading, note, table
from bench.env import Run
from bench.seams import letters, run_until_done
from chalicelib.settings import Settings, get_settings
from chalicelib.tables import Job
from chalicelib.worker import batchlane
from local.simulator import Simulator

LINES, VENDORS = 1000, 250
CONCURRENCY = 4
LATENCY = 0.05
BATCH_DELAY = 1.0
MODEL = "gpt-4o-mini"
LANES = ("standard", "flex", "batch")


def _run_until_done(job_id: str, settings: Settings, timeout: float = 150.0) -> None:
    """The seams part's driver, with the batch poller run between rounds while the job's batch is out."""
    def poll_batches(job: Job) -> None:
        if job.batch_state == "submitted":
            batchlane.poll(settings)

    run_until_done(job_id, settings, timeout, each_round=poll_batches)


def _lines(period: str) -> list[dict[str, str]]:
    salt = letters(uuid.uuid4().int % 26 ** 8)  # vendors the vendor cache has never seen
    return [{"lineId": f"c-{i:06d}", "date": f"{period}-{1 + i % 28:02d}",
             "vendor": f"Vendor {salt} {letters(i % VENDORS)}", "amount": f"{1 + i % 500}.{i % 100:02d}",
             "currency": "USD", "description": "expense"} for i in range(LINES)]


def _job(api: InProcessApi, headers: dict[str, str], report_id: str, period: str, lane: str,
         settings: Settings) -> dict[str, Any]:
    api.import_lines(headers, _lines(period))
    job = api.expect(202, "post", f"/api/v1/reports/{report_id}/generate", headers, {"period": period, "lane": lane})
    _run_until_done(job["jobId"], settings)
    return api.job(headers, job["jobId"])


def _figures(job: dict[str, Any]) -> dict[str, Any]:
    usage = job["usage"]
    per_1000 = Decimal(usage["estimatedCostUsd"]) * 1000 / job["processedLines"]
    share = usage["cachedTokens"] / usage["inputTokens"] if usage["inputTokens"] else 0.0
    return {"cost": per_1000, "share": share, "requests": usage["modelRequests"],
            "fallbacks": usage["flexFallbacks"]}


def run(bench: Run) -> None:
    heading(f"Cost per 1,000 lines by lane ({LINES} lines, {VENDORS} new vendors a job, {MODEL} prices; cold and "
            "warm provider prompt cache)")
    sim = Simulator(latency=LATENCY, batch_delay=BATCH_DELAY).start()
    try:
        settings = dataclasses.replace(get_settings(), openai_api_key="sk-bench", openai_base_url=sim.url,
                                       openai_model=MODEL, model_concurrency=CONCURRENCY)
        api = InProcessApi()
        results: dict[str, dict[str, dict[str, Any]]] = {}
        for n, lane in enumerate(LANES):
            _, headers = new_user(f"cost-{lane}")  # a tenant of its own: its own prompt_cache_key
            report_id = api.create_report(headers)
            sim.reset()  # the provider's prompt cache starts empty: cold
            cold = _figures(_job(api, headers, report_id, f"2024-{2 * n + 1:02d}", lane, settings))
            warm = _figures(_job(api, headers, report_id, f"2024-{2 * n + 2:02d}", lane, settings))
            results[lane] = {"cold": cold, "warm": warm}
    finally:
        sim.stop()
    floor = min(r["warm"]["cost"] for r in results.values())
    rows = [[lane, f"{r['cold']['cost']:.6f}", f"{r['warm']['cost']:.6f}",
             f"{r['cold']['share']:.0%}", f"{r['warm']['share']:.0%}",
             f"{r['warm']['cost'] / floor:.2f}x", f"{r['cold']['requests']}/{r['warm']['requests']}"]
            for lane, r in results.items()]
    print(table(["lane", "USD/1k lines cold", "USD/1k lines warm", "cached share cold", "cached share warm",
                 "warm vs cheapest", "model requests cold/warm"], rows))
    standard = results["standard"]["warm"]["cost"]
    note(f"flex and batch cost {results['flex']['warm']['cost'] / standard:.0%} and "
         f"{results['batch']['warm']['cost'] / standard:.0%} of standard (warm); cached share: input tokens the "
         "provider served from its prompt cache (the stable prompt prefix, per tenant and taxonomy)")
