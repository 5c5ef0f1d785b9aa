"""`voicefleet voices ...`: list, show, roll back, grant, revoke, withdraw (tasks/voices/manage.py decides)."""
from __future__ import annotations

import json
from typing import Optional

import typer
from rich.table import Table

from .console import console
from .exits import handled
from .options import LocalOpt, StoreOpt, TokenOpt, acting, parse_when, store_of

app = typer.Typer(help="Inspect registered voices.", no_args_is_help=True)


@app.command("list")
def voices_list(store: str = StoreOpt):
    """All voices with status, current version and owner."""
    with handled():
        t = Table(title=f"voices in {store}")
        for col in ("voice", "status", "current", "versions", "owner", "sharing"):
            t.add_column(col)
        from voicefleet.tasks.voices.registry import VoiceRegistry

        for v in VoiceRegistry(store_of(store)).list():
            t.add_row(v.voice_id, v.status, str(v.current_version or "-"), ",".join(map(str, v.versions)), v.owner,
                      v.sharing if isinstance(v.sharing, str) else ",".join(v.sharing))
        console.print(t)


@app.command("show")
def voices_show(voice: str = typer.Argument(..., help="Voice id."), store: str = StoreOpt):
    """One voice: record, grants and its current version."""
    with handled():
        from voicefleet.tasks.voices.manage import describe

        console.print_json(json.dumps(describe(store_of(store), voice), default=str))


@app.command("rollback")
def voices_rollback(voice: str = typer.Argument(..., help="Voice id."),
                    to: Optional[int] = typer.Option(None, "--to", help="Version to make current (default: the newest "
                                                     "before the current one that did not fail its quality gate)."),
                    allow_gate_failed: bool = typer.Option(False, "--allow-gate-failed", "--force",
                                                           help="Let --to name a version that failed its quality gate "
                                                                "(--force is the same flag)."),
                    principal: Optional[str] = typer.Option(None, "--as", help="Who rolls back, by name: only with --local."),
                    token: Optional[str] = TokenOpt, local: bool = LocalOpt, store: str = StoreOpt):
    """Make an earlier version of a voice current again (owner or admin only; audited first)."""
    with handled():
        actor = acting(token, principal, local, store)
        from voicefleet.tasks.voices.manage import rollback

        done = rollback(store_of(store), voice, to, actor, allow_gate_failed=allow_gate_failed)
        before, after, v = done.before, done.after, done.version
        gate = v.evaluation.get("gate", {})
        console.print(f"voice {voice}: current version {before or '-'} -> {after.current_version} by {actor} "
                      f"(base {v.base_model}, {v.pipeline_version or 'pipeline version not recorded'}, "
                      f"gate {'passed' if gate.get('passed') else 'not passed: ' + '; '.join(gate.get('reasons', [])) if gate else 'not recorded'})",
                      highlight=False)


@app.command("grant")
def voices_grant(voice: str = typer.Argument(..., help="Voice id."),
                 to: str = typer.Option(..., "--to", help="Principal to grant (or '*' under a public consent)."),
                 expires: Optional[str] = typer.Option(None, help="Grant ends at this ISO date/time (date: 00:00 UTC)."),
                 principal: Optional[str] = typer.Option(None, "--as", help="Who grants, by name: only with --local."),
                 token: Optional[str] = TokenOpt, local: bool = LocalOpt, store: str = StoreOpt):
    """Let a principal render with a voice (owner or admin only; bounded by the speaker's consent scope)."""
    with handled():
        actor = acting(token, principal, local, store)
        from voicefleet.tasks.voices.manage import grant

        rec = grant(store_of(store), voice, to, parse_when(expires, "--expires"), actor)
        g = rec.grant_for(to.strip())
        until = g.expires_at.isoformat() if g and g.expires_at else "no end"
        console.print(f"granted voice {voice} to {to.strip()} (until {until}), by {actor}")


@app.command("revoke")
def voices_revoke(voice: str = typer.Argument(..., help="Voice id."),
                  frm: str = typer.Option(..., "--from", help="Principal whose grant ends."),
                  principal: Optional[str] = typer.Option(None, "--as", help="Who revokes, by name: only with --local."),
                  token: Optional[str] = TokenOpt, local: bool = LocalOpt, store: str = StoreOpt):
    """End a principal's grant: render jobs started from now on refuse its lines."""
    with handled():
        actor = acting(token, principal, local, store)
        from voicefleet.tasks.voices.manage import revoke

        removed = revoke(store_of(store), voice, frm, actor)
        console.print(f"revoked {frm.strip()}'s grant for voice {voice}" if removed
                      else f"{frm.strip()} had no grant for voice {voice}; nothing changed")


@app.command("withdraw")
def voices_withdraw(voice: str = typer.Argument(..., help="Voice id."),
                    principal: Optional[str] = typer.Option(None, "--as", help="Who records it, by name: only with --local."),
                    token: Optional[str] = TokenOpt, local: bool = LocalOpt, store: str = StoreOpt):
    """Record that the speaker withdrew consent: every render job started from now on is refused."""
    with handled():
        actor = acting(token, principal, local, store)
        from voicefleet.tasks.voices.manage import withdraw

        rec = withdraw(store_of(store), voice, actor)
        console.print(f"consent for voice {voice} withdrawn at {rec.withdrawn_at.isoformat()} (recorded by "
                      f"{rec.withdrawn_by}); renders are refused from now on")

