"""Fault isolation for synthesis: one bad line or one storage hiccup must not fail its neighbours.

- `with_backoff(fn, ...)`: retries a call whose error is transient (`is_transient`: network,
  timeouts, object-store 5xx/throttling) with exponential backoff, a bounded number of times;
  any other error is raised at once.
- `synthesize_isolated(synthesize, lines, ...)`: calls `synthesize(lines)` (a batch call that
  either returns one result per line or raises for the whole batch, e.g. CUDA out of memory or
  a line that breaks the batched model). When the call raises, the batch is split in halves and
  each half retried, down to single lines, so a poisoned line fails alone and every other line
  is rendered. A single line whose error is transient is retried (bounded) before it fails.
  Each line's `attempts` counts the real synthesis calls that included it, and its `log` holds
  one entry per call (batch size, seconds, error).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypeVar

from .job_lease import JobLeaseLost

T = TypeVar("T")
_TRANSIENT_NAMES = {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
                    "ClientPayloadError", "ServerDisconnectedError", "SlowDown", "ServiceUnavailable",
                    "InternalError", "RequestTimeout", "ThrottlingException"}


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: the same call may succeed a moment later. Never a lost job lease, even one raised
    from a network error: the run must stop, not try again."""
    if any(isinstance(e, JobLeaseLost) for e in _chain(exc)):
        return False
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    names = {type(e).__name__ for e in _chain(exc)}
    if names & _TRANSIENT_NAMES:
        return True
    return isinstance(exc, OSError) and getattr(exc, "errno", None) is None  # s3fs wraps 5xx as OSError


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def with_backoff(fn: Callable[[], T], attempts: int = 3, base_s: float = 0.5,
                 on_retry: Callable[[BaseException, int], None] | None = None) -> T:
    """`fn()`, retried up to `attempts` calls in all while it raises a transient error."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 — classified below
            if attempt == attempts or not is_transient(e):
                raise
            if on_retry:
                on_retry(e, attempt)
            time.sleep(base_s * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


@dataclass
class Outcome:
    """What happened to one line: its result (audio or a per-line error) or the batch error."""

    result: Any = None            # what `synthesize` returned for this line
    error: str | None = None      # set when every call that included the line raised
    attempts: int = 0
    log: list[dict] = field(default_factory=list)


def synthesize_isolated(synthesize: Callable[[Sequence[Any]], Sequence[Any]], lines: Sequence[Any],
                        line_retries: int = 1, backoff_s: float = 0.5,
                        on_retry: Callable[[BaseException, int], None] | None = None) -> list[Outcome]:
    """One Outcome per line, in order; see the module docstring."""
    outcomes = [Outcome() for _ in lines]
    stack: list[list[int]] = [list(range(len(lines)))]
    while stack:
        part = stack.pop()
        for i in part:
            outcomes[i].attempts += 1
        t0 = time.perf_counter()
        try:
            results = synthesize([lines[i] for i in part])
        except Exception as e:  # noqa: BLE001 — isolate instead of failing the whole batch
            seconds = round(time.perf_counter() - t0, 3)
            message = f"{type(e).__name__}: {str(e).strip()[:300]}"
            for i in part:
                outcomes[i].log.append({"attempt": outcomes[i].attempts, "batch_lines": len(part),
                                        "seconds": seconds, "error": message})
            _free_accelerator_memory()
            if len(part) > 1:
                if on_retry:
                    on_retry(e, len(part))
                half = len(part) // 2
                stack.extend([part[half:], part[:half]])
            elif is_transient(e) and outcomes[part[0]].attempts <= line_retries:
                if on_retry:
                    on_retry(e, 1)
                time.sleep(backoff_s * outcomes[part[0]].attempts)
                stack.append(part)
            else:
                outcomes[part[0]].error = message
            continue
        seconds = round(time.perf_counter() - t0, 3)
        for i, r in zip(part, results):
            outcomes[i].result = r
            entry = {"attempt": outcomes[i].attempts, "batch_lines": len(part), "seconds": seconds}
            if isinstance(r, Exception):
                entry["error"] = f"{type(r).__name__}: {r}"
            outcomes[i].log.append(entry)
    return outcomes


def _free_accelerator_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 — best effort after an out-of-memory error
        pass
