"""What an owner or admin changes on a voice, and what a reader sees of it: one function per command.

    grant / revoke / withdraw / rollback
        the acting principal must own the voice or be an admin (tasks/safety/access.py `may_manage`);
        the change is checked against the record first, then recorded in the audit log
        (tasks/safety/audit.py), and only then made in the registry: a change the log cannot take
        (`audit.AuditUnavailable`) is not made. A record therefore means "authorized and attempted";
        the registry write after it fails only on a store error or a race with another change.
    rollback    an earlier version made current again (default: the newest before the current one
                that did not fail its quality gate, `rollback_target`); naming a gate-failed version
                needs `allow_gate_failed`
    describe    the record, its current version and what made each version

The CLI (flows/commands/voices.py) parses and prints; these decide, so a flow or a test can call them.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from voicefleet.tasks.safety import audit
from voicefleet.tasks.safety.access import check_principal, email_domain, may_manage
from voicefleet.tasks.store.storage import Store

from .errors import GateFailed
from .records import VersionRecord, VoiceRecord
from .registry import VoiceRegistry, rollback_target

__all__ = ["Rollback", "describe", "grant", "revoke", "rollback", "version_summary", "withdraw"]


def _managed(store: Store, voice: str, actor: str) -> tuple[VoiceRegistry, VoiceRecord]:
    registry = VoiceRegistry(store, org_of=email_domain)
    record = registry.get(voice)
    may_manage(record, actor)
    return registry, record


def grant(store: Store, voice: str, to: str, expires_at: datetime | None, actor: str) -> VoiceRecord:
    """Let `to` render with `voice` (until `expires_at`), as `actor`; audited before it is made."""
    registry, record = _managed(store, voice, actor)
    to = check_principal(to)
    registry.check_grant(record, to, expires_at)
    until = expires_at.isoformat() if expires_at else "no end"
    audit.append(store, "grant", actor, voice=voice, detail={"to": to, "expires_at": until})
    return registry.grant(voice, to, expires_at)


def revoke(store: Store, voice: str, frm: str, actor: str) -> bool:
    """End `frm`'s grant on `voice`, as `actor`; audited before it is made. False when it had none."""
    registry, record = _managed(store, voice, actor)
    frm = check_principal(frm)
    audit.append(store, "revoke", actor, voice=voice,
                 detail={"from": frm, "had_grant": record.grant_for(frm) is not None})
    return registry.revoke(voice, frm)


def withdraw(store: Store, voice: str, actor: str) -> VoiceRecord:
    """Record that the speaker withdrew consent, as `actor`; audited before it is made. Later render jobs
    are refused (an earlier withdrawal stands, and the record says so)."""
    registry, record = _managed(store, voice, actor)
    at = datetime.now(UTC)
    detail = {"withdrawn_at": at.isoformat()}
    if record.withdrawn_at is not None:
        detail["already_withdrawn_at"] = record.withdrawn_at.isoformat()
    audit.append(store, "withdraw", actor, voice=voice, detail=detail)
    return registry.withdraw(voice, by=actor, at=at)


@dataclass(frozen=True)
class Rollback:
    before: int | None
    after: VoiceRecord
    version: VersionRecord


def rollback(store: Store, voice: str, to: int | None, actor: str, *, allow_gate_failed: bool = False) -> Rollback:
    """Make version `to` of `voice` current again, as `actor` (owner or admin); audited before it is made.

    Default `to`: `rollback_target`, the newest version before the current one whose gate did not fail.
    A named version that failed its gate raises `GateFailed` unless `allow_gate_failed`.
    """
    registry, record = _managed(store, voice, actor)
    if to is None:
        to = rollback_target(record, lambda n: registry.version(voice, n).gate_failed)
    version = registry.version(voice, to)  # UnknownVersion when it is not registered
    if version.gate_failed and not allow_gate_failed:
        reasons = "; ".join(version.evaluation["gate"].get("reasons", [])) or "no reason recorded"
        raise GateFailed(f"voice {voice} version {to} failed its quality gate ({reasons}); name another version, "
                         "or pass --allow-gate-failed to make it current anyway")
    audit.append(store, "rollback", actor, voice=voice, version=to,
                 detail={"from": record.current_version, "gate_failed": version.gate_failed})
    return Rollback(record.current_version, registry.rollback(voice, to), version)


def version_summary(v: VersionRecord) -> dict[str, Any]:
    """What made a version and how it scored: base, recipe, pipeline, evaluation figures, gate."""
    ev = v.evaluation
    return {"version": v.version, "created_at": v.created_at.isoformat(), "base_model": v.base_model,
            "pipeline_version": v.pipeline_version, "kind": "lora" if "lora" in v.files else "full",
            "recipe": v.recipe, "similarity": ev.get("similarity"), "wer": ev.get("wer"), "gate": ev.get("gate")}


def describe(store: Store, voice: str) -> dict[str, Any]:
    """One voice as JSON: its record, its current version (prompt tokens counted) and every version's summary."""
    registry = VoiceRegistry(store)
    rec = registry.get(voice)
    out: dict[str, Any] = {"voice": rec.model_dump(mode="json")}
    if rec.current_version is not None:
        v = registry.version(voice, rec.current_version).model_dump(mode="json")
        v["prompt_tokens"] = f"{len(v['prompt_tokens'])} tokens"
        out["current_version"] = v
    out["versions"] = [version_summary(registry.version(voice, n)) for n in rec.versions]
    return out
