"""The voice registry: which voices exist, who owns them, their versions, and who may render.

It lives in the object store next to the data (no server), under two prefixes:

    registry/<voice_id>/rev-0000000007.json   one revision of the voice's record (`VoiceRecord`)
    voices/<voice_id>/v<N>/version.json        version N of the voice (`VersionRecord`), immutable

**Versions** are written once. `add_version` picks N = 1 + the highest registered version and
creates `version.json` with an *exclusive create*; if that key already exists (another writer got
there first, or an earlier run crashed after writing it), it tries N + 1. Then the record is updated
so that N is listed and, when it is newer than the current version, current: the current version
only moves forward, and that rule is applied inside the record's conditional write (below), so of
two runs that registered versions 1 and 2 the voice ends on 2 whichever record update lands last.
Only an explicit `rollback` moves it back. `uploads` tells which upload (its fingerprint,
`metrics["source_hash"]`) each version was trained from, current or not, so enrollment trains an
upload once.

**Registering a training twice** makes no second version: with `training_key` (the training's folder,
tasks/enroll/prepare.py, kept as `metrics["training_key"]`), `add_version` first looks for a version made
of the same training and upload, among the listed versions and the `version.json` files a run wrote and
died before listing. A listed one is returned as it is; an unlisted one is listed now (current by the
same rules), so a flow that died anywhere in registering registers each voice once when it runs again.
With one writer per voice (enrollment's training lock): two concurrent writers of the same training
could each make one.

**Records** change (status, grants, current version, ...) under optimistic concurrency
(tasks/voices/revisions.py): each change is a new, complete revision file written with an exclusive
create; a writer that loses the race re-applies its change to the winner's revision. No update is
lost and no lock is ever held. Reading a record costs one listing of `registry/<voice_id>/` plus one
read; `list()` costs one listing of `registry/` plus one read per voice.

Exclusive create is `Store.create_bytes` (tasks/store/storage.py): a hidden temp file + `os.link` on a
local folder, a conditional PUT (`If-None-Match: *`) on S3 (probed once per process: a server that
ignores the header raises `UnsafeStore`), and "check, then write" on any other protocol only with
`allow_unsafe_writes=True` (single writer).

Authorization (`authorize`) is the rule of tasks/safety/access.py: the speaker's consent (not withdrawn,
not expired) and its sharing scope bound everything; the owner renders; anyone else needs an
active grant that the scope admits; and the voice needs a current version. Every refusal says what
to do about it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from voicefleet.tasks.safety.access import (
    Decision,
    OrgResolver,
    Sharing,
    check_principal,
    check_sharing,
    decide,
    grant_refusal,
)
from voicefleet.tasks.store.ids import safe_id
from voicefleet.tasks.store.storage import Store

from .errors import (
    ConsentWithdrawn,
    InvalidGrant,
    InvalidStatus,
    MissingVersionFile,
    OwnerMismatch,
    UnknownVersion,
    UnknownVoice,
)
from .records import STATUSES, Grant, NewVersion, Status, VersionRecord, VoiceRecord
from .revisions import load, newest_revisions, read_revision, to_json, update

__all__ = ["VoiceRegistry", "rollback_target"]

VOICES_PREFIX = "voices"

_VERSION_DIR = re.compile(r"v(\d+)")


# -- time -----------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(timezone.utc)


# -- the registry ---------------------------------------------------------------------------


class VoiceRegistry:
    """Voices, versions and grants, kept in `store`; safe to use from many processes at once.

    Args:
        store: the object store (the same one the voices' files live in).
        org_of: maps a principal to its organisation, for voices shared with "org"; without one,
            "org" sharing admits no one beyond the owner and grants. `email_domain` is one choice.
        max_attempts: how often a contended update is retried before `RegistryConflict`.
        allow_unsafe_writes: accept a store without exclusive create (single writer only).
    """

    def __init__(
        self,
        store: Store,
        *,
        org_of: OrgResolver | None = None,
        max_attempts: int = 50,
        allow_unsafe_writes: bool = False,
    ) -> None:
        self.store = store
        self.org_of = org_of
        self.max_attempts = max_attempts
        self.allow_unsafe_writes = allow_unsafe_writes

    # -- reading ---------------------------------------------------------------------------

    def get(self, voice_id: str) -> VoiceRecord:
        """The voice's current record; `UnknownVoice` if it was never registered."""
        record = load(self.store, safe_id(voice_id, "voice id"))
        if record is None:
            raise UnknownVoice(voice_id)
        return record

    def list(self) -> list[VoiceRecord]:
        """Every registered voice, sorted by id (one listing, then one read per voice)."""
        newest = newest_revisions(self.store)
        return [read_revision(self.store, v, newest[v]) for v in sorted(newest)]

    def version(self, voice_id: str, n: int | None = None) -> VersionRecord:
        """Version `n` of the voice, or its current version when `n` is None."""
        record = self.get(voice_id)
        if n is None:
            if record.current_version is None:
                raise UnknownVersion(f"voice {voice_id} has no current version (status {record.status})")
            n = record.current_version
        if n not in record.versions:
            raise UnknownVersion(f"voice {voice_id} has no version {n!r} (versions: {_listed(record.versions)})")
        return VersionRecord.model_validate_json(self.store.read_bytes(_version_key(voice_id, n)))

    def uploads(self, voice_id: str) -> dict[str, VersionRecord]:
        """Upload fingerprint (`metrics["source_hash"]`) -> the newest version trained from it, over every
        registered version, current or not (a version the gate held back, one rolled back from). {} for a
        voice never registered. One read per version."""
        record = load(self.store, safe_id(voice_id, "voice id"))
        out: dict[str, VersionRecord] = {}
        for n in sorted(record.versions if record else []):
            version = VersionRecord.model_validate_json(self.store.read_bytes(_version_key(voice_id, n)))
            fingerprint = version.metrics.get("source_hash")
            if isinstance(fingerprint, str) and fingerprint:
                out[fingerprint] = version
        return out

    def authorize(self, voice_id: str, principal: str, at: datetime | None = None) -> Decision:
        """May `principal` render with `voice_id` at time `at` (now by default)?

        Never raises for an unknown voice or a refusal: the `Decision` says why. Raises only for
        malformed input (`InvalidId`, `InvalidPrincipal`, a naive `at`).
        """
        principal = check_principal(principal)
        at = _aware(at or _now(), "at")
        record = load(self.store, safe_id(voice_id, "voice id"))
        if record is None:
            return Decision(False, f"unknown voice {voice_id}")
        return decide(record, principal, at, self.org_of)

    # -- writing ---------------------------------------------------------------------------

    def ensure_voice(self, voice_id: str, owner: str, sharing: Sharing = "private", *,
                     consent_granted_at: datetime | None = None,
                     consent_expires_at: datetime | None = None,
                     reinstated_at: datetime | None = None) -> VoiceRecord:
        """Register the voice (status "queued") or, if it exists, bring its consent terms up to date.

        Raises `OwnerMismatch` if the voice is registered to another owner, and `ConsentWithdrawn`
        if the speaker withdrew consent, unless an admin reinstated it after the withdrawal
        (`reinstated_at`, tasks/safety/consent_review.py: for the verified clip of this enrollment)
        and `consent_granted_at` is after the withdrawal too. Nothing in the upload alone lifts it.
        """
        voice_id = safe_id(voice_id, "voice id")
        owner = check_principal(owner)
        sharing = check_sharing(sharing)
        terms = {"sharing": sharing, "consent_expires_at": consent_expires_at}

        def change(record: VoiceRecord | None) -> VoiceRecord | None:
            if record is None:
                now = _now()
                return VoiceRecord(voice_id=voice_id, owner=owner, created_at=now, updated_at=now, **terms)
            if record.owner != owner:
                raise OwnerMismatch(f"voice {voice_id} is owned by {record.owner}, not {owner}")
            updated = dict(terms)
            if record.withdrawn_at is not None:
                if reinstated_at is None or reinstated_at <= record.withdrawn_at:
                    raise ConsentWithdrawn(
                        f"voice {voice_id}: the speaker withdrew consent at {record.withdrawn_at.isoformat()}; it "
                        "stands until an admin reinstates it for a new consent clip (voicefleet consent reinstate "
                        "SPEAKER --src ENROLL_ROOT --as ADMIN) and that clip is verified by enrolling again")
                if consent_granted_at is None or consent_granted_at <= record.withdrawn_at:
                    raise ConsentWithdrawn(
                        f"voice {voice_id}: the speaker withdrew consent at {record.withdrawn_at.isoformat()}; "
                        "only a consent.json granted after that can enroll the voice again")
                updated.update(withdrawn_at=None, withdrawn_by=None)
            same = all(getattr(record, k) == v for k, v in updated.items())
            return None if same else record.replace(**updated)

        return self._update(voice_id, change, create=True)

    def set_status(self, voice_id: str, status: Status, reason: str | None = None) -> VoiceRecord:
        """Record the state of the voice's latest training attempt (and why, for "failed")."""
        if status not in STATUSES:
            raise InvalidStatus(f"status must be one of {', '.join(STATUSES)}, got {status!r}")

        def change(record: VoiceRecord) -> VoiceRecord:
            if status == "ready" and record.current_version is None:
                raise InvalidStatus(f"voice {voice_id} cannot be ready: it has no version yet (add one first)")
            return record.replace(status=status, status_reason=reason)

        return self._update(voice_id, change)

    def add_version(self, voice_id: str, new: NewVersion | Mapping[str, Any], *, check_files: bool = True,
                    make_current: bool = True, held_back: str | None = None,
                    training_key: str | None = None,
                    before_listing: Callable[[VersionRecord], None] | None = None) -> VersionRecord:
        """Register a new immutable version; it becomes current and the voice "ready".

        The version's files must already be in the store (`MissingVersionFile` otherwise,
        unless `check_files` is False). Its number is 1 + the highest registered version, or
        higher when another writer took that number first. With `make_current=False` (a version
        the quality gate held back) it is listed but the current version stays; `held_back` is
        the reason, kept as the voice's status reason (status "failed" if it has no current one).
        A version older than the current one (a concurrent run registered a newer one first) is
        listed, never made current: the current version only moves forward.

        `training_key` (kept as `metrics["training_key"]`) makes it idempotent: the version already made of
        that training and upload fingerprint (`metrics["source_hash"]`) is returned instead of a new one;
        unlisted (its writer died before the record update), it is listed first.

        `before_listing(version)` runs once the version's file exists (its number known) and before it is
        listed or made current: the enrollment flow writes its audit record there, so a version no audit
        record names is never rendered. If it raises, the version stays unlisted (a rerun with the same
        `training_key` finds it and calls `before_listing` again) and the exception propagates.
        """
        voice_id = safe_id(voice_id, "voice id")
        new = new if isinstance(new, NewVersion) else NewVersion.model_validate(new)
        if training_key is not None:
            new = new.model_copy(update={"metrics": {**new.metrics, "training_key": training_key}})
        for name, key in new.files.items():
            self.store.fs_path(key)  # refuses keys that leave the store
            if check_files and not self.store.exists(key):
                raise MissingVersionFile(f"voice {voice_id}: version file {name} {self.store.url(key)} does not exist")

        self.store.check_exclusive_create(allow_unsafe=self.allow_unsafe_writes)
        listed = self.get(voice_id).versions
        version = self._made_by(voice_id, training_key, new.metrics.get("source_hash")) if training_key else None
        if version is not None and version.version in listed:
            return version  # registered already
        if version is not None:
            n = version.version  # written by a run that died before listing it: listed below
        else:
            n = max(listed, default=0) + 1
        while version is None:
            candidate = VersionRecord(**new.model_dump(), voice_id=voice_id, version=n, created_at=_now())
            if self.store.create_bytes(_version_key(voice_id, n), to_json(candidate),
                                       allow_unsafe=self.allow_unsafe_writes):
                version = candidate
            else:
                n += 1  # taken by a concurrent writer, or left by a run that crashed before registering it
        if before_listing is not None:
            before_listing(version)

        def change(record: VoiceRecord) -> VoiceRecord:
            # runs inside the conditional write of the next revision: `record` is the newest one
            versions = sorted({*record.versions, n})
            current = record.current_version
            if make_current and current is not None and current > n:
                held = f"version {current} is newer (a concurrent run registered it first)"
            elif make_current:
                return record.replace(versions=versions, current_version=n, status="ready", status_reason=None)
            else:
                held = held_back or "held back"
            return record.replace(versions=versions, status="ready" if current else "failed",
                                  status_reason=f"version {n} not made current: {held}")

        self._update(voice_id, change)
        return version

    def _made_by(self, voice_id: str, training_key: str, fingerprint: Any) -> VersionRecord | None:
        """The lowest-numbered version file, listed or not, made of training `training_key` from upload
        `fingerprint` (one listing of the voice's version files, one read each)."""
        files = self.store.glob(f"{VOICES_PREFIX}/{voice_id}/v*/version.json")
        for _, key in sorted((n, k) for k in files if (n := _version_number(k)) is not None):
            version = VersionRecord.model_validate_json(self.store.read_bytes(key))
            if (version.metrics.get("training_key") == training_key
                    and version.metrics.get("source_hash") == fingerprint):
                return version
        return None

    def rollback(self, voice_id: str, n: int) -> VoiceRecord:
        """Make registered version `n` current again (and the voice "ready")."""

        def change(record: VoiceRecord) -> VoiceRecord:
            if n not in record.versions:
                raise UnknownVersion(f"voice {voice_id} has no version {n!r} (versions: {_listed(record.versions)})")
            reason = f"rolled back from version {record.current_version} to {n}"
            return record.replace(current_version=n, status="ready", status_reason=reason)

        return self._update(voice_id, change)

    def grant(self, voice_id: str, principal: str, expires_at: datetime | None = None) -> VoiceRecord:
        """Let `principal` render with the voice (until `expires_at`); replaces an earlier grant.

        Raises `InvalidGrant` when the speaker's consent scope does not admit `principal`
        (tasks/safety/access.py), or `expires_at` is not in the future. Who may call this is the
        caller's check (`access.may_manage`).
        """
        principal = check_principal(principal)
        if expires_at is not None:
            _aware(expires_at, "expires_at")
        grant = Grant(principal=principal, granted_at=_now(), expires_at=expires_at)

        def change(record: VoiceRecord) -> VoiceRecord:
            self.check_grant(record, principal, expires_at)
            others = [g for g in record.grants if g.principal != principal]
            return record.replace(grants=[*others, grant])

        return self._update(voice_id, change)

    def check_grant(self, record: VoiceRecord, principal: str, expires_at: datetime | None) -> None:
        """Raise `InvalidGrant` unless `record`'s consent scope admits `principal` and `expires_at` is ahead."""
        if expires_at is not None and _aware(expires_at, "expires_at") <= _now():
            raise InvalidGrant(f"grant for {principal} on voice {record.voice_id} would expire at "
                               f"{expires_at.isoformat()}, which is not in the future")
        refusal = grant_refusal(record.sharing, record.owner, principal, self.org_of)
        if refusal is not None:
            raise InvalidGrant(f"cannot grant voice {record.voice_id} to {principal}: {refusal}")

    def revoke(self, voice_id: str, principal: str) -> bool:
        """Remove `principal`'s grant; False (and nothing written) if it had none."""
        principal = check_principal(principal)
        removed = False

        def change(record: VoiceRecord) -> VoiceRecord | None:
            nonlocal removed
            removed = record.grant_for(principal) is not None
            return record.replace(grants=[g for g in record.grants if g.principal != principal]) if removed else None

        self._update(voice_id, change)
        return removed

    def withdraw(self, voice_id: str, by: str, at: datetime | None = None) -> VoiceRecord:
        """Record that the speaker withdrew consent: every render job started after `at` is refused."""
        by = check_principal(by)
        at = _aware(at or _now(), "at")

        def change(record: VoiceRecord) -> VoiceRecord | None:
            if record.withdrawn_at is not None and record.withdrawn_at <= at:
                return None  # already withdrawn; the first withdrawal stands
            return record.replace(withdrawn_at=at, withdrawn_by=by)

        return self._update(voice_id, change)

    def _update(self, voice_id: str, change: Callable[[Any], VoiceRecord | None], *,
                create: bool = False) -> VoiceRecord:
        return update(self.store, voice_id, change, create=create, max_attempts=self.max_attempts,
                      allow_unsafe=self.allow_unsafe_writes)


def rollback_target(record: VoiceRecord, gate_failed: Callable[[int], bool]) -> int:
    """The version `voices rollback` goes back to when none is named: the newest before the current one
    that did not fail its quality gate (`gate_failed(n)`, e.g. `VersionRecord.gate_failed`).

    Raises `UnknownVersion` when there is none (a voice with a single version, or only gate-failed ones).
    """
    earlier = [v for v in record.versions if record.current_version is None or v < record.current_version]
    fit = [v for v in earlier if not gate_failed(v)]
    if not fit:
        failed = f"; gate failed: {', '.join(map(str, earlier))}" if earlier else ""
        raise UnknownVersion(f"voice {record.voice_id} has no version before {record.current_version} that passed "
                             f"its quality gate (versions: {', '.join(map(str, record.versions)) or 'none'}{failed})")
    return max(fit)


# -- helpers --------------------------------------------------------------------------------


def _version_key(voice_id: str, n: int) -> str:
    return f"{VOICES_PREFIX}/{voice_id}/v{n}/version.json"


def _version_number(key: str) -> int | None:
    """`voices/<id>/v7/version.json` -> 7; None for anything else."""
    m = _VERSION_DIR.fullmatch(key.rsplit("/", 2)[-2])
    return int(m.group(1)) if m else None


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"{name} must carry a time zone (e.g. datetime.now(timezone.utc)), got {value.isoformat()}")
    return value


def _listed(versions: list[int]) -> str:
    return ", ".join(map(str, versions)) or "none"
