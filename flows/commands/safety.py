"""Voice safety from the command line: `voicefleet audit`, `principal token`, `watermark detect`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .console import console, err
from .exits import EXIT_BAD_INPUT, EXIT_NOT_FOUND, EXIT_OK, EXIT_PARTIAL, CLIError, handled
from .options import StoreOpt, parse_when, store_of

principal_app = typer.Typer(help="Principal tokens (who is acting).", no_args_is_help=True)
watermark_app = typer.Typer(help="Find voicefleet's mark in audio, and where it came from.", no_args_is_help=True)


def audit_show(voice: Optional[str] = typer.Option(None, help="Only records about this voice."),
               since: Optional[str] = typer.Option(None, help="Only records at or after this ISO date/time."),
               as_json: bool = typer.Option(False, "--json", help="One JSON record per line."),
               store: str = StoreOpt):
    """The audit log: verify its hash chain (exit 4 naming the first broken record), then list records."""
    with handled():
        from voicefleet.tasks.safety import audit

        records = audit.read(store_of(store))
        try:
            n = audit.verify(records)
        except audit.AuditBroken as e:
            err.print(f"[red]audit log broken[/]: {e}", highlight=False)
            raise typer.Exit(EXIT_PARTIAL)
        query = audit.Query(voice, parse_when(since, "--since"))
        if as_json:
            for r in filter(query, records):
                console.print(json.dumps(r, ensure_ascii=False), highlight=False, soft_wrap=True)
            return
        t = Table(title=f"audit log of {store}: {n} records, chain verified")
        for col in ("seq", "at", "event", "actor", "voice", "version", "job", "lines", "detail"):
            t.add_column(col, overflow="fold")
        for r in filter(query, records):
            t.add_row(str(r["seq"]), r["at"][:19], r["event"], r["actor"], r["voice"] or "-", r["version"] or "-",
                      r["job"] or "-", "-" if r["lines"] is None else str(r["lines"]),
                      json.dumps(r["detail"], ensure_ascii=False)[:160])
        console.print(t)


@watermark_app.command("detect")
def watermark_detect(file: str = typer.Argument(..., help="Audio file or URL (wav, flac, mp3, ogg/opus, m4a)."),
                     store: Optional[str] = typer.Option(None, "--store", help="Store whose fingerprint indexes "
                                                         "name the job / voice version / line (default: presence only).")):
    """Is this voicefleet output? Presence of the mark; with --store, which job, voice version and line."""
    with handled():
        import fsspec

        from voicefleet.tasks.measure.audio import load_audio
        from voicefleet.tasks.safety.fingerprint import lookup
        from voicefleet.tasks.safety.watermark import MARK_RATE, THRESHOLD, detect

        with fsspec.open(file, "rb") as f:
            audio = load_audio(f.read(), MARK_RATE, name=Path(file).name)
        p = detect(audio, MARK_RATE)
        out = {"file": file, "seconds": round(len(audio) / MARK_RATE, 2), "watermark": p.present,
               "score": round(p.score, 3), "threshold": THRESHOLD, "windows_marked": f"{p.marked_windows}/{p.windows}"}
        if store:
            m = lookup(store_of(store), audio, MARK_RATE)
            out["source"] = None if m is None else {"job": m.job_id, "voice": m.voice_id, "version": m.voice_version,
                                                    "line": m.line_id, "bit_error_rate": m.bit_error_rate,
                                                    "offset_s": m.offset_s}
        console.print_json(json.dumps(out))
        raise typer.Exit(EXIT_OK if p.present else EXIT_NOT_FOUND)


@principal_app.command("token")
def principal_token(name: str = typer.Argument(..., help="Principal, e.g. user:ada@example.com."),
                    expires: Optional[str] = typer.Option(None, help="ISO date/time (default: 30 days from now).")):
    """Mint a signed principal token (needs VOICEFLEET_PRINCIPAL_KEY; for admins)."""
    with handled():
        import datetime as dt

        from voicefleet.tasks.safety.principal import mint_token

        when = parse_when(expires, "--expires") or dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=30)
        try:
            token = mint_token(name, when)
        except ValueError as e:
            if type(e) is ValueError:  # expiry problems; InvalidToken/InvalidPrincipal keep their codes
                raise CLIError(str(e), EXIT_BAD_INPUT) from None
            raise
        console.print(token, highlight=False)

