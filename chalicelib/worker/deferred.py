"""Modules the worker binds at import but loads on first use: openai (and pydantic under it), ~0.5 s of a cold
start that a message answered from the vendor cache or the rules, a delivery, or a cancel never needs.

chalicelib.categorize.provider does `import openai` at its top. The worker imports it inside `binding("openai")`,
which puts a stand-in in sys.modules for that import only: provider keeps the stand-in as its `openai`, and the
stand-in leaves sys.modules when the block ends, so any later `import openai` anywhere is the real thing. The
stand-in imports the real module, once and under a lock, on its first attribute access (`openai.OpenAI(...)`
when the first model request makes the client, `openai.RateLimitError` in an `except`), and hands every attribute
over from it. Nothing imported inside the block may import a submodule of a deferred package (`import
openai.types`): that would find the stand-in as the parent. The day provider.py imports openai where it uses it,
this module can go.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import threading
import types
from collections.abc import Iterator
from typing import Any

_lock = threading.Lock()


class _Deferred(types.ModuleType):
    """Stands in for a module not imported yet; the first attribute looked up imports it."""

    def __getattr__(self, name: str) -> Any:  # only for what the stand-in lacks: every attribute of the module
        return getattr(_load(self), name)


def _load(stand_in: _Deferred) -> types.ModuleType:
    with _lock:
        real = stand_in.__dict__.get("_deferred_real")
        if real is None:
            name = stand_in.__name__
            if sys.modules.get(name) is stand_in:  # first used while the binding block still runs
                del sys.modules[name]
            real = importlib.import_module(name)
            stand_in.__dict__["_deferred_real"] = real
    return real


@contextlib.contextmanager
def binding(name: str) -> Iterator[None]:
    """Within the block, `import <name>` binds a stand-in that imports the module on first use.

    A no-op when the module is imported already (a test process, say): the block then binds the real one.
    """
    if name in sys.modules:
        yield
        return
    stand_in = _Deferred(name)
    sys.modules[name] = stand_in
    try:
        yield
    finally:
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]
