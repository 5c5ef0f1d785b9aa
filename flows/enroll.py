"""Prefect flow `enroll_batch`: enrollment uploads -> checked datasets -> fine-tuned, registered voices.

    discover speakers -> prepare (ingest, checks, features; Ray task per speaker)
      -> train (tasks/train/scheduler.py: a pool of trainer actors, one voice at a time each, GPU
         fractions if asked; per-epoch checkpoints; evaluation sentences + quality gate)
      -> register (immutable version; current unless the gate held it back)
      -> report (Parquet + Prefect table artifact)
"""
from __future__ import annotations

import datetime as dt
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
from voicefleet.tasks.safety import audit
from voicefleet.tasks.safety.consent import registry_terms
from voicefleet.tasks.store.storage import Store
from voicefleet.tasks.train.finetune import Recipe
from voicefleet.tasks.train.scheduler import train_voices
from voicefleet.tasks.voices.base_model import base_spec
from voicefleet.tasks.voices.base_store import publish_base
from voicefleet.tasks.voices.errors import RegistryError
from voicefleet.tasks.voices.registry import VoiceRegistry

from .progress import report

DEFAULT_STORE = "./voicefleet-data"


@task
def discover(src: str) -> list[str]:
    return discover_speakers(Store(src))


@task
def prepare(src: str, store: str, speakers: list[str], base: str, run_id: str, qc: dict | None,
            resources: Resources, identity: str = "") -> list[SpeakerResult]:
    registry = VoiceRegistry(Store(store))
    ids, id_problems = assign_voice_ids(speakers)  # folder name -> voice id; unsafe names, collisions
    refused = [SpeakerResult(speaker_id=s, display_name=s, status="rejected", reasons=[why])
               for s, why in id_problems.items()]
    known, seconds = {}, {}
    for s, vid in ids.items():
        try:
            metrics = registry.version(vid).metrics
            known[s], seconds[vid] = metrics.get("source_hash"), metrics.get("seconds", 0.0)
        except (RegistryError, ValueError):  # unknown voice (first enrollment) included
            known[s] = None
    report("prepare", total=len(ids), done=0)
    done = []
    calls = [(s, (src, store, s, base, run_id, qc, known[s], identity)) for s in ids]
    cpu_only = Resources(num_cpus=resources.num_cpus, num_gpus=0)  # ingest + features never hold a GPU
    results = run_on_ray(prepare_speaker, calls, cpu_only,
                         on_done=lambda r: (done.append(r), report("prepare", total=len(ids), done=len(done))))
    # an unchanged voice reports the clean speech its current version was made from
    return refused + [r.model_copy(update={"seconds": seconds.get(r.speaker_id, 0.0)}) if r.status == "unchanged" else r
                      for r in results]


@task
def train(store: str, prepared: list[SpeakerResult], base: str, recipe: dict, resources: Resources,
          gate: dict | None = None, workers: int | None = None) -> list[SpeakerResult]:
    registry = VoiceRegistry(Store(store))
    ready = []
    out = []
    for p in prepared:
        try:
            registry.ensure_voice(p.speaker_id, p.owner, p.sharing, **registry_terms(p.consent))
            registry.set_status(p.speaker_id, "training")
            ready.append(p)
        except (RegistryError, ValueError) as e:
            out.append(p.model_copy(update={"status": "failed", "reasons": [str(e)]}))
    report("train", total=len(ready), done=0)
    done = []
    base_ref = publish_base(Store(store), base)  # the shared base, read once per training worker
    out += train_voices(store, ready, base_ref, recipe, gate, resources, workers=workers,
                        on_done=lambda r: (done.append(r), report("train", total=len(ready), done=len(done))))
    return out


@task
def register(store: str, trained: list[SpeakerResult], recipe: dict) -> list[SpeakerResult]:
    registry = VoiceRegistry(Store(store))
    out = []
    for r in trained:
        if r.status != "trained":
            try:
                registry.set_status(r.speaker_id, "failed", "; ".join(r.reasons)[:500])
            except (RegistryError, ValueError):
                pass
            out.append(r)
            continue
        metrics = dict(r.metrics, source_hash=r.source_hash, seconds=r.seconds)
        verdict = r.evaluation.get("gate", {})
        held = verdict.get("mode") == "enforce" and not verdict.get("passed", True)
        try:
            v = registry.add_version(r.speaker_id, {
                "base_model": r.metrics.get("base_model", "?"), "untrained": bool(r.metrics.get("untrained_base")),
                "files": r.files, "ref_text": r.ref_text or "", "ref_language": r.ref_language or "",
                "prompt_tokens": r.prompt_tokens, "metrics": metrics, "recipe": recipe, "consent": r.consent,
                "consent_check": r.consent_check, "pipeline_version": r.pipeline_version, "evaluation": r.evaluation},
                make_current=not held, held_back="below the quality gate: " + "; ".join(verdict.get("reasons", [])))
        except (RegistryError, ValueError) as e:  # one speaker's registry problem never stops the batch
            out.append(r.model_copy(update={"status": "failed", "reasons": [f"could not register: {e}"]}))
            continue
        if held:
            out.append(r.model_copy(update={"status": "gated", "voice_version": v.version, "reasons": [
                f"version {v.version} registered but not current: below the quality gate: "
                + "; ".join(verdict.get("reasons", []))]}))
            continue
        out.append(r.model_copy(update={"status": "accepted", "voice_version": v.version}))
    return out


@task
def summarize(store: str, run_id: str, results: list[SpeakerResult]) -> dict:
    rows = [report_row(r) for r in results]
    s = Store(store)
    key = f"reports/enroll/{run_id}.parquet"
    write_report(s, key, rows)
    audit_enrollment(s, run_id, results)
    rows = artifact_rows(rows)
    counts = {k: sum(1 for r in results if r.status == k) for k in ("accepted", "unchanged", "rejected", "failed", "gated")}
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
                 workers: int | None = None) -> dict:
    """Enroll every speaker folder under `src` into the voice registry of `store`.

    `gate`: tasks/evaluate.Gate fields (mode "enforce" | "report" | "off", thresholds); `workers`:
    training actors (default: as many as the cluster fits at `num_cpus` / `num_gpus` each).
    """
    dashboard = ensure_ray()
    run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    base = base_spec(pretrained)
    recipe = Recipe(**(recipe or {})).model_dump()
    resources = Resources(num_cpus=num_cpus, num_gpus=num_gpus)
    speakers = discover(src)
    identity = model_identity(base, recipe, qc)  # an unchanged upload with a new base or recipe retrains
    prepared = prepare(src, store, speakers, base, run_id, qc, resources, identity)
    ok = [p for p in prepared if p.status == "prepared"]
    trained = train(store, ok, base, recipe, resources, gate, workers) if ok else []
    registered = register(store, trained, recipe)
    summary = summarize(store, run_id, [p for p in prepared if p.status != "prepared"] + registered)
    return {**summary, "dashboard": dashboard}
