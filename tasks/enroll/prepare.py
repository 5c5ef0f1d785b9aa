"""Enrollment units of work, run on Ray: prepare a speaker (ingest, checks, features); training a
voice is tasks/train/unit.py. Each returns a small record; datasets and checkpoints go to the
object store under `voices/<voice_id>/runs/<run_id>/`.

A speaker that fails any step becomes a result with its reasons; the others go on.
"""
from __future__ import annotations

from typing import Callable, Iterable

import ray
from pydantic import BaseModel, Field

from voicefleet.tasks.cluster.runtime import Resources
from voicefleet.tasks.measure.audio import encode_wav
from voicefleet.tasks.store.ids import InvalidId
from voicefleet.tasks.store.storage import Store
from voicefleet.tasks.voices.base_model import load_base

from .decode import DECODE_CALLS
from .features import FeatureError, build_dataset, reference_prompt
from .ingest import SR, QCConfig, RejectedSpeaker, ingest_speaker
from .ingest_report import cached_rejection, remember_rejection
from .upload_fingerprint import upload_fingerprint
from .voice_ids import voice_id_for


class SpeakerResult(BaseModel):
    """One row of the enrollment report."""

    speaker_id: str  # the voice id
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
    consent_check: dict = Field(default_factory=dict)  # the consent clip's verdict, stored with the version
    ref_text: str | None = None
    ref_language: str | None = None
    prompt_tokens: list[int] = Field(default_factory=list)
    metrics: dict = Field(default_factory=dict)
    display_name: str = ""  # the upload folder's name
    utterances: int = 0
    files_decoded: int = 0  # work done by this run's ingest (0 for an unchanged upload)
    # set by a training unit (tasks/train/unit.py)
    files: dict[str, str] = Field(default_factory=dict)
    evaluation: dict = Field(default_factory=dict)
    pipeline_version: str = ""


def run_prefix(voice_id: str, run_id: str) -> str:
    return f"voices/{voice_id}/runs/{run_id}"


def make_frontend(bert_dir: str | None = None):
    from voicefleet.model.text.frontend import TextFrontend

    return TextFrontend(bert_dir=bert_dir)


def prepare_speaker(src_uri: str, store_uri: str, speaker: str, base_spec: str, run_id: str,
                    qc: dict | None = None, known_hash: str | None = None, identity: str = "") -> SpeakerResult:
    """Ingest + checks + features for one speaker folder; writes dataset.parquet and ref.wav.

    The upload's raw bytes are fingerprinted first (tasks/enroll/upload_fingerprint.py, with `identity`:
    base model, recipe, QC, pipeline version): an unchanged upload is reported without decoding.
    """
    src, store = Store(src_uri), Store(store_uri)
    try:
        voice_id = voice_id_for(speaker)
    except InvalidId as e:
        return SpeakerResult(speaker_id=speaker, display_name=speaker, status="rejected", reasons=[str(e)])
    fingerprint, _ = upload_fingerprint(src, speaker, identity)
    ids = dict(speaker_id=voice_id, display_name=speaker, source_hash=fingerprint)
    if known_hash == fingerprint:
        return SpeakerResult(status="unchanged", reasons=["same upload, base model and recipe as the current version"],
                             **ids)
    earlier = cached_rejection(store, voice_id, fingerprint)
    if earlier is not None:
        return SpeakerResult(status="rejected", reasons=earlier, **ids)
    decodes_before = DECODE_CALLS["files"]
    try:
        upload = ingest_speaker(src, speaker, QCConfig(**(qc or {})), voice_id=voice_id)
    except RejectedSpeaker as e:
        remember_rejection(store, voice_id, fingerprint, e.reasons)
        return SpeakerResult(status="rejected", reasons=e.reasons,
                             files_decoded=DECODE_CALLS["files"] - decodes_before, **ids)
    common = dict(owner=upload.consent.owner, sharing=upload.consent.scope.sharing,
                  consent=upload.consent.model_dump(mode="json"), consent_check=upload.consent_check,
                  seconds=upload.speech_s,
                  utterances=len(upload.utterances), files_decoded=upload.files_decoded, **ids)
    base = load_base(base_spec)
    try:
        data, problems = build_dataset(upload, base, make_frontend(base.bert_dir))
        tokens = reference_prompt(upload, base)
    except (FeatureError, ValueError) as e:
        return SpeakerResult(status="rejected", reasons=[str(e)], warnings=upload.file_problems, **common)
    prefix = run_prefix(voice_id, run_id)
    store.write_bytes(f"{prefix}/dataset.parquet", data)
    store.write_bytes(f"{prefix}/ref.wav", encode_wav(upload.reference.audio, SR))
    return SpeakerResult(status="prepared", run_prefix=prefix, ref_text=upload.reference.text,
                         ref_language=upload.reference.language, prompt_tokens=tokens.tolist(),
                         warnings=upload.file_problems + problems, **common)


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
