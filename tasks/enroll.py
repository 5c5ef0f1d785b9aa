"""Enrollment units of work, run on Ray: prepare a speaker (ingest, checks, features); training a
voice is tasks/train_unit.py. Each returns a small record; datasets and checkpoints go to the
object store under `voices/<voice_id>/runs/<run_id>/`.

A speaker that fails any step becomes a result with its reasons; the others go on.
"""
from __future__ import annotations

import hashlib
from typing import Callable, Iterable

import ray
from pydantic import BaseModel, Field

from .audio import encode_wav
from .base_model import load_base
from .features import FeatureError, build_dataset, reference_prompt
from .ingest import SR, QCConfig, RejectedSpeaker, ingest_speaker
from .runtime import Resources
from .storage import Store


class SpeakerResult(BaseModel):
    """One row of the enrollment report."""

    speaker_id: str
    status: str  # accepted | rejected | failed | unchanged
    reasons: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    seconds: float = 0.0
    voice_version: int | None = None
    run_prefix: str | None = None
    source_hash: str | None = None
    owner: str | None = None
    sharing: str | list[str] | None = None
    consent: dict = Field(default_factory=dict)
    ref_text: str | None = None
    ref_language: str | None = None
    prompt_tokens: list[int] = Field(default_factory=list)
    metrics: dict = Field(default_factory=dict)
    # set by a training unit (tasks/train_unit.py)
    files: dict[str, str] = Field(default_factory=dict)
    evaluation: dict = Field(default_factory=dict)
    pipeline_version: str = ""


def run_prefix(voice_id: str, run_id: str) -> str:
    return f"voices/{voice_id}/runs/{run_id}"


def make_frontend(bert_dir: str | None = None):
    from voicefleet.model.text.frontend import TextFrontend

    return TextFrontend(bert_dir=bert_dir)


def prepare_speaker(src_uri: str, store_uri: str, speaker: str, base_spec: str, run_id: str,
                    qc: dict | None = None, known_hash: str | None = None) -> SpeakerResult:
    """Ingest + checks + features for one speaker; writes dataset.parquet and ref.wav."""
    src, store = Store(src_uri), Store(store_uri)
    try:
        upload = ingest_speaker(src, speaker, QCConfig(**(qc or {})))
    except RejectedSpeaker as e:
        return SpeakerResult(speaker_id=speaker, status="rejected", reasons=e.reasons)
    digest = hashlib.sha256()
    for u in sorted(upload.utterances, key=lambda u: u.file):
        digest.update(u.file.encode() + u.text.encode() + u.audio.tobytes())
    digest.update(upload.consent.model_dump_json().encode())
    source_hash = digest.hexdigest()
    common = dict(speaker_id=speaker, source_hash=source_hash, owner=upload.consent.owner,
                  sharing=upload.consent.scope.sharing, consent=upload.consent.model_dump(mode="json"),
                  seconds=round(upload.seconds, 2), warnings=upload.file_problems)
    if known_hash == source_hash:
        return SpeakerResult(status="unchanged", reasons=["same audio, text and consent as the current version"], **common)
    base = load_base(base_spec)
    try:
        data, problems = build_dataset(upload, base, make_frontend(base.bert_dir))
        tokens = reference_prompt(upload, base)
    except (FeatureError, ValueError) as e:
        return SpeakerResult(status="rejected", reasons=[str(e)], **common)
    prefix = run_prefix(speaker, run_id)
    store.write_bytes(f"{prefix}/dataset.parquet", data)
    store.write_bytes(f"{prefix}/ref.wav", encode_wav(upload.reference.audio, SR))
    common["warnings"] = upload.file_problems + problems
    return SpeakerResult(status="prepared", run_prefix=prefix, ref_text=upload.reference.text,
                         ref_language=upload.reference.language, prompt_tokens=tokens.tolist(), **common)


def run_on_ray(fn: Callable, calls: Iterable[tuple[str, tuple]], resources: Resources,
               on_done: Callable[[SpeakerResult], None] | None = None) -> list[SpeakerResult]:
    """Submit fn(*args) per (name, args) as named Ray tasks; collect results as they finish."""
    remote = ray.remote(fn)
    pending = {}
    for name, args in calls:
        ref = remote.options(name=f"{fn.__name__}:{name}", max_retries=1, **resources.options()).remote(*args)
        pending[ref] = name
    results = []
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        name = pending.pop(done[0])
        try:
            res = ray.get(done[0])
        except Exception as e:  # noqa: BLE001 — a crashed worker fails its speaker only
            res = SpeakerResult(speaker_id=name, status="failed", reasons=[f"worker error: {type(e).__name__}: {e}"])
        results.append(res)
        if on_done:
            on_done(res)
    return results
