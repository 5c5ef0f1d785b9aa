"""Prefect flow `render_script`: a script of lines -> audio shards + Parquet index, as a principal.

    plan (read the script once: check every line, authorize each voice once; tasks/render/plan.py)
      -> the job's owner checked (tasks/render/job_owner.py) -> job lease (one writing run per job)
      -> the cluster checked for the actors asked for -> this run's work list (anti-join with the
         index by line hash) and the script's manifest -> render on a Ray Data actor pool
         (tasks/render/pipeline.py) -> compact the index, remove orphaned tars, work lists and
         fingerprints -> job record + summary artifact

Rerunning the same script as the same principal resumes the same job (or pass `job_id`): finished
lines are kept, edited lines rendered again, refusals decided again, failed lines rendered again
with `retry_failed` (new seeds). "complete" means every line of the current script has a row made
from it; `failed`/`refused` say whether any of them did not become audio.
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

from voicefleet.tasks.cluster.runtime import Resources, check_resources, check_store_for_cluster, ensure_ray
from voicefleet.tasks.render.job_cleanup import remove_unreferenced_fingerprints, remove_work_lists
from voicefleet.tasks.render.job_index import compact, job_totals, remove_orphans
from voicefleet.tasks.render.job_lease import JobLease
from voicefleet.tasks.render.job_owner import check_job_owner
from voicefleet.tasks.render.job_paths import index_glob, job_key, job_prefix
from voicefleet.tasks.render.job_report import write_report
from voicefleet.tasks.render.line_checks import DEFAULT_MAX_CHARS, LineLimits
from voicefleet.tasks.render.line_qc import QCConfig
from voicefleet.tasks.render.pipeline import RenderCounts, render_lines
from voicefleet.tasks.render.plan import NoKnownVoice, Plan, plan_script, todo_prefix, write_todo
from voicefleet.tasks.render.postprocess import PostConfig
from voicefleet.tasks.render.settings import RenderSettings
from voicefleet.tasks.safety import audit
from voicefleet.tasks.safety.access import check_principal
from voicefleet.tasks.safety.principal import Principal
from voicefleet.tasks.store.ids import safe_id
from voicefleet.tasks.store.storage import Store
from voicefleet.tasks.voices.pretrained_layout import pretrained_files

from .credential import discard, hand_over, redeem
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


def bert_dir_of(pretrained: str | None, model_version: str | None = None) -> str | None:
    """The Chinese BERT folder of an official pretrained folder (found by its exact name and checked, the
    folder read as `model_version`, else as the version it holds), or None without one."""
    if not pretrained:
        return None
    bert = pretrained_files(pretrained, model_version).bert
    return None if bert is None else str(bert)


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
           bert_dir: str | None, lease: JobLease) -> RenderCounts:
    """This run's work list, rendered; `lease` fences every index part the workers write."""
    s = Store(store)
    remove_work_lists(s, job_id)  # killed runs' todo parts: nobody else uses them while we hold the lease
    todo = write_todo(plan, s, job_id, run, retry_failed, audio_key=settings.audio_key(), actors=settings.actors,
                      batch_size=settings.batch_size)
    report("render", total=plan.lines, done=todo.skipped)

    def progress(c: RenderCounts) -> None:
        report("render", total=plan.lines, done=c.ok + c.failed + c.refused + c.skipped, counts=c)

    try:
        return render_lines(s, job_id, todo.keys, plan.decisions, settings, run, bert_dir, skipped=todo.skipped,
                            on_progress=progress, lease=lease)
    finally:
        s.delete(todo_prefix(job_id, run), recursive=True)


@task
def finish(store: str, job_id: str, generation: int | None = None, lease_start: float | None = None) -> dict:
    """Compact the index, drop tars and fingerprints no row points at (none younger than the lease,
    `lease_start` in store time), and count the current script's lines."""
    s = Store(store)
    compacted = compact(s, job_id, generation=generation)
    orphans = remove_orphans(s, job_id, older_than=lease_start)
    fingerprints = remove_unreferenced_fingerprints(s, job_id, older_than=lease_start)
    return {**job_totals(s, job_id).as_dict(), "compacted_files": compacted, "orphans_removed": len(orphans),
            "fingerprint_parts_removed": len(fingerprints)}


@flow(name="render-script", log_prints=True)
def render_script(script: str, credential: str, store: str = DEFAULT_STORE, job_id: str | None = None,
                  pretrained: str | None = None, actors: int = 1, num_gpus: float = 0.0, num_cpus: float = 1.0,
                  batch_size: int = 16, lines_per_shard: int = 256, retry_failed: bool = False,
                  max_chars: int = DEFAULT_MAX_CHARS, voice_cache: int = 4, precision: str | None = None,
                  qc: dict | None = None, post: dict | None = None, unsafe_single_writer: bool = False,
                  model_version: str | None = None) -> dict:
    """Render every line of `script` with its voice, as the principal `credential` proves, into `renders/<job_id>/`.

    Every parameter is the caller's to choose: who acts is never one of them. `credential` is a
    reference (flows/credential.py): the name of a Prefect Secret block holding the caller's principal
    token (`voicefleet principal handoff`), read once and deleted, the token verified here; or, for a
    run in the caller's own process, a single-use in-process handoff (`render_as`).
    `precision`: fp32 | bf16 | fp16 | int8 (None: bf16 on a GPU, fp32 on CPU).
    `qc` / `post`: QCConfig / PostConfig fields (quality control, loudness, pads, target length).
    `unsafe_single_writer`: accept a store that cannot create only-if-absent (the job lease cannot then
    keep two runs apart; you promise there is one at a time).
    `model_version`: the version `pretrained` is read as (v2 | v2Pro | v2ProPlus; default: the one it holds).
    Each voice renders with the model version it was enrolled with (its own files).
    """
    who, plan = redeem(credential, store)
    qc_cfg, post_cfg = QCConfig(**(qc or {})), PostConfig(**(post or {}))
    settings = RenderSettings(actors=actors, batch_size=batch_size, lines_per_shard=lines_per_shard,
                              voice_cache=voice_cache, resources=Resources(num_cpus=num_cpus, num_gpus=num_gpus),
                              qc=qc_cfg, post=post_cfg, precision=precision)
    principal = who.name
    plan = plan or make_plan(script, store, principal, max_chars)
    s = Store(store)
    try:
        bert_dir = bert_dir_of(pretrained, model_version)  # not an official pretrained folder: the run stops here
        job_id = safe_id(job_id or default_job_id(script, principal), "job id")
        key = job_key(job_id)
        check_job_owner(s.read_json(key) if s.exists(key) else None, job_id, principal)  # before the lease
        with JobLease(s, job_id, unsafe_single_writer=unsafe_single_writer) as lease:
            dashboard = ensure_ray()
            check_store_for_cluster(s)
            check_resources(settings.resources, settings.actors)
            started = dt.datetime.now(dt.UTC).isoformat()
            job = s.read_json(key) if s.exists(key) else {"job_id": job_id, "created_at": started, "runs": []}
            previous_owner = check_job_owner(job, job_id, principal)  # again, under the lease
            if previous_owner:
                audit.append(s, "render_job_takeover", principal, job=job_id,
                             detail={"previous_owner": previous_owner, **acted(who)})
            job.update(script=plan.url, principal=principal, principal_via=who.via, principal_token_id=who.token_id,
                       lines=plan.lines, status="running",
                       voices={v: {"allowed": d.allowed, "version": d.version, "reason": d.reason}
                               for v, d in plan.decisions.items()}, qc=asdict(qc_cfg), post=asdict(post_cfg))
            job["runs"].append({"started_at": started, "retry_failed": retry_failed})
            run = len(job["runs"])
            s.write_json(key, job)
            audit.append(s, "render_started", principal, job=job_id, lines=plan.lines, detail={**acted(who), "voices": {
                v: {"allowed": d.allowed, "version": d.version} for v, d in plan.decisions.items()}})
            counts = render(store, job_id, plan, settings, run, retry_failed, bert_dir, lease)
            lease.check()
            totals = finish(store, job_id, lease.generation, lease.acquired_store_time)
            job["status"] = "complete" if totals["lines_indexed"] == plan.lines else "incomplete"
            job["totals"] = totals
            job["runs"][-1].update(finished_at=dt.datetime.now(dt.UTC).isoformat(), rendered_ok=counts.ok,
                                   failed=counts.failed, refused=counts.refused, truncated=counts.truncated,
                                   skipped=counts.skipped, unwritten=counts.unwritten)
            s.write_json(key, job)
            audit.append(s, "render_finished", principal, job=job_id, lines=counts.ok, detail={
                "voices": {v: {"version": d.version} for v, d in plan.decisions.items() if d.allowed}, **totals})
    finally:
        plan.cleanup()
    summary = {"job_id": job_id, "status": job["status"], "lines": plan.lines, **totals, "skipped_this_run": counts.skipped,
               "output": s.url(job_prefix(job_id)), "index_glob": index_glob(s, job_id), "dashboard": dashboard,
               "failures": counts.failures[:10], "refusals": counts.refusals[:10],
               "unwritten_this_run": counts.unwritten, "untrained_voices": untrained_voices(plan),
               "qc": {"mode": qc_cfg.mode, "retries": qc_cfg.retries}, "report": job_report(s, job_id)}
    try:
        create_table_artifact(key="render-summary", table=[
            {"job": job_id, "lines": plan.lines, "ok": totals["ok"], "failed": totals["failed"],
             "refused": totals["refused"], "truncated": totals["truncated"], "audio_h": totals["audio_h"],
             "this_run": f"ok {counts.ok}, failed {counts.failed}, refused {counts.refused}, skipped {counts.skipped}",
             "output": summary["output"]}]
            + [{"job": f"line {lid}", "lines": None, "ok": None, "failed": None, "refused": None, "truncated": None,
                "audio_h": None, "this_run": None, "output": err}
               for lid, err in (counts.failures + counts.refusals)[:20]],
            description=f"Render job {job_id} ({job['status']}); index: {summary['index_glob']}")
    except Exception:  # noqa: BLE001
        get_run_logger().warning("could not create the Prefect artifact")
    return summary


def render_as(who: Principal, script: str, store: str = DEFAULT_STORE, *, plan: Plan | None = None,
              **settings) -> dict:
    """Run `render_script` in this process as `who`, a principal the caller established (a verified token,
    local mode, the demo's owner), with the `plan` it already read the script into (`make_plan` for
    `who`): both handed over by a single-use in-process reference, so neither is a flow parameter."""
    ref = hand_over(who, plan)
    try:
        return render_script(script, ref, store, **settings)
    finally:
        unused = discard(ref)  # the run never started (Prefect refused a parameter): its plan's folder goes too
        if unused is not None:
            unused.cleanup()


def acted(who: Principal) -> dict:
    """What job and audit records keep of who acted: how it was established and the token's id, never the token."""
    return {"via": who.via, **({"token_id": who.token_id} if who.token_id else {})}


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
