"""Part `list` (issue 15, item 8): `GET /api/v1/jobs` for a light user (100 jobs) and a heavy one (10,000).

The jobs are written straight to the table, with the per-day counts their creates would have left (a quarter
of them still live),
then each listing is timed through the API in-process: the first page, the same with a status filter, the
next page by `nextToken`, a near page by number, and a far one (its first 1,980 jobs skipped by keys only; no
target: `nextToken` is the way to walk far). Target: p95 of every listing well under a second at
10,000 jobs (1 s), and within a few times the light user's (the floor measured in the same run).
"""

from __future__ import annotations

import time
import uuid

from bench.api import InProcessApi, bearer
from bench.common import heading, percentile, ratio, table, target, times
from bench.env import Run
from local.testkit import seed_jobs

SIZES = (100, 10_000)
REPEATS = 10
TARGET_SECONDS = 1.0


def _time(api: InProcessApi, headers: dict[str, str], path: str) -> tuple[float, dict]:
    started = time.perf_counter()
    body = api.expect(200, "get", path, headers)
    return time.perf_counter() - started, body


def run(_: Run) -> None:
    heading("Job list: a light user and a heavy one (target: p95 under 1 s at 10,000 jobs)")
    api = InProcessApi()
    rows, p95s = [], {}
    for n in SIZES:
        owner = f"bench-list-{n}-{uuid.uuid4().hex[:8]}"
        seed_jobs(owner, n)
        headers = bearer(owner)
        _, first = _time(api, headers, "/api/v1/jobs?pageSize=20")
        assert first["totalCount"] == n and len(first["items"]) == 20, first["totalCount"]
        token = first["nextToken"]
        cases = {
            "first page": "/api/v1/jobs?pageSize=20",
            "status=Processing": "/api/v1/jobs?pageSize=20&status=Processing",
            "next page (token)": f"/api/v1/jobs?pageSize=20&nextToken={token}",
            "page 5": "/api/v1/jobs?pageSize=20&page=5",
            "page 100 (keys first)": "/api/v1/jobs?pageSize=20&page=100",
        }
        for name, path in cases.items():
            spent = [_time(api, headers, path)[0] for _ in range(REPEATS)]
            p95s[(n, name)] = percentile(spent, 95)
            rows.append([f"{n:,} jobs: {name}", f"{percentile(spent, 50) * 1000:.1f}",
                         f"{p95s[(n, name)] * 1000:.1f}"])
    for name in ("first page", "status=Processing", "next page (token)", "page 5"):
        rows.append([f"ratio 10,000 / 100: {name}", "", times(ratio(p95s[(SIZES[1], name)], p95s[(SIZES[0], name)]))])
    print(table(["listing", "p50 ms", "p95 ms"], rows))
    worst = max(p95s[(SIZES[1], name)] for name in ("first page", "status=Processing", "next page (token)", "page 5"))
    target("list p95 at 10,000 jobs", worst < TARGET_SECONDS, f"worst p95 {worst * 1000:.0f} ms")
