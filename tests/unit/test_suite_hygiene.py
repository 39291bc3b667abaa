"""The suite itself: a test that can skip, or that draws its data's order from `hash()`, can hide a failure.

Skips are allowed only where the machine lacks an optional tool (a browser, the installed console script), and
each of those fails instead under CI=true. Orders come from seeded `random.Random(seed)` generators, so a
failure replays (`hash()` of a str changes with PYTHONHASHSEED, that is, with every run).
"""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
# (file, the reason it may skip): optional tools only, and each of them fails under CI=true.
ALLOWED_SKIPS = {
    "e2e/test_cli.py": "the reports console script is not installed",
    "e2e/test_dashboard.py": "no Chromium / playwright",
}


def _sources() -> dict[str, str]:
    return {path.relative_to(TESTS).as_posix(): path.read_text() for path in TESTS.rglob("*.py")
            if path.name != Path(__file__).name}


def test_only_missing_optional_tools_skip_a_test():
    skipping = {name for name, text in _sources().items()
                if re.search(r"pytest\.skip\(|pytest\.mark\.skip(if)?\b|pytest\.importorskip\(", text)}
    assert skipping <= set(ALLOWED_SKIPS), sorted(skipping - set(ALLOWED_SKIPS))
    for name in ALLOWED_SKIPS:
        assert 'os.environ.get("CI", "").lower() == "true"' in _sources()[name], f"{name} must fail under CI=true"


def test_no_test_orders_its_data_by_hash():
    ordered_by_hash = sorted(name for name, text in _sources().items() if re.search(r"(?<![\w.])hash\(", text))
    assert ordered_by_hash == []
