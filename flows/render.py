"""Prefect flow `render_script`: a script of lines -> audio shards + Parquet index, as a principal.

    plan (read the script once: check every line, authorize each voice once; tasks/render/plan.py)
      -> job lease (one writing run per job) -> this run's work list (anti-join with the index)
      -> render on a Ray Data actor pool (tasks/render/pipeline.py)
      -> compact the index, remove orphaned tars -> job record + summary artifact

Rerunning the same script as the same principal resumes the same job (or pass `job_id`): finished
lines are kept, refusals are decided again, failed lines are rendered again with `retry_failed`.
"""
from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import asdict
from pathlib import Path

import fsspec
from prefect import flow, get_run_logger
from prefect import task as prefect_task
from prefect.artifacts import create_link_artifact, create_table_artifact
from prefect.cache_policies import NONE

from voicefleet.tasks.cluster.runtime import Resources, check_store_for_cluster, ensure_ray
from voicefleet.tasks.render.job_index import compact, job_totals, remove_orphans
from voicefleet.tasks.render.job_lease import JobLease
from voicefleet.tasks.render.job_paths import index_glob, job_key, job_prefix
from voicefleet.tasks.render.job_report import write_report
from voicefleet.tasks.render.line_checks import DEFAULT_MAX_CHARS, LineLimits
from voicefleet.tasks.render.line_qc import QCConfig
from voicefleet.tasks.render.pipeline import RenderCounts, RenderSettings, render_lines
from voicefleet.tasks.render.plan import NoKnownVoice, Plan, plan_script, todo_prefix, write_todo
from voicefleet.tasks.render.postprocess import PostConfig
from voicefleet.tasks.safety import audit
from voicefleet.tasks.safety.access import check_principal
from voicefleet.tasks.safety.principal import resolve_claim
from voicefleet.tasks.store.ids import safe_id
from voicefleet.tasks.store.storage import Store

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


def make_plan(script: str, store: str, principal: str, max_chars: int = DEFAULT_MAX_CHARS) -> Plan:
    """Read the script once and check every line (no Ray, no Prefect): the CLI calls this first."""
    return plan_script(script, Store(store), check_principal(principal), LineLimits(max_chars=max_chars))


def check_voices_known(plan: Plan, script: str, store: str) -> list[str]:
    """The script's voices that are not registered (their lines will be refused). When none of its
    voices is known no line can be rendered: the plan is cleaned up and `NoKnownVoice` raised."""
    unknown = sorted(v for v, d in plan.decisions.items() if d.reason.startswith("unknown voice"))
    if unknown and len(unknown) == len(plan.voices):
        plan.cleanup()
        raise NoKnownVoice(f"unknown voice(s) {', '.join(unknown)}: no line of {script} can be rendered "
                           f"(see `voicefleet voices list --store {store}`)")
    return unknown


@task
def render(store: str, job_id: str, plan: Plan, settings: RenderSettings, run: int, retry_failed: bool,
           bert_dir: str | None) -> RenderCounts:
    s = Store(store)
    todo = write_todo(plan, s, job_id, run, retry_failed)
    report("render", total=plan.lines, done=todo.skipped)

    def progress(c: RenderCounts) -> None:
        report("render", total=plan.lines, done=c.ok + c.failed + c.refused + c.skipped, counts=c)

    try:
        return render_lines(s, job_id, todo.keys, plan.decisions, settings, run, bert_dir, skipped=todo.skipped,
                            on_progress=progress)
    finally:
        s.delete(todo_prefix(job_id, run), recursive=True)


@task
def finish(store: str, job_id: str) -> dict:
    """Compact the index, drop tars no row points at, and count by distinct line id."""
    s = Store(store)
    compacted = compact(s, job_id)
    orphans = remove_orphans(s, job_id)
    return {**job_totals(s, job_id).as_dict(), "compacted_files": compacted, "orphans_removed": len(orphans)}


@flow(name="render-script", log_prints=True)
def render_script(script: str, principal: str, store: str = DEFAULT_STORE, job_id: str | None = None,
                  pretrained: str | None = None, actors: int = 1, num_gpus: float = 0.0, num_cpus: float = 1.0,
                  batch_size: int = 16, lines_per_shard: int = 256, retry_failed: bool = False,
                  max_chars: int = DEFAULT_MAX_CHARS, voice_cache: int = 4, plan: Plan | None = None,
                  precision: str | None = None, qc: dict | None = None, post: dict | None = None,
                  local: bool = False) -> dict:
    """Render every line of `script` with its voice, as `principal`, into `renders/<job_id>/`.

    `principal` is a signed principal token (tasks/safety/principal.py), verified here; a plain name is
    accepted only with `local=True` (or VOICEFLEET_LOCAL_MODE=1).
    `plan`: the result of `make_plan` when the caller already read the script (the CLI does).
    `precision`: fp32 | bf16 | fp16 | int8 (None: bf16 on a GPU, fp32 on CPU).
    `qc` / `post`: QCConfig / PostConfig fields (quality control, loudness, pads, target length).
    """
    who = resolve_claim(principal, local=local)
    principal = who.name
    qc_cfg, post_cfg = QCConfig(**(qc or {})), PostConfig(**(post or {}))
    settings = RenderSettings(actors=actors, batch_size=batch_size, lines_per_shard=lines_per_shard,
                              voice_cache=voice_cache, resources=Resources(num_cpus=num_cpus, num_gpus=num_gpus),
                              qc=qc_cfg, post=post_cfg, precision=precision)
    plan = plan or make_plan(script, store, principal, max_chars)
    s = Store(store)
    try:
        job_id = safe_id(job_id or default_job_id(script, principal), "job id")
        with JobLease(s, job_id) as lease:
            dashboard = ensure_ray()
            check_store_for_cluster(s)
            started = dt.datetime.now(dt.timezone.utc).isoformat()
            key = job_key(job_id)
            job = s.read_json(key) if s.exists(key) else {"job_id": job_id, "created_at": started, "runs": []}
            job.update(script=plan.url, principal=principal, principal_via=who.via, lines=plan.lines, status="running",
                       voices={v: {"allowed": d.allowed, "version": d.version, "reason": d.reason}
                               for v, d in plan.decisions.items()}, qc=asdict(qc_cfg), post=asdict(post_cfg))
            job["runs"].append({"started_at": started, "retry_failed": retry_failed})
            run = len(job["runs"])
            s.write_json(key, job)
            audit.append(s, "render_started", principal, job=job_id, lines=plan.lines, detail={"via": who.via, "voices": {
                v: {"allowed": d.allowed, "version": d.version} for v, d in plan.decisions.items()}})
            counts = render(store, job_id, plan, settings, run, retry_failed, bert_dir_of(pretrained))
            lease.check()
            totals = finish(store, job_id)
            job["status"] = "complete" if totals["lines_indexed"] == plan.lines else "incomplete"
            job["totals"] = totals
            job["runs"][-1].update(finished_at=dt.datetime.now(dt.timezone.utc).isoformat(), rendered_ok=counts.ok,
                                   failed=counts.failed, refused=counts.refused, truncated=counts.truncated,
                                   skipped=counts.skipped)
            s.write_json(key, job)
            audit.append(s, "render_finished", principal, job=job_id, lines=counts.ok, detail={
                "voices": {v: {"version": d.version} for v, d in plan.decisions.items() if d.allowed}, **totals})
    finally:
        plan.cleanup()
    summary = {"job_id": job_id, "status": job["status"], "lines": plan.lines, **totals, "skipped_this_run": counts.skipped,
               "output": s.url(job_prefix(job_id)), "index_glob": index_glob(s, job_id), "dashboard": dashboard,
               "failures": counts.failures[:10], "untrained_voices": untrained_voices(plan),
               "qc": {"mode": qc_cfg.mode, "retries": qc_cfg.retries}, "report": job_report(s, job_id)}
    try:
        create_table_artifact(key="render-summary", table=[
            {"job": job_id, "lines": plan.lines, "ok": totals["ok"], "failed": totals["failed"],
             "refused": totals["refused"], "truncated": totals["truncated"], "audio_h": totals["audio_h"],
             "this_run": f"ok {counts.ok}, failed {counts.failed}, refused {counts.refused}, skipped {counts.skipped}",
             "output": summary["output"]}]
            + [{"job": f"line {lid}", "lines": None, "ok": None, "failed": None, "refused": None, "truncated": None,
                "audio_h": None, "this_run": None, "output": err} for lid, err in counts.failures[:20]],
            description=f"Render job {job_id} ({job['status']}); index: {summary['index_glob']}")
    except Exception:  # noqa: BLE001
        get_run_logger().warning("could not create the Prefect artifact")
    return summary


def untrained_voices(plan: Plan) -> list[str]:
    return sorted(v for v, d in plan.decisions.items() if d.allowed and d.record is not None and d.record.untrained)


def job_report(store: Store, job_id: str) -> str | None:
    """Write renders/<job>/report.html and link it from a Prefect artifact; None if it could not be written."""
    try:
        url = write_report(store, job_id)
    except Exception as e:  # noqa: BLE001 — the job is done; `voicefleet jobs report` can rebuild the page
        get_run_logger().warning(f"could not write the job report: {e}")
        return None
    try:
        create_link_artifact(key="render-report", link=url if "://" in url else Path(url).as_uri(),
                             link_text=f"report of render job {job_id}",
                             description="Counts, per-voice throughput, histograms and the worst lines with audio")
    except Exception:  # noqa: BLE001
        get_run_logger().warning("could not create the Prefect report artifact")
    return url
