"""Cold start: each handler's import time and each deployment package's size, against their budgets.

    python -m bench.cold_start            (or as a part of `make bench`: `run(run)` ignores its argument)

Import time is measured in fresh interpreters (median of 5), with the environment of a deployed function
(AWS_LAMBDA_FUNCTION_NAME set, so JSON logs and, for the workers, the X-Ray SDK are on; the API stage turns
tracing off). Two layouts: the source tree with this .venv, and, when `make package` has run, the unzipped
package with the SDK beside it as Lambda's runtime provides it (the bytecode `make package` adds included).
Both wall and CPU time are shown; on a busy machine CPU time is the steadier figure, and the budgets are in it
(the API function 300 ms, the worker 500 ms). Lambda's own init adds its runtime start (~100-200 ms) on top, and
runs on a fraction of a vCPU below 1769 MB of memory.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "build" / "package" / "dev"
API_BUDGET_MS = 300.0
# The worker (app + chalicelib.worker, tracing on): openai and pydantic are imported at the first model request
# (chalicelib/worker/deferred.py), so a cold start pays only for what every message needs.
WORKER_BUDGET_MS = 500.0
ZIP_BUDGET_MB = 15.0
RUNS = 5
# handler -> (modules imported in order, extra environment): what each deployed function imports on a cold start.
HANDLERS = {
    "api_handler": (("app",), {"POWERTOOLS_TRACE_DISABLED": "true"}),
    "process_work": (("app", "chalicelib.worker"), {}),
    "reap_stale_jobs": (("app", "chalicelib.reaper"), {}),
    "run_scheduled_reports": (("app", "chalicelib.schedules"), {}),
}
PROBE = """
import importlib, json, sys, time
wall, cpu = time.perf_counter(), time.process_time()
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps({"wall": (time.perf_counter() - wall) * 1000, "cpu": (time.process_time() - cpu) * 1000,
                  "openai": "openai" in sys.modules, "xray": "aws_xray_sdk.core" in sys.modules}))
"""


def _env(pythonpath: list[str] | None, extra: dict[str, str]) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), "APP_PREFIX": "reports-dev",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_LAMBDA_FUNCTION_NAME": "reports-dev-cold-start",
           "POWERTOOLS_METRICS_DISABLED": "true", "PYTHONDONTWRITEBYTECODE": "1", **extra}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(pythonpath)
    return env


def measure(modules: tuple[str, ...], extra: dict[str, str], pythonpath: list[str] | None = None) -> dict[str, Any]:
    """Median wall and CPU milliseconds to import `modules` in a fresh interpreter."""
    args = [sys.executable, *(["-S"] if pythonpath else []), "-c", PROBE, *modules]
    samples = []
    for _ in range(RUNS):
        done = subprocess.run(args, env=_env(pythonpath, extra), capture_output=True, text=True, timeout=120,
                              cwd=pythonpath[0] if pythonpath else ROOT)
        if done.returncode:
            raise RuntimeError(f"importing {modules} failed:\n{done.stderr[-2000:]}")
        samples.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {"wall": statistics.median(s["wall"] for s in samples), "cpu": statistics.median(s["cpu"] for s in samples),
            "openai": samples[0]["openai"], "xray": samples[0]["xray"]}


def _warm_bytecode() -> None:
    """Source-tree runs read this .venv's bytecode; compile it once so the first sample is not the odd one out."""
    subprocess.run([sys.executable, "-c", "import app, chalicelib.worker, chalicelib.reaper, chalicelib.schedules"],
                   env=_env(None, {}), cwd=ROOT, capture_output=True, timeout=120)


def import_rows(pythonpath: list[str] | None) -> list[dict[str, Any]]:
    rows = []
    for handler, (modules, extra) in HANDLERS.items():
        rows.append({"handler": handler, "modules": " + ".join(modules), **measure(modules, extra, pythonpath)})
    return rows


def _print_imports(title: str, rows: list[dict[str, Any]]) -> None:
    from bench.common import table

    print(f"\n  {title}")
    yes = {True: "yes", False: "no"}
    print("  " + table(["handler", "imports", "wall ms", "CPU ms", "openai", "X-Ray SDK"],
                       [[r["handler"], r["modules"], f"{r['wall']:.0f}", f"{r['cpu']:.0f}", yes[r["openai"]],
                         yes[r["xray"]]] for r in rows]).replace("\n", "\n  "))


def _api_ok(rows: list[dict[str, Any]]) -> bool:
    api = _row(rows, "api_handler")
    return api["cpu"] <= API_BUDGET_MS and not api["openai"] and not api["xray"]


def _row(rows: list[dict[str, Any]], handler: str) -> dict[str, Any]:
    return next(r for r in rows if r["handler"] == handler)


def package_sizes(package: Path = PACKAGE) -> dict[str, float] | None:
    zips = sorted(package.glob("*.zip")) if package.is_dir() else []
    return {z.name: z.stat().st_size / 1_000_000 for z in zips} or None


def main() -> int:
    from bench.common import heading, note, target

    heading("Cold start: handler import time and deployment package size")
    _warm_bytecode()
    rows = import_rows(None)
    _print_imports("source tree (.venv)", rows)
    ok = _api_ok(rows)
    layout = "source tree"
    sizes = package_sizes()
    if sizes is None:
        note("no build/package/dev: run make package first for the package's sizes and its import times")
    else:
        from infra.package import deployed_pythonpath

        with tempfile.TemporaryDirectory(prefix="cold-start-") as work:
            rows = import_rows(deployed_pythonpath(PACKAGE, Path(work)))
        _print_imports("unzipped package (build/package/dev), the runtime's SDK beside it", rows)
        ok, layout = _api_ok(rows) and ok, "unzipped package"
        print()
        for name, mb in sizes.items():
            target(f"{name} zipped", mb <= ZIP_BUDGET_MB, f"{mb:.2f} MB (budget {ZIP_BUDGET_MB:.0f} MB)")
    target("API function import (CPU)", ok, f"<= {API_BUDGET_MS:.0f} ms, without openai or the X-Ray SDK")
    work = _row(rows, "process_work")  # the package's figures when there is one: that is what Lambda runs
    target(f"worker import, {layout} (CPU)", work["cpu"] <= WORKER_BUDGET_MS and not work["openai"],
           f"{work['cpu']:.0f} ms (wall {work['wall']:.0f} ms), budget {WORKER_BUDGET_MS:.0f} ms, without openai")
    note("the worker imports openai and pydantic at its first model request, and the X-Ray SDK while tracing is "
         "on (as deployed); the reaper and the scheduler pay for the X-Ray SDK alone")
    return 0


def run(_run: Any = None) -> None:
    """Entry point for `python -m bench` (the shared Run is not needed: nothing here touches AWS)."""
    main()


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
