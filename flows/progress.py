"""A listener the CLI installs to draw progress bars while a flow runs in the same process.

Flows stay plain Prefect flows (their parameters are data); long loops call `report(...)`, which
does nothing unless a listener is set.
"""
from __future__ import annotations

from typing import Any, Callable

_listener: Callable[[str, dict[str, Any]], None] | None = None


def set_listener(fn: Callable[[str, dict[str, Any]], None] | None) -> None:
    global _listener
    _listener = fn


def report(stage: str, **info: Any) -> None:
    if _listener is not None:
        _listener(stage, info)
