"""`python -m bench [create|worker|reaper|cold|scale|cancel|list|seams|fair|cost|pacing|import ...]`: run the
named parts (all by default).

Exit code: 0 when every part ran (whatever its targets say), 1 when a part crashed, 2 on a bad argument,
130 when interrupted. Every process started (moto server, chalice local, worker) is stopped on the way out.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
import traceback
from collections.abc import Callable
from types import FrameType

from bench.env import Run, prepare_environment

PARTS = ("create", "worker", "reaper", "cold", "scale", "cancel", "list", "seams", "fair", "cost", "pacing",
         "import")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C


def _parse(argv: list[str]) -> list[str] | None:
    wanted = [a.lower() for a in argv] or list(PARTS)
    unknown = [a for a in wanted if a not in PARTS]
    if unknown:
        print(f"unknown part(s) {', '.join(unknown)}: use {', '.join(PARTS)} or nothing for all", file=sys.stderr)
        return None
    return [p for p in PARTS if p in wanted]


def _runner(part: str) -> Callable[[Run], None]:
    # Imported here: these modules import chalicelib, which must see the environment set by main().
    if part == "create":
        from bench import create_latency as module
    elif part == "worker":
        from bench import worker_throughput as module
    elif part == "cold":
        from bench import cold_start as module
    elif part == "scale":
        from bench import scale_out as module
    elif part == "cancel":
        from bench import cancel_latency as module
    elif part == "list":
        from bench import list_latency as module
    elif part == "seams":
        from bench import seams as module
    elif part == "fair":
        from bench import fair_shares as module
    elif part == "cost":
        from bench import cost as module
    elif part == "pacing":
        from bench import pacing as module
    elif part == "import":
        from bench import imports as module
    else:
        from bench import reaper_recovery as module
    return module.run


def _run_parts(run: Run, parts: list[str]) -> bool:
    """Run each part; a crash is reported and the next part still runs. True if none crashed."""
    from bench.api import quiesce

    ok = True
    for part in parts:
        started = time.monotonic()
        try:
            quiesce()
            _runner(part)(run)
        except Exception:
            ok = False
            print(f"\n[bench {part}] CRASHED:", file=sys.stderr)
            traceback.print_exc()
        print(f"\n[bench {part}] {time.monotonic() - started:.1f} s", flush=True)
    return ok


def main(argv: list[str]) -> int:
    parts = _parse(argv)
    if parts is None:
        return 2
    prepare_environment()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("local.stack").setLevel(logging.ERROR)  # "moto did not stop in 1s; killing it"
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    try:
        with Run() as run:
            endpoint = run.start_aws()
            print(f"bench: moto server {endpoint}, stack reports-bench deployed in {time.monotonic() - started:.1f} s")
            ok = _run_parts(run, parts)
    except KeyboardInterrupt:
        print("\nbench: interrupted; everything started was stopped", file=sys.stderr)
        return 130
    print(f"bench: done in {time.monotonic() - started:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
