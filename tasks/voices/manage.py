"""What an owner or admin changes on a voice, and what a reader sees of it: one function per command.

    grant / revoke / withdraw   the acting principal must own the voice or be an admin
                                (tasks/safety/access.py `may_manage`); the registry records the change;
                                the audit log gets one record of it (tasks/safety/audit.py)
    rollback                    an earlier version made current again (default: the newest before the
                                current one, `rollback_target`)
    describe                    the record, its current version and what made each version

The CLI (flows/commands/voices.py) parses and prints; these decide, so a flow or a test can call them.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from voicefleet.tasks.safety import audit
from voicefleet.tasks.safety.access import email_domain, may_manage
from voicefleet.tasks.store.storage import Store

from .records import VersionRecord, VoiceRecord
from .registry import VoiceRegistry, rollback_target

__all__ = ["Rollback", "describe", "grant", "revoke", "rollback", "version_summary", "withdraw"]


def _managed(store: Store, voice: str, actor: str) -> VoiceRegistry:
    registry = VoiceRegistry(store, org_of=email_domain)
    may_manage(registry.get(voice), actor)
    return registry


def grant(store: Store, voice: str, to: str, expires_at: datetime | None, actor: str) -> VoiceRecord:
    """Let `to` render with `voice` (until `expires_at`), as `actor`; audited."""
    rec = _managed(store, voice, actor).grant(voice, to, expires_at)
    g = rec.grant_for(to.strip())
    until = g.expires_at.isoformat() if g and g.expires_at else "no end"
    audit.append(store, "grant", actor, voice=voice, detail={"to": to.strip(), "expires_at": until})
    return rec


def revoke(store: Store, voice: str, frm: str, actor: str) -> bool:
    """End `frm`'s grant on `voice`, as `actor`; audited. False when it had none (nothing changed)."""
    removed = _managed(store, voice, actor).revoke(voice, frm)
    audit.append(store, "revoke", actor, voice=voice, detail={"from": frm.strip(), "had_grant": removed})
    return removed


def withdraw(store: Store, voice: str, actor: str) -> VoiceRecord:
    """Record that the speaker withdrew consent, as `actor`; audited. Later render jobs are refused."""
    rec = _managed(store, voice, actor).withdraw(voice, by=actor)
    audit.append(store, "withdraw", actor, voice=voice, detail={"withdrawn_at": rec.withdrawn_at.isoformat()})
    return rec


@dataclass(frozen=True)
class Rollback:
    before: int | None
    after: VoiceRecord
    version: VersionRecord


def rollback(store: Store, voice: str, to: int | None = None) -> Rollback:
    """Make version `to` of `voice` current again (default: `rollback_target`, the newest before the current)."""
    registry = VoiceRegistry(store)
    rec = registry.get(voice)
    to = rollback_target(rec) if to is None else to
    after = registry.rollback(voice, to)
    return Rollback(rec.current_version, after, registry.version(voice, to))


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
