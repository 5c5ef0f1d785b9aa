"""Options every command group takes, and how their values are read (a bad value: exit 2)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .exits import EXIT_BAD_INPUT, CLIError

DEFAULT_STORE = "./voicefleet-data"

StoreOpt = typer.Option(DEFAULT_STORE, "--store", help="Object store root: a folder, file://, s3:// or gs:// URI.")
TokenOpt = typer.Option(None, "--token", envvar="VOICEFLEET_TOKEN", show_envvar=True,
                        help="Signed principal token (from `voicefleet principal token`).")
LocalOpt = typer.Option(False, "--local", help="Insist on local mode, where --as NAME is trusted: refused unless "
                        "VOICEFLEET_LOCAL_MODE=1 and no VOICEFLEET_PRINCIPAL_KEY (a single-user machine).")
UnsafeSingleWriterOpt = typer.Option(
    False, "--unsafe-single-writer", help="Accept a store that cannot create an object only if absent (not a local "
    "folder or S3): the job lease then cannot keep two runs of a job apart, so promise one at a time.")

ModelVersionOpt = typer.Option(None, "--model-version", help="GPT-SoVITS model version: v2, v2Pro or v2ProPlus "
                               "(default: the one the pretrained folder holds; v2 for the tiny base).")


def store_of(uri: str):
    from voicefleet.tasks.store.storage import Store

    return Store(uri)


def check_pretrained(pretrained: Optional[str]) -> None:
    if pretrained and not Path(pretrained).is_dir():
        raise CLIError(f"--pretrained folder {pretrained} does not exist", EXIT_BAD_INPUT)


def parse_when(value: Optional[str], option: str):
    """An ISO date or date-time; a bare date is 00:00 UTC that day, a time without zone is UTC."""
    import datetime as dt

    if value is None:
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise CLIError(f"{option} {value!r} is not an ISO date or date-time (e.g. 2026-12-31)", EXIT_BAD_INPUT) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def acting(token: Optional[str], name: Optional[str], local: bool, store: str) -> str:
    """The principal a command acts as (tasks/safety/principal.py decides; a token is checked against
    `store`'s revocation list)."""
    from voicefleet.tasks.safety.principal import resolve_principal

    return resolve_principal(token, name, local=local, store=store).name
