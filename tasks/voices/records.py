"""The records of the voice registry: a voice (owner, status, versions, sharing, grants, consent
terms), one immutable version of it, and a grant. Plain pydantic models; reading and writing them
under optimistic concurrency is tasks/voices/registry.py, the rule that decides a render on a
record is tasks/safety/access.py.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from voicefleet.tasks.safety.access import Sharing, check_sharing

__all__ = ["REQUIRED_FILES", "REQUIRED_LORA_FILES", "STATUSES", "Grant", "NewVersion", "Status", "VersionRecord",
           "VoiceRecord"]

STATUSES = ("queued", "training", "ready", "failed")
REQUIRED_FILES = ("gpt", "sovits")
REQUIRED_LORA_FILES = ("lora", "base_gpt", "base_sovits")

Status = Literal["queued", "training", "ready", "failed"]


class Grant(BaseModel):
    """Permission for one principal to render with a voice, optionally until `expires_at`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    principal: str
    granted_at: AwareDatetime
    expires_at: AwareDatetime | None = None

    def active(self, at: datetime) -> bool:
        return self.expires_at is None or at < self.expires_at


class NewVersion(BaseModel):
    """What a fine-tune produced: everything of a version except its number and timestamp."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_model: str
    """The weights it was fine-tuned from: "tiny-random-v1", "pretrained:<dir name>", ..."""
    untrained: bool
    """True when the base had random weights: its audio is not speech-like."""
    files: dict[str, str]
    """Store keys of the version's artifacts: "gpt", "sovits" (or, for a LoRA voice, "lora" with
    "base_gpt", "base_sovits"), "ref_wav", "dataset", "eval", ..."""
    ref_text: str = ""
    ref_language: str = ""
    prompt_tokens: list[int] = Field(default_factory=list)
    """The reference clip's semantic tokens (25 Hz), the GPT prompt at inference."""
    metrics: dict[str, Any] = Field(default_factory=dict)
    recipe: dict[str, Any] = Field(default_factory=dict)
    consent: dict[str, Any] = Field(default_factory=dict)
    """Snapshot of the consent record the version was trained under."""
    consent_check: dict[str, Any] = Field(default_factory=dict)
    """The consent clip's verdict with its measured figures (tasks/safety/consent_verify.py)."""
    pipeline_version: str = ""
    """The voicefleet release that trained it (with `base_model` and `recipe`: what made it)."""
    evaluation: dict[str, Any] = Field(default_factory=dict)
    """Figures of the evaluation sentences (similarity, WER, clips) and the gate's verdict."""

    @field_validator("files")
    @classmethod
    def _has_checkpoints(cls, files: dict[str, str]) -> dict[str, str]:
        required = REQUIRED_LORA_FILES if "lora" in files else REQUIRED_FILES
        missing = [name for name in required if not files.get(name)]
        if missing:
            raise ValueError(f"files must name {', '.join(missing)} (got {sorted(files)})")
        return files


class VersionRecord(NewVersion):
    """One immutable version of a voice, stored at `voices/<voice_id>/v<version>/version.json`."""

    voice_id: str
    version: int = Field(ge=1)
    created_at: AwareDatetime

    @property
    def gate_failed(self) -> bool:
        """The quality gate measured this version and it did not pass (whatever the gate's mode)."""
        gate = self.evaluation.get("gate")
        return isinstance(gate, dict) and gate.get("passed") is False


class VoiceRecord(BaseModel):
    """The mutable part of a voice: owner, status, versions, sharing and grants."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    voice_id: str
    owner: str
    status: Status = "queued"
    status_reason: str | None = None
    current_version: int | None = None
    versions: list[int] = Field(default_factory=list)
    sharing: Sharing = "private"
    grants: list[Grant] = Field(default_factory=list)
    consent_expires_at: AwareDatetime | None = None
    """From the speaker's consent.json: no render from this moment on."""
    withdrawn_at: AwareDatetime | None = None
    """When the speaker withdrew consent (`withdraw`): no render from this moment on."""
    withdrawn_by: str | None = None
    created_at: AwareDatetime
    updated_at: AwareDatetime
    revision: int = Field(default=0, ge=0)
    """Number of the `rev-<N>.json` this record was read from (0 before it is first written)."""
    write_id: str = ""
    """Random id of the write that produced this revision (tells a lost response from a conflict)."""

    @field_validator("sharing", mode="before")
    @classmethod
    def _sharing(cls, value: Any) -> Any:
        return check_sharing(value)

    def grant_for(self, principal: str) -> Grant | None:
        return next((g for g in self.grants if g.principal == principal), None)

    def replace(self, **changes: Any) -> VoiceRecord:
        """A validated copy with `changes` applied."""
        return VoiceRecord.model_validate({**self.model_dump(), **changes})


def base_prefix(files: dict[str, str]) -> str:
    """The store prefix of the shared base a LoRA version's `files` apply to."""
    return files["base_gpt"].rsplit("/", 1)[0]


def decode_group(files: dict[str, str]) -> str:
    """Versions whose GPT lines can share decode batches have the same group: LoRA versions over one
    base (each row applies its own adapter); a full fine-tune is a group of its own."""
    return f"base:{base_prefix(files)}" if "lora" in files else f"voice:{files['gpt']}"
