"""Enrollment units of work, run on Ray: prepare a speaker (ingest, checks, features); training a
voice is tasks/train/unit.py. Each returns a small record; datasets, checkpoints and results go to the
object store under `voices/<voice_id>/runs/<training key>/`.

The training key is derived from what is trained, never from the flow run: the upload's fingerprint
(its bytes, the base model, recipe, QC and pipeline version: upload_fingerprint.py) and, for a forced
retraining, the version it retrains after (`training_key`). A rerun of a flow that died therefore finds
the same folder: the prepared dataset (`prepared.json`, written last), the training checkpoint (resumed
from its epoch) and a finished training's result (registered without training again).

Prepare loads only what features need (`load_feature_base`: HuBERT and the generator's token path; the
text frontend without BERT), not the training base.

A speaker that fails any step becomes a result with its reasons; the others go on.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping

import ray
from pydantic import BaseModel, Field

from voicefleet.tasks.cluster.runtime import Resources
from voicefleet.tasks.measure.audio import encode_wav
from voicefleet.tasks.safety.consent import ConsentError
from voicefleet.tasks.safety.consent_review import review_stamp
from voicefleet.tasks.store.ids import InvalidId
from voicefleet.tasks.store.storage import Store
from voicefleet.tasks.voices.base_model import FeatureBase, load_feature_base

from .decode import DECODE_CALLS
from .features import FeatureError, build_dataset, reference_prompt
from .ingest import SR, QCConfig, RejectedSpeaker, ingest_speaker, read_consent
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
    device_fault: bool = False  # a CUDA error poisoned the trainer's process: the scheduler replaces it


def run_prefix(voice_id: str, key: str) -> str:
    """`voices/<voice_id>/runs/<key>`: the folder of one training of the voice (`training_key`)."""
    return f"voices/{voice_id}/runs/{key}"


def training_key(fingerprint: str, identity: str = "", after: int = 0) -> str:
    """The name of a training's folder, from what is trained: the upload fingerprint (which covers the
    upload's bytes, base, recipe, QC and pipeline version), `identity` (the same, spelled out) and, for a
    forced retraining, `after`: the newest version already trained from this upload (0: none). The same
    inputs give the same key in every process and every run; a new version of the same upload, once
    registered, moves a later forced run to a new key."""
    digest = hashlib.sha256(f"training\0{fingerprint}\0{identity}\0{after}".encode()).hexdigest()
    return f"t-{digest[:20]}"


def prepared_key(prefix: str) -> str:
    """The prepare step's record, written after the dataset and reference clip it describes."""
    return f"{prefix}/prepared.json"


def make_frontend(bert_dir: str | None = None):
    from voicefleet.model.text.frontend import TextFrontend

    return TextFrontend(bert_dir=bert_dir)


def feature_models(base_spec: str) -> tuple[FeatureBase, object]:
    """What prepare loads: HuBERT + the generator's token path, and a text frontend for phones only (the
    dataset stores no BERT features, so BERT is never loaded here; training computes them)."""
    return load_feature_base(base_spec), make_frontend(None)


def prepare_speaker(src_uri: str, store_uri: str, speaker: str, base_spec: str, run_id: str,
                    qc: dict | None = None, trained: Mapping[str, int] | None = None,
                    identity: str = "", force: bool = False) -> SpeakerResult:
    """Ingest + checks + features for one speaker folder; writes dataset.parquet, ref.wav, prepared.json.

    The upload's raw bytes are fingerprinted first (tasks/enroll/upload_fingerprint.py, with `identity`:
    base model, recipe, QC, pipeline version). `trained` maps the fingerprints of uploads already
    trained into a version of this voice (any version, current or not: `VoiceRegistry.uploads`) to
    that version; such an upload is reported "unchanged" without decoding, unless `force`.

    The result's `run_prefix` is the training's folder (`training_key`). When an earlier run prepared that
    folder completely (its `prepared.json` exists) and the consent still holds, its record is returned as it
    is: nothing is decoded again and the dataset a checkpoint was trained on is never rewritten. `run_id`
    (the flow run) names no folder.
    """
    src, store = Store(src_uri), Store(store_uri)
    try:
        voice_id = voice_id_for(speaker)
    except InvalidId as e:
        return SpeakerResult(speaker_id=speaker, display_name=speaker, status="rejected", reasons=[str(e)])
    # an admin's consent decision (approval, reinstatement) is part of what a rejection was judged on
    fingerprint, _ = upload_fingerprint(src, speaker, identity + review_stamp(store, voice_id))
    ids = dict(speaker_id=voice_id, display_name=speaker, source_hash=fingerprint)
    trained = trained or {}
    if fingerprint in trained and not force:
        n = trained[fingerprint]
        return SpeakerResult(status="unchanged", voice_version=n, reasons=[
            f"already trained into version {n} (same upload, base model and recipe); --force trains it again"], **ids)
    earlier = cached_rejection(store, voice_id, fingerprint)
    if earlier is not None:
        return SpeakerResult(status="rejected", reasons=earlier, **ids)
    prefix = run_prefix(voice_id, training_key(fingerprint, identity, trained.get(fingerprint, 0) if force else 0))
    done = prepared_earlier(src, store, speaker, voice_id, prefix)
    if done is not None:
        return done
    decodes_before = DECODE_CALLS["files"]
    try:
        upload = ingest_speaker(src, speaker, QCConfig(**(qc or {})), voice_id=voice_id, reviews=store)
    except RejectedSpeaker as e:
        remember_rejection(store, voice_id, fingerprint, e.reasons)
        return SpeakerResult(status="rejected", reasons=e.reasons,
                             files_decoded=DECODE_CALLS["files"] - decodes_before, **ids)
    common = dict(owner=upload.consent.owner, sharing=upload.consent.scope.sharing,
                  consent=upload.consent.model_dump(mode="json"), consent_check=upload.consent_check,
                  seconds=upload.speech_s,
                  utterances=len(upload.utterances), files_decoded=upload.files_decoded, **ids)
    base, frontend = feature_models(base_spec)
    try:
        data, problems = build_dataset(upload, base, frontend)
        tokens = reference_prompt(upload, base)
    except (FeatureError, ValueError) as e:
        return SpeakerResult(status="rejected", reasons=[str(e)], warnings=upload.file_problems, **common)
    del base, frontend
    store.write_bytes(f"{prefix}/dataset.parquet", data)
    store.write_bytes(f"{prefix}/ref.wav", encode_wav(upload.reference.audio, SR))
    out = SpeakerResult(status="prepared", run_prefix=prefix, ref_text=upload.reference.text,
                        ref_language=upload.reference.language, prompt_tokens=tokens.tolist(),
                        warnings=upload.file_problems + problems, **common)
    store.write_bytes(prepared_key(prefix), out.model_dump_json().encode())  # last: the folder is complete
    return out


def prepared_earlier(src: Store, store: Store, speaker: str, voice_id: str, prefix: str) -> SpeakerResult | None:
    """The record of an earlier run that prepared this very training folder, or None.

    The folder's key already stands for the same upload bytes, base, recipe, QC and consent reviews; what
    can change since is time: the consent is read again (expiry, scope), and a consent that no longer
    holds sends the speaker through the full ingest, which rejects it with the reason."""
    if not (store.exists(prepared_key(prefix)) and store.exists(f"{prefix}/dataset.parquet")
            and store.exists(f"{prefix}/ref.wav")):
        return None
    try:
        read_consent(src, speaker, voice_id)
        record = SpeakerResult.model_validate_json(store.read_bytes(prepared_key(prefix)))
    except (ConsentError, ValueError):
        return None
    if record.status != "prepared" or record.run_prefix != prefix or record.speaker_id != voice_id:
        return None
    return record.model_copy(update={"files_decoded": 0, "display_name": speaker})


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
