"""Exit codes, the one place they are decided: an exception a user can act on becomes one code.

    0  done, every line / speaker fine
    1  unexpected internal error (set VOICEFLEET_DEBUG=1 for the traceback)
    2  bad input: missing or unreadable file, bad columns, invalid id or principal
    3  not found: unknown voice or job
    4  finished, but some lines failed or were refused, or some speakers were rejected
    5  busy: another run of the same render job holds its lease
    6  stopped: this run lost the job's lease to another run (whose output stands); nothing this run
       wrote after that is read
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import typer

from .console import err

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_NOT_FOUND, EXIT_PARTIAL, EXIT_BUSY, EXIT_LOST = 0, 1, 2, 3, 4, 5, 6


class CLIError(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def exit_code_for(exc: BaseException) -> int:
    """Map the pipeline's user-actionable exceptions to exit codes."""
    from voicefleet.model.checkpoint import CheckpointError
    from voicefleet.tasks.cluster.runtime import ClusterTooSmall, LocalStoreOnCluster
    from voicefleet.tasks.render.job_lease import JobLeaseHeld, JobLeaseLost
    from voicefleet.tasks.render.job_paths import NoSuchJob
    from voicefleet.tasks.render.line_qc import QCConfigError
    from voicefleet.tasks.render.pipeline import ActorsNotPlaced
    from voicefleet.tasks.render.plan import NoKnownVoice
    from voicefleet.tasks.render.postprocess import PostConfigError
    from voicefleet.tasks.render.script import ScriptError
    from voicefleet.tasks.safety.access import InvalidPrincipal, NotPermitted
    from voicefleet.tasks.safety.audit import AuditKeyMissing, AuditUnavailable
    from voicefleet.tasks.safety.principal import InvalidToken, LocalModeRequired
    from voicefleet.tasks.safety.secret_key import WeakKey
    from voicefleet.tasks.store.ids import InvalidId
    from voicefleet.tasks.store.storage import InvalidKey, UnsafeStore
    from voicefleet.tasks.voices.pretrained_layout import PretrainedNotFound
    from voicefleet.tasks.voices.errors import ConsentWithdrawn, GateFailed, InvalidGrant, UnknownVersion, UnknownVoice

    if isinstance(exc, CLIError):
        return exc.code
    if isinstance(exc, (UnknownVoice, UnknownVersion, NoSuchJob, NoKnownVoice)):
        return EXIT_NOT_FOUND
    lost = next((e for e in _causes(exc) if isinstance(e, JobLeaseLost)), None)
    if lost is not None:  # also when a Ray worker raised it and Ray Data wrapped it
        return EXIT_LOST
    if isinstance(exc, JobLeaseHeld):
        return EXIT_BUSY
    if isinstance(exc, (NotPermitted, ConsentWithdrawn, GateFailed)):
        return EXIT_PARTIAL
    if isinstance(exc, (InvalidToken, LocalModeRequired, InvalidGrant)):
        return EXIT_BAD_INPUT
    if isinstance(exc, (AuditUnavailable, AuditKeyMissing, WeakKey)):  # no record, no change
        return EXIT_BAD_INPUT
    if isinstance(exc, (ScriptError, InvalidId, InvalidKey, InvalidPrincipal, PretrainedNotFound, CheckpointError,
                        LocalStoreOnCluster, ClusterTooSmall, ActorsNotPlaced, QCConfigError, PostConfigError, UnsafeStore,
                        FileNotFoundError, IsADirectoryError, PermissionError)):
        return EXIT_BAD_INPUT
    return EXIT_INTERNAL


def _causes(exc: BaseException):
    """`exc` and the exceptions it was raised from, outermost first."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


@contextmanager
def handled():
    """Turn exceptions into one clear line and an exit code (tracebacks only with VOICEFLEET_DEBUG=1)."""
    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: rerun the same command to resume where it stopped")
        raise typer.Exit(130)
    except Exception as e:  # noqa: BLE001
        code = exit_code_for(e)
        if os.environ.get("VOICEFLEET_DEBUG") == "1":
            err.print_exception()
        msg = str(e).strip().strip("'\"") or type(e).__name__
        label = {EXIT_BAD_INPUT: "error", EXIT_NOT_FOUND: "not found", EXIT_BUSY: "busy", EXIT_LOST: "stopped",
                 EXIT_PARTIAL: "refused"}.get(code, "internal error")
        err.print(f"[red]{label}[/]: {msg}", highlight=False, soft_wrap=True)
        if code == EXIT_INTERNAL:
            err.print("(set VOICEFLEET_DEBUG=1 for the traceback)")
        raise typer.Exit(code)
