"""The consent record of an enrolled speaker: ``<enroll_root>/<speaker_id>/consent.json``.

No consent, no voice: enrollment reads this file first and rejects the speaker with the reason
from :class:`ConsentError` when it is missing, malformed, expired, does not allow training, or
its consent clip is absent or not audio.

An example record (``schema_version`` may be left out; it defaults to 1)::

    {
      "schema_version": 1,
      "speaker_id": "spk-001",
      "full_name": "Ada Example",
      "owner": "user:ada@example.com",
      "scope": {"training": true, "sharing": "private"},
      "granted_at": "2025-03-01T09:30:00Z",
      "expires_at": null,
      "consent_clip": "consent.wav",
      "consent_phrase": "I, Ada Example, agree that voicefleet may build a synthetic voice from my recordings."
    }

``scope.sharing`` is ``"private"`` (only the owner may render), ``"org"``, ``"public"``, or a list
of principals: the most the owner may grant (tasks/safety/access.py holds the one sharing model). Times
must carry a time zone.

:func:`verify_consent_clip` proves the clip exists, decodes and can hold a phrase ("not verified");
checking that it really is the enrolled speaker saying the consent phrase needs the decoded takes,
so ingest runs it afterwards: tasks/safety/consent_verify.py, whose verdict is stored with the version.
"""

from __future__ import annotations

import enum
import json
import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Annotated, Any, Literal

import fsspec
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from voicefleet.tasks.measure.audio import AudioDecodeError, load_audio

from .access import Sharing, check_sharing

if TYPE_CHECKING:
    from voicefleet.tasks.store.storage import Store

__all__ = [
    "CONSENT_FILE",
    "ClipVerdict",
    "Consent",
    "ConsentClipCheck",
    "ConsentError",
    "ConsentScope",
    "load_consent",
    "parse_consent",
    "verify_consent_clip",
]

CONSENT_FILE = "consent.json"
# Rate the consent clip is decoded at: what speaker-embedding and ASR checks take.
CLIP_SAMPLE_RATE = 16_000
# A spoken consent phrase cannot fit in less than this.
MIN_CLIP_SECONDS = 1.0

SELF_APPROVAL = ("approved_by cannot be set in consent.json: an upload cannot approve its own consent; an admin "
                 "who listened to the clip approves it with `voicefleet consent approve SPEAKER --src ... --as ADMIN`")

NonEmpty = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
Principal = NonEmpty
"""Who may act: a user, group or service account name as tasks/safety/access.py spells it."""


class ConsentError(ValueError):
    """A speaker's consent is missing or does not allow enrollment; the reason says why.

    Attributes:
        speaker: the speaker folder's name (the speaker id enrollment uses).
        reason: what a person must fix, e.g. ``"scope.training is false"``.
        path: the file the reason is about (consent.json or the clip).
    """

    def __init__(self, speaker: str, reason: str, path: str = "") -> None:
        super().__init__(f"{speaker}: {reason}")
        self.speaker = speaker
        self.reason = reason
        self.path = path


class ConsentScope(BaseModel):
    """What the speaker agreed to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    training: bool
    """May a voice be trained from the recordings."""
    sharing: Sharing = "private"
    """The most the owner may grant: a level, or the principals allowed besides the owner."""

    @field_validator("sharing", mode="before")
    @classmethod
    def _sharing_is_level_or_principals(cls, value: Any) -> Any:
        return check_sharing(value)


class Consent(BaseModel):
    """One speaker's consent record, as stored in ``consent.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    speaker_id: NonEmpty
    """The speaker folder's name; the voice is registered under it."""
    full_name: NonEmpty
    """The consenting person's full name, as spoken in the consent phrase."""
    owner: Principal
    """The principal who may manage the voice (grants, versions, deletion)."""
    scope: ConsentScope
    granted_at: AwareDatetime
    expires_at: AwareDatetime | None = None
    consent_clip: NonEmpty
    """File name of the consent recording, relative to the speaker folder."""
    consent_phrase: NonEmpty
    """The words the speaker says in the consent clip."""

    @model_validator(mode="before")
    @classmethod
    def _no_self_attested_approval(cls, data: Any) -> Any:
        # an operator's approval is an admin action recorded in the store (tasks/safety/consent_review.py),
        # never a field the upload carries; null is dropped (snapshots written before the field went)
        if isinstance(data, Mapping) and "approved_by" in data:
            if data["approved_by"] is not None:
                raise ValueError(SELF_APPROVAL)
            data = {k: v for k, v in data.items() if k != "approved_by"}
        return data

    @field_validator("consent_clip")
    @classmethod
    def _clip_inside_speaker_folder(cls, value: str) -> str:
        normalized = posixpath.normpath(value.replace("\\", "/"))
        if normalized.startswith("/") or normalized == ".." or normalized.startswith("../"):
            raise ValueError(f"must be a file inside the speaker folder, got {value!r}")
        if normalized == CONSENT_FILE:
            raise ValueError("must name the consent recording, not consent.json itself")
        return normalized

    @model_validator(mode="after")
    def _expires_after_granted(self) -> Consent:
        if self.expires_at is not None and self.expires_at <= self.granted_at:
            raise ValueError(
                f"expires_at {self.expires_at.isoformat()} is not after granted_at {self.granted_at.isoformat()}"
            )
        return self

    def is_active(self, now: datetime | None = None) -> bool:
        """True until ``expires_at`` (always, when there is none)."""
        now = now or datetime.now(timezone.utc)
        return self.expires_at is None or now < self.expires_at


def registry_terms(snapshot: Mapping[str, Any]) -> dict[str, datetime | None]:
    """The consent times the registry enforces at render, from a consent snapshot (`model_dump`)."""
    consent = Consent.model_validate(snapshot)
    return {"consent_granted_at": consent.granted_at, "consent_expires_at": consent.expires_at}


def _format_validation_error(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(record)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def parse_consent(data: str | bytes | Mapping[str, Any], *, speaker: str = "?", path: str = CONSENT_FILE) -> Consent:
    """Validate a consent record given as JSON text/bytes or an already parsed mapping.

    Raises:
        ConsentError: "consent.json is not valid JSON: ..." or
            "consent.json does not match the schema: <field>: <problem>; ...".
    """
    if isinstance(data, (str, bytes, bytearray)):
        try:
            data = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConsentError(speaker, f"{CONSENT_FILE} is not valid JSON: {e}", path) from None
    if not isinstance(data, Mapping):
        raise ConsentError(speaker, f"{CONSENT_FILE} must hold a JSON object, got {type(data).__name__}", path)
    try:
        return Consent.model_validate(data)
    except ValidationError as e:
        raise ConsentError(
            speaker, f"{CONSENT_FILE} does not match the schema: {_format_validation_error(e)}", path
        ) from None


class ClipVerdict(str, enum.Enum):
    """Outcome of checking the consent clip against the speaker and the phrase."""

    NOT_VERIFIED = "not_verified"  # the clip is there and is audio; nothing more was checked
    VERIFIED = "verified"  # same speaker as the enrollment audio, the phrase was spoken
    REJECTED = "rejected"  # a check ran and failed; ``detail`` says which


@dataclass(frozen=True)
class ConsentClipCheck:
    """What :func:`verify_consent_clip` found. Scores stay ``None`` until their checks exist."""

    clip: str  # path of the clip
    duration_s: float
    verdict: ClipVerdict
    detail: str
    speaker_similarity: float | None = None  # consent clip vs enrollment audio embeddings
    phrase_match: float | None = None  # e.g. 1 - word error rate of the ASR transcript
    clip_sha256: str | None = None  # which recording was checked (tasks/safety/consent_review.py `ClipIdentity`)
    clip_fingerprint: str | None = None  # its audio fingerprint, base64 uint32 frames
    approved_by: str | None = None  # the admin whose recorded approval passed the phrase check, if one did

    @property
    def verified(self) -> bool:
        return self.verdict is ClipVerdict.VERIFIED


def _split_location(
    speaker_dir: str | os.PathLike,
    fs: fsspec.AbstractFileSystem | None,
    store: Store | None,
) -> tuple[fsspec.AbstractFileSystem, str]:
    """Resolve where the speaker folder lives: a key in ``store``, a path on ``fs``, or a path/URL."""
    raw = os.fspath(speaker_dir)
    if store is not None:
        if fs is not None:
            raise ValueError("pass either store or fs, not both")
        fs, raw = store.fs, store.fs_path(raw.strip("/"))
    elif fs is None:
        fs, raw = fsspec.core.url_to_fs(raw)
    path = raw.rstrip("/")
    if posixpath.basename(path) == CONSENT_FILE:
        path = posixpath.dirname(path)
    return fs, path


def _speaker_name(folder: str) -> str:
    return posixpath.basename(folder.rstrip("/")) or folder


def verify_consent_clip(
    consent: Consent,
    speaker_dir: str | os.PathLike,
    *,
    store: Store | None = None,
    fs: fsspec.AbstractFileSystem | None = None,
) -> ConsentClipCheck:
    """Check the consent clip exists and decodes (the speaker and phrase checks: tasks/safety/consent_verify.py).

    It checks that ``consent.consent_clip`` exists inside ``speaker_dir``, decodes, and is
    long enough to hold a spoken phrase, and returns ``ClipVerdict.NOT_VERIFIED``: whether it is
    the enrolled speaker saying the phrase needs the speaker's decoded takes, so
    `consent_verify.verify_upload_consent` decides that once ingest has them.

    Args:
        consent: the speaker's parsed record.
        speaker_dir: the speaker folder (a key in ``store``, or a local path or URL), or its
            consent.json.
        store: the object store holding the enrollment data, when ``speaker_dir`` is a key.
        fs: the filesystem holding it; inferred from the path when neither is given.

    Raises:
        ConsentError: the clip is missing, not audio, or shorter than ``MIN_CLIP_SECONDS``.
    """
    fs, folder = _split_location(speaker_dir, fs, store)
    speaker = _speaker_name(folder)
    clip_path = posixpath.join(folder, consent.consent_clip)
    if not fs.isfile(clip_path):
        raise ConsentError(speaker, f"consent clip {consent.consent_clip} not found", clip_path)
    try:
        with fs.open(clip_path, "rb") as f:
            audio = load_audio(f.read(), CLIP_SAMPLE_RATE, name=consent.consent_clip)
    except AudioDecodeError as e:
        raise ConsentError(speaker, f"consent clip {e}", clip_path) from None
    seconds = len(audio) / CLIP_SAMPLE_RATE
    if seconds < MIN_CLIP_SECONDS:
        raise ConsentError(
            speaker,
            f"consent clip {consent.consent_clip} is {seconds:.2f} s long; "
            f"a spoken consent phrase needs at least {MIN_CLIP_SECONDS:.1f} s",
            clip_path,
        )
    return ConsentClipCheck(
        clip=clip_path,
        duration_s=seconds,
        verdict=ClipVerdict.NOT_VERIFIED,
        detail="not verified: clip exists and decodes; speaker and phrase checks are not implemented yet",
    )


def load_consent(
    speaker_dir: str | os.PathLike,
    *,
    store: Store | None = None,
    fs: fsspec.AbstractFileSystem | None = None,
    now: datetime | None = None,
    require_training: bool = True,
    check_clip: bool = True,
) -> Consent:
    """Read and check ``<speaker_dir>/consent.json``; return it when enrollment may proceed.

    Args:
        speaker_dir: the speaker folder -- a key in ``store`` (``"enroll/spk-001"``), or a local
            path or fsspec URL (``s3://bucket/enroll/spk-001``) -- or the path of its consent.json.
        store: the object store (tasks/store/storage.py) holding the enrollment data.
        fs: an fsspec filesystem to read ``speaker_dir`` from; inferred from the path when
            neither ``store`` nor ``fs`` is given.
        now: the time to judge expiry against (UTC now by default).
        require_training: reject records whose ``scope.training`` is false.
        check_clip: run :func:`verify_consent_clip` (clip exists and decodes).

    Raises:
        ConsentError: with one of these reasons --
            "consent.json missing", "consent.json is not valid JSON: ...",
            "consent.json does not match the schema: ...",
            "consent.json speaker_id 'x' does not match the speaker folder 'y'",
            "scope.training is false", "consent expired at ...",
            "consent clip <file> not found", "consent clip <file>: <decode problem>".
    """
    fs, folder = _split_location(speaker_dir, fs, store)
    speaker = _speaker_name(folder)
    path = posixpath.join(folder, CONSENT_FILE)
    try:
        with fs.open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConsentError(speaker, f"{CONSENT_FILE} missing", path) from None
    except IsADirectoryError:
        raise ConsentError(speaker, f"{CONSENT_FILE} is a directory, not a file", path) from None

    consent = parse_consent(raw, speaker=speaker, path=path)
    if consent.speaker_id != speaker:
        raise ConsentError(
            speaker,
            f"{CONSENT_FILE} speaker_id {consent.speaker_id!r} does not match the speaker folder {speaker!r}",
            path,
        )
    if require_training and not consent.scope.training:
        raise ConsentError(speaker, "scope.training is false", path)
    now = now or datetime.now(timezone.utc)
    if now.tzinfo is None:
        raise ValueError("now must carry a time zone (e.g. datetime.now(timezone.utc))")
    if not consent.is_active(now):
        assert consent.expires_at is not None
        raise ConsentError(speaker, f"consent expired at {consent.expires_at.isoformat()}", path)
    if check_clip:
        verify_consent_clip(consent, folder, fs=fs)
    return consent
