"""Prefect flow `render_script`: a script of lines -> audio shards + Parquet index, as a principal.

    inspect script (columns, unique ids) -> authorize voices (before any compute)
      -> render on a Ray Data actor pool (tasks/render.py) -> job record + summary artifact

Rerunning the same script as the same principal resumes the same job (or pass `job_id`).
"""
from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import fsspec
import pyarrow.compute as pc
from prefect import flow, get_run_logger
from prefect import task as prefect_task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE

from voicefleet.tasks import audit
from voicefleet.tasks.access import email_domain
from voicefleet.tasks.principal import resolve_principal
from voicefleet.tasks.registry import RegistryError, UnknownVoice, VoiceRegistry
from voicefleet.tasks.render import RenderCounts, RenderSettings, VoiceDecision, render_lines
from voicefleet.tasks.runtime import Resources, ensure_ray
from voicefleet.tasks.script import ScriptInfo, inspect_script
from voicefleet.tasks.shards import index_glob, job_prefix, read_index
from voicefleet.tasks.storage import Store, safe_id

from .progress import report

task = prefect_task(cache_policy=NONE)
DEFAULT_STORE = "./voicefleet-data"


def default_job_id(script_url: str, principal: str) -> str:
    """Same script file (path, size, modification) and principal -> same job, so a rerun resumes."""
    url = script_url if "://" in script_url else str(Path(script_url).resolve())
    fs, path = fsspec.core.url_to_fs(url)
    info = fs.info(path)
    stamp = info.get("ETag") or info.get("mtime") or info.get("LastModified") or ""
    key = f"{url}\x1f{principal}\x1f{info.get('size')}\x1f{stamp}"
    return "job-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def bert_dir_of(pretrained: str | None) -> str | None:
    if not pretrained:
        return None
    hits = [p for p in Path(pretrained).rglob("config.json") if "roberta" in p.parent.name.lower()]
    return str(hits[0].parent) if hits else None


@task
def inspect(script: str) -> ScriptInfo:
    return inspect_script(script)


@task
def authorize(store: str, info: ScriptInfo, principal: str) -> dict[str, VoiceDecision]:
    registry = VoiceRegistry(Store(store), org_of=email_domain)
    decisions = {}
    for voice in info.voices:
        try:
            rec = registry.get(voice)
        except (UnknownVoice, ValueError):
            decisions[voice] = VoiceDecision(False, f"unknown voice {voice!r}")
            continue
        if rec.status != "ready" and rec.current_version is None:
            decisions[voice] = VoiceDecision(False, f"voice {voice} is not ready (status {rec.status})")
            continue
        d = registry.authorize(voice, principal)
        decisions[voice] = VoiceDecision(d.allowed, d.reason if not d.allowed else "", rec.current_version)
    return decisions


def job_totals(store: Store, job_id: str) -> dict:
    table = read_index(store, job_id, columns=["status", "duration_s"])
    totals = {"lines_indexed": table.num_rows}
    for status in ("ok", "failed", "refused"):
        totals[status] = int(pc.sum(pc.equal(table["status"], status)).as_py() or 0)
    totals["audio_s"] = round(float(pc.sum(table["duration_s"]).as_py() or 0.0), 2)
    return totals


@task
def render(store: str, job_id: str, info: ScriptInfo, decisions: dict[str, VoiceDecision], settings: RenderSettings,
           bert_dir: str | None) -> RenderCounts:
    report("render", total=info.lines, done=0)

    def progress(c: RenderCounts) -> None:
        report("render", total=info.lines, done=c.ok + c.failed + c.refused + c.skipped, counts=c)

    return render_lines(Store(store), job_id, info, decisions, settings, bert_dir, on_progress=progress)


@flow(name="render-script", log_prints=True)
def render_script(script: str, principal: str, store: str = DEFAULT_STORE, job_id: str | None = None,
                  pretrained: str | None = None, actors: int = 1, num_gpus: float = 0.0, num_cpus: float = 1.0,
                  batch_size: int = 16, lines_per_shard: int = 256, local: bool = False) -> dict:
    """Render every line of `script` with its voice, as `principal`, into `renders/<job_id>/`.

    `principal` is a signed principal token (tasks/principal.py), verified here; a plain name is
    accepted only with `local=True` (or VOICEFLEET_LOCAL_MODE=1).
    """
    who = resolve_principal(token=principal, local=local) if principal.startswith("vf1.") else \
        resolve_principal(name=principal, local=local)
    principal = who.name
    info = inspect(script)
    job_id = safe_id(job_id or default_job_id(script, principal), "job id")
    s = Store(store)
    dashboard = ensure_ray()
    decisions = authorize(store, info, principal)
    started = dt.datetime.now(dt.timezone.utc).isoformat()
    job_key = f"{job_prefix(job_id)}/job.json"
    job = s.read_json(job_key) if s.exists(job_key) else {"job_id": job_id, "created_at": started, "runs": []}
    job.update(script=info.url, principal=principal, principal_via=who.via, lines=info.lines, status="running",
               voices={v: {"allowed": d.allowed, "version": d.version, "reason": d.reason} for v, d in decisions.items()})
    job["runs"].append({"started_at": started})
    s.write_json(job_key, job)
    audit.append(s, "render_started", principal, job=job_id, lines=info.lines, detail={"via": who.via, "voices": {
        v: {"allowed": d.allowed, "version": d.version} for v, d in decisions.items()}})
    settings = RenderSettings(actors=actors, batch_size=batch_size, lines_per_shard=lines_per_shard,
                              resources=Resources(num_cpus=num_cpus, num_gpus=num_gpus))
    counts = render(store, job_id, info, decisions, settings, bert_dir_of(pretrained))
    totals = job_totals(s, job_id)
    complete = totals["lines_indexed"] == info.lines
    job["status"] = "complete" if complete else "incomplete"
    job["totals"] = totals
    job["runs"][-1].update(finished_at=dt.datetime.now(dt.timezone.utc).isoformat(), rendered_ok=counts.ok,
                           failed=counts.failed, refused=counts.refused, skipped=counts.skipped)
    s.write_json(job_key, job)
    audit.append(s, "render_finished", principal, job=job_id, lines=counts.ok, detail={
        "voices": {v: {"version": d.version} for v, d in decisions.items() if d.allowed}, **totals})
    summary = {"job_id": job_id, "status": job["status"], "lines": info.lines, **totals, "skipped_this_run": counts.skipped,
               "output": s.url(job_prefix(job_id)), "index_glob": index_glob(s, job_id), "dashboard": dashboard,
               "failures": counts.failures[:10], "untrained_voices": untrained_voices(s, decisions)}
    try:
        create_table_artifact(key="render-summary", table=[
            {"job": job_id, "lines": info.lines, "ok": totals["ok"], "failed": totals["failed"],
             "refused": totals["refused"], "audio_s": totals["audio_s"], "output": summary["output"]}]
            + [{"job": f"line {lid}", "lines": None, "ok": None, "failed": None, "refused": None, "audio_s": None,
                "output": err} for lid, err in counts.failures[:20]],
            description=f"Render job {job_id} ({job['status']}); index: {summary['index_glob']}")
    except Exception:  # noqa: BLE001
        get_run_logger().warning("could not create the Prefect artifact")
    return summary


def untrained_voices(store: Store, decisions: dict[str, VoiceDecision]) -> list[str]:
    registry = VoiceRegistry(store)
    out = []
    for v, d in decisions.items():
        if d.allowed and d.version is not None:
            try:
                if registry.version(v, d.version).untrained:
                    out.append(v)
            except (RegistryError, ValueError):
                pass
    return out
