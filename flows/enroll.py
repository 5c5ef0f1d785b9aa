"""Prefect flow `enroll_batch`: enrollment uploads -> checked datasets -> fine-tuned, registered voices.

    discover speakers -> prepare (ingest, checks, features; Ray task per speaker; an upload already
         trained into any version of its voice, current or not, is "unchanged" unless `force`)
      -> claim (each voice's training lock, tasks/train/voice_lock.py: a voice another run trains is
         "busy"; an upload that run trained meanwhile is "unchanged")
      -> train (tasks/train/scheduler.py: a pool of trainer actors, one voice at a time each, GPU
         fractions if asked; per-epoch checkpoints; evaluation sentences + quality gate)
      -> register (immutable version; current unless the gate held it back or a newer one is
         current; only while this run still holds the voice's lock)
      -> report (Parquet + Prefect table artifact)

Restartable: kill the flow process anywhere and run it again, and each voice ends registered once.
Each training lives under `voices/<id>/runs/<training key>/`, a key derived from what is trained (upload
fingerprint, base, recipe, QC; tasks/enroll/prepare.py `training_key`), not from `run_id`, so the rerun
finds what the dead run left: a prepared dataset (reused, nothing decoded), a checkpoint (training resumes
after its epoch), a finished training's `train/result.json` (registered without training), a version file
written but not listed (listed: `VoiceRegistry.add_version(training_key=...)`). The dead run's training
locks name its process; a rerun on the same machine proves it gone and takes them at once
(tasks/render/process_identity.py); a rerun elsewhere finds those voices "busy" until the locks expire
(`ttl_s`, 10 minutes), and the run after that resumes them.
"""
from __future__ import annotations

import datetime as dt
import posixpath
import uuid

from prefect import flow, get_run_logger
from prefect import task as prefect_task
from prefect.cache_policies import NONE

task = prefect_task(cache_policy=NONE)
from prefect.artifacts import create_table_artifact

from voicefleet.tasks.cluster.runtime import Resources, ensure_ray
from voicefleet.tasks.enroll.ingest import discover_speakers
from voicefleet.tasks.enroll.ingest_report import artifact_rows, report_row, write_report
from voicefleet.tasks.enroll.prepare import SpeakerResult, prepare_speaker, run_on_ray
from voicefleet.tasks.enroll.upload_fingerprint import model_identity
from voicefleet.tasks.enroll.voice_ids import assign_voice_ids
from voicefleet.tasks.render import process_identity
from voicefleet.tasks.safety import audit
from voicefleet.tasks.safety.consent import registry_terms
from voicefleet.tasks.safety.consent_review import reinstated_at
from voicefleet.tasks.store.storage import Store
from voicefleet.tasks.train.finetune import Recipe
from voicefleet.tasks.train.scheduler import train_voices
from voicefleet.tasks.train.unit import stored_result
from voicefleet.tasks.train.voice_lock import TrainingLocks, VoiceBusy, VoiceLockLost
from voicefleet.tasks.voices.pretrained_layout import base_spec, pretrained_files
from voicefleet.tasks.voices.base_store import publish_base
from voicefleet.tasks.voices.errors import RegistryError, UnknownVoice
from voicefleet.tasks.voices.records import VersionRecord
from voicefleet.tasks.voices.registry import VoiceRegistry

from .progress import report

DEFAULT_STORE = "./voicefleet-data"


@task
def discover(src: str) -> list[str]:
    return discover_speakers(Store(src))


@task
def prepare(src: str, store: str, speakers: list[str], base: str, run_id: str, qc: dict | None,
            resources: Resources, identity: str = "", force: bool = False) -> list[SpeakerResult]:
    registry = VoiceRegistry(Store(store))
    ids, id_problems = assign_voice_ids(speakers)  # folder name -> voice id; unsafe names, collisions
    refused = [SpeakerResult(speaker_id=s, display_name=s, status="rejected", reasons=[why])
               for s, why in id_problems.items()]
    trained, seconds = {}, {}
    for s, vid in ids.items():
        try:  # every version's upload, current or not: a rolled-back or gated one is not trained again
            uploads = registry.uploads(vid)  # forced too: it names the training folder of a retraining
        except (RegistryError, ValueError):
            uploads = {}
        trained[s] = {fingerprint: v.version for fingerprint, v in uploads.items()}
        seconds[vid] = {v.version: v.metrics.get("seconds", 0.0) for v in uploads.values()}
    report("prepare", total=len(ids), done=0)
    done = []
    calls = [(s, (src, store, s, base, run_id, qc, trained[s], identity, force)) for s in ids]
    cpu_only = Resources(num_cpus=resources.num_cpus, num_gpus=0)  # ingest + features never hold a GPU
    results = run_on_ray(prepare_speaker, calls, cpu_only,
                         on_done=lambda r: (done.append(r), report("prepare", total=len(ids), done=len(done))))
    # an unchanged voice reports the clean speech its version was made from
    return refused + [r.model_copy(update={"seconds": seconds.get(r.speaker_id, {}).get(r.voice_version, 0.0)})
                      if r.status == "unchanged" else r for r in results]


@task
def claim(store: str, prepared: list[SpeakerResult], locks: TrainingLocks,
          force: bool = False) -> tuple[list[SpeakerResult], list[SpeakerResult]]:
    """(voices this run trains, voices it leaves): each voice's training lock first, then, under it, the
    registry again: another run may have trained the same upload since `prepare` looked."""
    registry = VoiceRegistry(Store(store))
    mine, left = [], []
    for p in prepared:
        try:
            locks.claim(p.speaker_id)
        except VoiceBusy as e:
            left.append(p.model_copy(update={"status": "busy", "reasons": [str(e)]}))
            continue
        try:
            done = None if force else registry.uploads(p.speaker_id).get(p.source_hash or "")
        except (RegistryError, ValueError):
            done = None
        if done is not None:
            locks.release(p.speaker_id)
            left.append(p.model_copy(update={"status": "unchanged", "voice_version": done.version, "reasons": [
                f"already trained into version {done.version} by another run; --force trains it again"]}))
            continue
        mine.append(p)
    return mine, left


def enrollment_terms(registry: VoiceRegistry, p: SpeakerResult) -> dict:
    """What `ensure_voice` gets for a prepared speaker: the consent's terms, and when an admin reinstated
    a withdrawn voice for the very clip this enrollment verified (tasks/safety/consent_review.py)."""
    terms = registry_terms(p.consent)
    try:
        withdrawn_at = registry.get(p.speaker_id).withdrawn_at
    except UnknownVoice:
        return terms
    return {**terms, "reinstated_at": reinstated_at(registry.store, p.speaker_id, withdrawn_at,
                                                    p.consent_check.get("clip_sha256"))}


@task
def train(store: str, prepared: list[SpeakerResult], base: str, recipe: dict, resources: Resources,
          gate: dict | None = None, workers: int | None = None) -> list[SpeakerResult]:
    registry = VoiceRegistry(Store(store))
    ready = []
    out = []
    for p in prepared:
        try:
            registry.ensure_voice(p.speaker_id, p.owner, p.sharing, **enrollment_terms(registry, p))
            registry.set_status(p.speaker_id, "training")
            ready.append(p)
        except (RegistryError, ValueError) as e:
            out.append(p.model_copy(update={"status": "failed", "reasons": [str(e)]}))
    # a training that finished in a run that died before registering it is not trained again
    reused = [r for p in ready if (r := stored_result(registry.store, p, gate)) is not None]
    out += reused
    done = list(reused)
    report("train", total=len(ready), done=len(done))
    todo = [p for p in ready if p.speaker_id not in {r.speaker_id for r in reused}]
    if todo:
        base_ref = publish_base(Store(store), base)  # the shared base, read once per training worker
        out += train_voices(store, todo, base_ref, recipe, gate, resources, workers=workers,
                            on_done=lambda r: (done.append(r), report("train", total=len(ready), done=len(done))))
    return out


@task
def register(store: str, trained: list[SpeakerResult], recipe: dict,
             locks: TrainingLocks | None = None, run_id: str = "?") -> list[SpeakerResult]:
    """Register each trained voice; with `locks` (the flow's), only while this run holds the voice's lock,
    and the lock is released once it is registered. Without, the caller answers for one writer per voice."""
    registry = VoiceRegistry(Store(store))
    out = []
    for r in trained:
        try:
            out.append(register_one(registry, r, recipe, locks, actor=f"enroll-run:{run_id}"))
        finally:
            if locks is not None:
                locks.release(r.speaker_id)
    return out


def register_one(registry: VoiceRegistry, r: SpeakerResult, recipe: dict,
                 locks: TrainingLocks | None = None, actor: str = "enroll-run:?") -> SpeakerResult:
    """A trained voice -> a registered version (while this run still holds the voice's training lock).

    Recorded, then made: the version's audit record is written once its number is known and before it is
    listed or made current; a log that cannot record leaves the version unlisted (never rendered) and the
    voice failed with the reason, and the rerun lists it after recording it."""
    try:
        if locks is not None:
            locks.check(r.speaker_id)
    except VoiceLockLost as e:
        return r.model_copy(update={"status": "failed", "reasons": [*r.reasons, str(e)]})
    if r.status != "trained":
        try:
            registry.set_status(r.speaker_id, "failed", "; ".join(r.reasons)[:500])
        except (RegistryError, ValueError):
            pass
        return r
    metrics = dict(r.metrics, source_hash=r.source_hash, seconds=r.seconds)
    verdict = r.evaluation.get("gate", {})
    held = verdict.get("mode") == "enforce" and not verdict.get("passed", True)
    training_key = posixpath.basename(r.run_prefix) if r.run_prefix else None

    def record(v: VersionRecord) -> None:
        audit.append(registry.store, "version_registered", actor, voice=r.speaker_id, version=v.version,
                     detail={"training_key": training_key, "made_current": not held,
                             "base_model": v.base_model, "source_hash": r.source_hash})

    try:  # idempotent by the training's folder: registering it again (a rerun) makes no second version
        v = registry.add_version(r.speaker_id, {
            "base_model": r.metrics.get("base_model", "?"), "untrained": bool(r.metrics.get("untrained_base")),
            "files": r.files, "ref_text": r.ref_text or "", "ref_language": r.ref_language or "",
            "prompt_tokens": r.prompt_tokens, "metrics": metrics, "recipe": recipe, "consent": r.consent,
            "consent_check": r.consent_check, "pipeline_version": r.pipeline_version, "evaluation": r.evaluation},
            make_current=not held, held_back="below the quality gate: " + "; ".join(verdict.get("reasons", [])),
            training_key=training_key, before_listing=record)
    except (RegistryError, ValueError, audit.AuditUnavailable) as e:  # one speaker's problem never stops the batch
        return r.model_copy(update={"status": "failed", "reasons": [f"could not register: {e}"]})
    if held:
        return r.model_copy(update={"status": "gated", "voice_version": v.version, "reasons": [
            f"version {v.version} registered but not current: below the quality gate: "
            + "; ".join(verdict.get("reasons", []))]})
    current = registry.get(r.speaker_id).current_version
    newer = [f"version {v.version} registered; version {current} is current (newer)"] if current != v.version else []
    return r.model_copy(update={"status": "accepted", "voice_version": v.version, "reasons": newer})


@task
def summarize(store: str, run_id: str, results: list[SpeakerResult]) -> dict:
    rows = [report_row(r) for r in results]
    s = Store(store)
    key = f"reports/enroll/{run_id}.parquet"
    write_report(s, key, rows)
    audit_enrollment(s, run_id, results)
    rows = artifact_rows(rows)
    counts = {k: sum(1 for r in results if r.status == k)
              for k in ("accepted", "unchanged", "rejected", "failed", "gated", "busy")}
    try:
        create_table_artifact(table=rows or [{"speaker": "-", "status": "no speakers found"}], key="enroll-summary",
                              description=f"Enrollment run {run_id}: {counts}. Report: {s.url(key)}")
    except Exception:  # noqa: BLE001 — artifacts need an API; the report in the store is the record
        get_run_logger().warning("could not create the Prefect artifact")
    return {"run_id": run_id, "counts": counts, "report": s.url(key), "speakers": rows}


def audit_enrollment(store: Store, run_id: str, results: list[SpeakerResult]) -> None:
    """Voice safety: one audit record per speaker, and its consent verdict when one was measured."""
    for r in results:
        actor = f"enroll-run:{run_id}"
        if r.consent_check:
            audit.append(store, "consent_verdict", actor, voice=r.speaker_id, detail=r.consent_check)
        audit.append(store, "enrollment", actor, voice=r.speaker_id, version=r.voice_version,
                     detail={"status": r.status, "owner": r.owner, "reasons": r.reasons[:5]})


@flow(name="enroll-batch", log_prints=True)
def enroll_batch(src: str, store: str = DEFAULT_STORE, pretrained: str | None = None, recipe: dict | None = None,
                 num_gpus: float = 0.0, num_cpus: float = 1.0, qc: dict | None = None, gate: dict | None = None,
                 workers: int | None = None, force: bool = False, model_version: str | None = None) -> dict:
    """Enroll every speaker folder under `src` into the voice registry of `store`.

    `gate`: tasks/evaluate.Gate fields (mode "enforce" | "report" | "off", thresholds); `workers`:
    training actors (default: as many as the cluster fits at `num_cpus` / `num_gpus` each); `force`:
    train uploads again that are already trained into a version (by default they are "unchanged").
    `model_version`: v2 | v2Pro | v2ProPlus; default: the version `pretrained` holds (v2 for the tiny base).
    """
    if pretrained:  # every official file by its exact name, and the folder's version, before any work starts
        model_version = pretrained_files(pretrained, model_version).version
    dashboard = ensure_ray()
    run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    base = base_spec(pretrained, model_version)
    recipe = Recipe(**(recipe or {})).model_dump()
    resources = Resources(num_cpus=num_cpus, num_gpus=num_gpus)
    speakers = discover(src)
    identity = model_identity(base, recipe, qc)  # an unchanged upload with a new base or recipe retrains
    prepared = prepare(src, store, speakers, base, run_id, qc, resources, identity, force)
    # released when registered, or at the latest here; a killed run's locks are taken over by its rerun
    with TrainingLocks(Store(store), run_id, process=process_identity.current(),
                       holder_gone=process_identity.is_dead) as locks:
        ok, left = claim(store, [p for p in prepared if p.status == "prepared"], locks, force)
        trained = train(store, ok, base, recipe, resources, gate, workers) if ok else []
        registered = register(store, trained, recipe, locks, run_id)
    summary = summarize(store, run_id, [p for p in prepared if p.status != "prepared"] + left + registered)
    return {**summary, "dashboard": dashboard}
