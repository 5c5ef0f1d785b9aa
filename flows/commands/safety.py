"""Voice safety from the command line: `voicefleet audit`, `principal token|revoke|handoff`, `watermark detect`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .console import console, err
from .exits import EXIT_BAD_INPUT, EXIT_NOT_FOUND, EXIT_OK, EXIT_PARTIAL, CLIError, handled
from .options import LocalOpt, StoreOpt, TokenOpt, parse_when, store_of

principal_app = typer.Typer(help="Principal tokens (who is acting).", no_args_is_help=True)
watermark_app = typer.Typer(help="Find voicefleet's mark in audio, and where it came from.", no_args_is_help=True)


def audit_show(voice: Optional[str] = typer.Option(None, help="Only records about this voice."),
               since: Optional[str] = typer.Option(None, help="Only records at or after this ISO date/time."),
               as_json: bool = typer.Option(False, "--json", help="One JSON record per line."),
               checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="SEQ:HASH an earlier run printed "
                                                        "(kept off the store): fail unless that record is still there, "
                                                        "which catches a log rolled back to an older head."),
               store: str = StoreOpt):
    """The audit log: verify it against the audit key and its signed head (exit 4 naming the first bad record;
    exit 2 without the key), then list records and print the checkpoint to keep for the next check."""
    with handled():
        from voicefleet.tasks.safety import audit
        from voicefleet.tasks.voices.registry import VoiceRegistry

        s = store_of(store)
        try:
            anchor = None if checkpoint is None else audit.parse_checkpoint(checkpoint)
        except ValueError as e:
            raise CLIError(str(e), EXIT_BAD_INPUT) from None
        try:
            n = audit.verify(s, anchor)
            if n == 0 and (voices := VoiceRegistry(s).list()):
                raise audit.AuditBroken(1, "audit record 1 is missing: the log is empty (its records and head deleted?), "
                                           f"yet the store registers {len(voices)} voice(s) "
                                           f"({', '.join(v.voice_id for v in voices[:5])}), each enrolled with a record")
        except audit.AuditBroken as e:
            err.print(f"[red]audit log broken at record {e.seq}[/]: {e}" if e.seq else
                      f"[red]audit log broken[/]: {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_PARTIAL)
        records = audit.read(s)
        query = audit.Query(voice, parse_when(since, "--since"))
        if as_json:  # the checkpoint is the last record's "seq:hash"
            for r in filter(query, records):
                console.print(json.dumps(r, ensure_ascii=False), highlight=False, soft_wrap=True)
            return
        t = Table(title=f"audit log of {store}: {n} records, chain and head verified")
        for col in ("seq", "at", "event", "actor", "voice", "version", "job", "lines", "detail"):
            t.add_column(col, overflow="fold")
        for r in filter(query, records):
            t.add_row(str(r["seq"]), r["at"][:19], r["event"], r["actor"], r["voice"] or "-", r["version"] or "-",
                      r["job"] or "-", "-" if r["lines"] is None else str(r["lines"]),
                      json.dumps(r["detail"], ensure_ascii=False)[:160])
        console.print(t)
        if records:
            console.print(f"checkpoint {audit.checkpoint_of(records[-1])} (keep it off the store; pass it as "
                          "--checkpoint next time)", highlight=False, soft_wrap=True)


@watermark_app.command("detect")
def watermark_detect(file: str = typer.Argument(..., help="Audio file or URL (wav, flac, mp3, ogg/opus, m4a)."),
                     store: Optional[str] = typer.Option(None, "--store", help="Store whose fingerprint indexes "
                                                         "name the job / voice version / line (default: presence only).")):
    """Is this voicefleet output? Presence of the mark; with --store, which job, voice version and line."""
    with handled():
        import fsspec

        from voicefleet.tasks.measure.audio import load_audio
        from voicefleet.tasks.safety.fingerprint import lookup
        from voicefleet.tasks.safety.watermark import MARK_RATE, SILENCE_PEAK, THRESHOLD, detect

        with fsspec.open(file, "rb") as f:
            audio = load_audio(f.read(), MARK_RATE, name=Path(file).name)
        p = detect(audio, MARK_RATE)
        out = {"file": file, "seconds": round(len(audio) / MARK_RATE, 2), "watermark": p.present,
               "score": round(p.score, 3) if p.signal else None, "threshold": THRESHOLD,
               "windows_marked": f"{p.marked_windows}/{p.windows}"}
        if not p.signal:
            out["signal"] = f"none: every window is silent (peak below {SILENCE_PEAK:g}); there is nothing to detect"
        if store:
            m = lookup(store_of(store), audio, MARK_RATE)
            out["source"] = None if m is None else {"job": m.job_id, "voice": m.voice_id, "version": m.voice_version,
                                                    "line": m.line_id, "bit_error_rate": m.bit_error_rate,
                                                    "offset_s": m.offset_s}
        console.print_json(json.dumps(out))
        raise typer.Exit(EXIT_OK if p.present else EXIT_NOT_FOUND)


@principal_app.command("token")
def principal_token(name: str = typer.Argument(..., help="Principal, e.g. user:ada@example.com."),
                    expires: Optional[str] = typer.Option(None, help="ISO date/time (default and latest: the maximum "
                                                          "lifetime from now, VOICEFLEET_TOKEN_MAX_DAYS, 30 days).")):
    """Mint a signed principal token (needs VOICEFLEET_PRINCIPAL_KEY; for admins). Prints the token, and its id
    (what job and audit records name, and what `principal revoke` takes) on stderr."""
    with handled():
        import datetime as dt

        from voicefleet.tasks.safety.principal import max_lifetime, mint_token, token_id_of

        now = dt.datetime.now(dt.timezone.utc)
        when = parse_when(expires, "--expires") or now + max_lifetime()
        try:
            token = mint_token(name, when, now=now)
        except ValueError as e:
            if type(e) is ValueError:  # expiry problems; InvalidToken/InvalidPrincipal keep their codes
                raise CLIError(str(e), EXIT_BAD_INPUT) from None
            raise
        console.print(token, highlight=False)
        err.print(f"token id {token_id_of(token)}, expires {when.isoformat()}", highlight=False)


@principal_app.command("revoke")
def principal_revoke(token_id: str = typer.Argument(..., help="The token's id (printed when it was minted; job "
                                                    "and audit records name it)."),
                     reason: Optional[str] = typer.Option(None, help="Why, for the audit log."),
                     principal: Optional[str] = typer.Option(None, "--as", help="Who revokes, by name: only in "
                                                             "local mode."),
                     token: Optional[str] = TokenOpt, local: bool = LocalOpt, store: str = StoreOpt):
    """Revoke a principal token in this store: every later use is refused. An admin (VOICEFLEET_ADMINS) may
    revoke any token; anyone may revoke the token they act with. Audited before it takes effect."""
    with handled():
        from voicefleet.tasks.safety import audit
        from voicefleet.tasks.safety.access import ADMINS_ENV, NotPermitted, admins
        from voicefleet.tasks.safety.principal import resolve_principal
        from voicefleet.tasks.safety.revocation import InvalidTokenId, check_token_id, revoke, revoked

        try:
            check_token_id(token_id)
        except InvalidTokenId as e:
            raise CLIError(str(e), EXIT_BAD_INPUT) from None
        s = store_of(store)
        who = resolve_principal(token, principal, local=local, store=s)
        if who.name not in admins() and who.token_id != token_id:
            raise NotPermitted(f"principal {who.name} may not revoke token {token_id}: only an admin ({ADMINS_ENV}) "
                               "may, or its holder, acting with it")
        earlier = revoked(s, token_id)
        if earlier is None:
            try:
                audit.append(s, "token_revoke", who.name, detail={"token_id": token_id, "reason": reason,
                                                                  "via": who.via})
            except Exception as e:  # noqa: BLE001 — no record, no revocation
                raise CLIError(f"could not write the audit record, token {token_id} not revoked: {e}",
                               EXIT_BAD_INPUT) from e
            earlier, _ = revoke(s, token_id, who.name, reason)
            console.print(f"token {token_id} revoked", highlight=False)
        else:
            console.print(f"token {token_id} was already revoked at {earlier['revoked_at']} by {earlier['by']}",
                          highlight=False)


@principal_app.command("handoff")
def principal_handoff(token: Optional[str] = TokenOpt):
    """Put your token in a new Prefect Secret block for one deployment run, and print the block's name:
    `prefect deployment run render-script/render-script -p credential=NAME ...`. The run reads the block
    once and deletes it; the token never becomes a flow parameter."""
    with handled():
        from voicefleet.flows.credential import hand_over_secret
        from voicefleet.tasks.safety.principal import token_id_of

        if not token:
            raise CLIError("no token: pass --token or set VOICEFLEET_TOKEN", EXIT_BAD_INPUT)
        token_id_of(token)  # a malformed token is refused here, not in the run
        console.print(hand_over_secret(token), highlight=False)
