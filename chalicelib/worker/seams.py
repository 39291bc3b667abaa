"""The worker's performance shortcuts, each behind a named seam that a setting switches off.

A seam is on unless its setting says otherwise. Switching one off gives the plain path, which is always correct
on its own: the shortcut only saves time. `make bench PARTS=seams` compares the worker with each one off.

- MEMORY_ASSEMBLY (`SEAM_MEMORY_ASSEMBLY`): a job one invocation worked whole, from its first line, has its
  report built from the line results that invocation held, not read back from the results table
  (completion.py).
- COMPLETE_WITH_LAST_BATCH (`SEAM_COMPLETE_WITH_LAST_BATCH`): for such a job, the last batch's checkpoint is
  the Completed write itself, its rows written beside the report; off, the last batch is checkpointed like any
  other and the job is completed after it (completion.py).
- VENDOR_CLAIMS (`SEAM_VENDOR_CLAIMS`): the chunks of a fanned-out job claim a vendor before they ask the model
  about it, so that one chunk asks and the others wait for its answer (chalicelib/categorize/claims.py); off,
  each chunk asks about every vendor its cache lookup misses (scopes.ChunkScope).
"""

from __future__ import annotations

import dataclasses
from typing import Any

MEMORY_ASSEMBLY = "seam_memory_assembly"
COMPLETE_WITH_LAST_BATCH = "seam_complete_with_last_batch"
VENDOR_CLAIMS = "seam_vendor_claims"
ALL = (MEMORY_ASSEMBLY, COMPLETE_WITH_LAST_BATCH, VENDOR_CLAIMS)


def on(settings: Any, seam: str) -> bool:
    """Whether `seam` is on in `settings` (on when the setting does not exist: older Settings have none)."""
    return bool(getattr(settings, seam, True))


def with_seams(settings: Any, **flags: bool) -> Any:
    """A copy of `settings` with the named seams switched (tests and the benchmark).

    `flags` are seam names (`seam_memory_assembly=False`). A seam the Settings class does not declare yet is
    set on the copy directly, so this works with and without the fields in chalicelib/settings.py; such a seam
    does not survive a later dataclasses.replace, so switch seams last.
    """
    unknown = set(flags) - set(ALL)
    if unknown:
        raise ValueError(f"not a seam: {', '.join(sorted(unknown))}")
    declared = {f.name for f in dataclasses.fields(settings)}
    copy = dataclasses.replace(settings, **{k: v for k, v in flags.items() if k in declared})
    for name, value in flags.items():
        if name not in declared:
            object.__setattr__(copy, name, value)  # a frozen dataclass: set as its __init__ would
    return copy
