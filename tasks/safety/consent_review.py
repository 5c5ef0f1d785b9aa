"""Consent decisions only an admin makes, kept in the service's store and never in the upload.

An uploader writes consent.json and records the clip; nothing in the upload can say "an operator
approved this" or "the withdrawal is over". Two decisions are admin actions instead, each recorded in
the audit log before it is written (tasks/safety/audit.py), and each bound to one consent clip by
its identity (`ClipIdentity`: SHA-256 of the file's bytes, and its audio fingerprint):

    consent/<voice_id>/approvals/<clip sha256>.json
        an operator listened to this clip and heard this phrase: what passes the phrase check where
        no ASR model exists for the language (tasks/safety/consent_verify.py). The speaker check still runs.
    consent/<voice_id>/reinstatements/<withdrawal time>.json
        a withdrawal lifted for one new clip: refused unless consent.json was granted after the
        withdrawal and the clip is none of the voice's earlier consent clips, by bytes or by sound (a
        re-encoded, cut, time-stretched or pitch-shifted copy of an old clip matches its fingerprint).
        Enrollment then verifies that clip again (same speaker, phrase) before the registry lifts the
        withdrawal (tasks/voices/registry.py `ensure_voice`).

The admin is whoever `VOICEFLEET_ADMINS` names (tasks/safety/access.py).
"""
from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from voicefleet.tasks.store.ids import safe_id
from voicefleet.tasks.store.storage import Store

from . import audit
from .access import ADMINS_ENV, NotPermitted, admins, check_principal
from .consent import Consent
from .fingerprint import closest, fingerprint

__all__ = ["ClipIdentity", "ConsentReviewRefused", "approval_for", "approve", "reinstate", "reinstated_at",
           "review_stamp"]

PREFIX = "consent"
# Is a clip an earlier clip, changed? Its fingerprint is aligned over fingerprint.py's grid of time stretches
# and band shifts (`closest`: tempo +-14 %, pitch +-2 semitones). Lowest bit error rate measured on the demo
# consent clip of tests/test_consent_review.py: the clip re-encoded or cut 0.00-0.05 (MP3 / Opus 64 kbps,
# 16 kHz, gain, trimmed, FLAC cut at -3 dB); tempo x0.9-1.1 (pitch kept) 0.17-0.20; pitch -2..+2 semitones
# (tempo kept) 0.18-0.19; speed x0.95 / x1.05 (both) 0.09-0.12. A new recording: the same voice saying
# another sentence 0.45, the old phrase inside a longer sentence 0.36, another voice saying the phrase 0.47.
# The threshold sits between (margins 0.08 / 0.08); beyond the grid (tempo past +-14 %, pitch past +-2
# semitones) a changed copy reads as new.
SAME_RECORDING_BER = 0.28


class ConsentReviewRefused(NotPermitted):
    """An approval or reinstatement the rules refuse: not an admin, not withdrawn, an old clip, ..."""


@dataclass(frozen=True)
class ClipIdentity:
    """Which recording a consent clip is: its bytes' SHA-256 and its audio fingerprint ((F,) uint32)."""

    sha256: str
    fingerprint: np.ndarray

    @classmethod
    def of(cls, data: bytes, audio: np.ndarray, sample_rate: int) -> ClipIdentity:
        """From the file's bytes and its decoded (T,) float32 mono audio at `sample_rate`."""
        return cls(hashlib.sha256(data).hexdigest(), fingerprint(audio, sample_rate))

    def record(self) -> dict[str, str]:
        """JSON-ready, as stored with the consent verdict of a version."""
        return {"clip_sha256": self.sha256,
                "clip_fingerprint": base64.b64encode(self.fingerprint.astype("<u4").tobytes()).decode()}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ClipIdentity | None:
        """The identity a verdict recorded, or None when it recorded none."""
        sha, fp = record.get("clip_sha256"), record.get("clip_fingerprint")
        if not sha:
            return None
        frames = np.frombuffer(base64.b64decode(fp), "<u4").astype(np.uint32) if fp else np.zeros(0, np.uint32)
        return cls(sha, frames)

    def same_recording(self, other: ClipIdentity) -> str | None:
        """How `other` is this recording ("same file", "same recording ..."), or None when it is not."""
        if self.sha256 == other.sha256:
            return "the same file (SHA-256 equal)"
        a = closest(other.fingerprint, self.fingerprint)
        ber, stretch, shift = a.bit_error_rate, a.stretch, a.band_shift
        if ber < SAME_RECORDING_BER:
            changed = [f"duration x{stretch:.2f}"] if stretch != 1.0 else []
            changed += [f"pitch {shift:+d} semitone(s)"] if shift else []
            how = f", {' and '.join(changed)}" if changed else ""
            return (f"the same recording re-encoded, cut or changed (fingerprint bit error rate {ber:.2f} < "
                    f"{SAME_RECORDING_BER:.2f}{how})")
        return None


def _now(now: datetime | None) -> datetime:
    now = now or datetime.now(timezone.utc)
    if now.tzinfo is None:
        raise ValueError("now must carry a time zone")
    return now


def _require_admin(actor: str, action: str, voice_id: str) -> str:
    actor = check_principal(actor)
    if actor not in admins():
        raise ConsentReviewRefused(f"principal {actor} may not {action} for voice {voice_id}: only an admin "
                                   f"({ADMINS_ENV}) may, never the uploader or the owner")
    return actor


def _approval_key(voice_id: str, sha256: str) -> str:
    return f"{PREFIX}/{safe_id(voice_id, 'voice id')}/approvals/{sha256}.json"


def _reinstatement_key(voice_id: str, withdrawn_at: datetime) -> str:
    stamp = withdrawn_at.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{PREFIX}/{safe_id(voice_id, 'voice id')}/reinstatements/{stamp}.json"


def approve(store: Store, voice_id: str, consent: Consent, clip: ClipIdentity, actor: str, *,
            now: datetime | None = None) -> dict[str, Any]:
    """Record that admin `actor` listened to this clip and heard `consent.consent_phrase`; audited first."""
    actor = _require_admin(actor, "approve a consent clip", voice_id)
    record = {"voice": voice_id, "clip_sha256": clip.sha256, "consent_clip": consent.consent_clip,
              "consent_phrase": consent.consent_phrase, "full_name": consent.full_name,
              "approved_by": actor, "approved_at": _now(now).isoformat()}
    audit.append(store, "consent_approve", actor, voice=voice_id,
                 detail={k: record[k] for k in ("clip_sha256", "consent_clip", "consent_phrase")})
    store.write_json(_approval_key(voice_id, clip.sha256), record)
    return record


def approval_for(store: Store | None, voice_id: str, consent: Consent, sha256: str) -> dict[str, Any] | None:
    """The admin approval of exactly this clip and phrase, or None (no store, none, or another phrase)."""
    if store is None:
        return None
    key = _approval_key(voice_id, sha256)
    if not store.exists(key):
        return None
    record = store.read_json(key)
    return record if record.get("consent_phrase") == consent.consent_phrase else None


def reinstate(store: Store, voice_id: str, withdrawn_at: datetime | None, consent: Consent, clip: ClipIdentity,
              earlier: Mapping[str, Mapping[str, Any]], actor: str, *, now: datetime | None = None) -> dict[str, Any]:
    """Lift the withdrawal at `withdrawn_at` for the new consent `clip`, as admin `actor`; audited first.

    Args:
        earlier: the consent verdict of each earlier version ("version 3" -> its `consent_check`); the
            clip must be none of their clips.

    Raises:
        ConsentReviewRefused: `actor` is not an admin; the voice is not withdrawn; consent.json was not
            granted after the withdrawal; the clip is an earlier one; or an earlier version kept no
            clip identity, so a new clip cannot be told from its clip.
    """
    actor = _require_admin(actor, "reinstate consent", voice_id)
    if withdrawn_at is None:
        raise ConsentReviewRefused(f"voice {voice_id}: consent is not withdrawn, there is nothing to reinstate")
    if consent.granted_at <= withdrawn_at:
        raise ConsentReviewRefused(
            f"voice {voice_id}: consent.json granted_at {consent.granted_at.isoformat()} is not after the withdrawal "
            f"at {withdrawn_at.isoformat()}: the speaker must consent again, with a new clip recorded after it")
    for name, check in earlier.items():
        old = ClipIdentity.from_record(check)
        if old is None:
            raise ConsentReviewRefused(
                f"voice {voice_id}: {name} recorded no identity of its consent clip, so a new clip cannot be told "
                "from it; enroll the speaker under a new voice id instead")
        same = old.same_recording(clip)
        if same is not None:
            raise ConsentReviewRefused(
                f"voice {voice_id}: consent clip {consent.consent_clip} is the consent clip of {name}: {same}; "
                "a reinstatement needs a consent clip recorded after the withdrawal")
    record = {"voice": voice_id, "withdrawn_at": withdrawn_at.isoformat(), "clip_sha256": clip.sha256,
              "consent_clip": consent.consent_clip, "granted_at": consent.granted_at.isoformat(),
              "reinstated_by": actor, "reinstated_at": _now(now).isoformat()}
    audit.append(store, "consent_reinstate", actor, voice=voice_id,
                 detail={k: record[k] for k in ("withdrawn_at", "clip_sha256", "consent_clip", "granted_at")})
    store.write_json(_reinstatement_key(voice_id, withdrawn_at), record)
    return record


def review_stamp(store: Store, voice_id: str) -> str:
    """The admin decisions recorded for `voice_id` ("" when none): a new one changes it."""
    keys = store.list(f"{PREFIX}/{safe_id(voice_id, 'voice id')}")
    return "" if not keys else "\0consent-reviews:" + ",".join(sorted(keys))


def reinstated_at(store: Store, voice_id: str, withdrawn_at: datetime | None, sha256: str | None) -> datetime | None:
    """When an admin lifted the withdrawal at `withdrawn_at` for the clip `sha256`; None if none did."""
    if withdrawn_at is None or not sha256:
        return None
    key = _reinstatement_key(voice_id, withdrawn_at)
    if not store.exists(key):
        return None
    record = store.read_json(key)
    if record.get("clip_sha256") != sha256 or record.get("withdrawn_at") != withdrawn_at.isoformat():
        return None
    return datetime.fromisoformat(record["reinstated_at"])
