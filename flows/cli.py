"""The `voicefleet` command line: demo, enroll, render, voices, jobs.

Exit codes (the one place they are decided):
    0  done, every line / speaker fine
    1  unexpected internal error (set VOICEFLEET_DEBUG=1 for the traceback)
    2  bad input: missing or unreadable file, bad columns, invalid id or principal
    3  not found: unknown voice or job
    4  finished, but some lines failed or were refused, or some speakers were rejected
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
EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_NOT_FOUND, EXIT_PARTIAL = 0, 1, 2, 3, 4

app = typer.Typer(help="voicefleet: voice cloning at scale (GPT-SoVITS v2 on Ray + Prefect).",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
voices_app = typer.Typer(help="Inspect registered voices.", no_args_is_help=True)
jobs_app = typer.Typer(help="Inspect render jobs.", no_args_is_help=True)
app.add_typer(voices_app, name="voices")
app.add_typer(jobs_app, name="jobs")
console = Console(soft_wrap=True)  # paths and commands stay on one line, copyable
err = Console(stderr=True)

StoreOpt = typer.Option(DEFAULT_STORE, "--store", help="Object store root: a folder, file://, s3:// or gs:// URI.")


class CLIError(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def exit_code_for(exc: BaseException) -> int:
    """Map the pipeline's user-actionable exceptions to exit codes."""
    from voicefleet.model.checkpoint import CheckpointError
    from voicefleet.tasks.base_model import PretrainedNotFound
    from voicefleet.tasks.registry import InvalidPrincipal, UnknownVersion, UnknownVoice
    from voicefleet.tasks.script import ScriptError
    from voicefleet.tasks.storage import InvalidId, InvalidKey

    if isinstance(exc, CLIError):
        return exc.code
    if isinstance(exc, (UnknownVoice, UnknownVersion)):
        return EXIT_NOT_FOUND
    if isinstance(exc, (ScriptError, InvalidId, InvalidKey, InvalidPrincipal, PretrainedNotFound, CheckpointError,
                        FileNotFoundError, IsADirectoryError, PermissionError)):
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
        label = {EXIT_BAD_INPUT: "error", EXIT_NOT_FOUND: "not found"}.get(code, "internal error")
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
            extra = f"ok {c.ok}  failed {c.failed}  refused {c.refused}  skipped {c.skipped}  audio {c.audio_s:.0f}s"
        bars.update(tasks[stage], total=info.get("total"), completed=info.get("done", 0), extra=extra)

    progress_hook.set_listener(listener)
    try:
        with bars:
            yield
    finally:
        progress_hook.set_listener(None)


def store_of(uri: str):
    from voicefleet.tasks.storage import Store

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
    from voicefleet.tasks.finetune import Recipe

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


def print_enroll(summary: dict) -> int:
    t = Table(title=f"enrollment {summary['run_id']}")
    for col in ("speaker", "status", "version", "seconds", "reasons"):
        t.add_column(col)
    for r in summary["speakers"]:
        style = {"accepted": "green", "unchanged": "cyan", "rejected": "red", "failed": "red", "gated": "yellow"}.get(r["status"], "")
        t.add_row(r["speaker"], f"[{style}]{r['status']}[/]", str(r["version"] or "-"), f"{r['seconds']:.1f}",
                  (r["reasons"] or r["warnings"] or "")[:200])
    console.print(t)
    console.print(f"report: {summary['report']}")
    if summary.get("dashboard"):
        console.print(f"Ray dashboard: {summary['dashboard']}")
    c = summary["counts"]
    return EXIT_PARTIAL if c["rejected"] or c["failed"] or c.get("gated") else EXIT_OK


def print_render(summary: dict) -> int:
    t = Table(title=f"render job {summary['job_id']} ({summary['status']})")
    for col in ("lines", "ok", "failed", "refused", "audio s", "skipped (earlier runs)"):
        t.add_column(col, justify="right")
    t.add_row(str(summary["lines"]), str(summary["ok"]), str(summary["failed"]), str(summary["refused"]),
              f"{summary['audio_s']:.1f}", str(summary["skipped_this_run"]))
    console.print(t)
    for line_id, error in summary.get("failures") or []:
        console.print(f"  [yellow]{line_id}[/]: {error}", highlight=False)
    console.print(f"output: {summary['output']}")
    if summary.get("untrained_voices"):
        console.print(f"[yellow]note[/]: voices {', '.join(summary['untrained_voices'])} come from an untrained "
                      "(random-weight) base model: their audio is not speech. Use --pretrained for real voices.")
    return EXIT_OK if summary["ok"] == summary["lines"] else EXIT_PARTIAL


# ---------------------------------------------------------------- commands
@app.command()
def enroll(src: str = typer.Argument(..., help="Enrollment root: <src>/<speaker_id>/{audio, transcripts.jsonl, consent.json}"),
           store: str = StoreOpt,
           pretrained: Optional[str] = typer.Option(None, help="Folder with the official v2 pretrained models."),
           recipe: str = typer.Option("default", help="'default', 'demo' (short, for the tiny model) or a JSON file."),
           gpus: float = typer.Option(0.0, help="GPUs per voice (fractions pack voices on one GPU)."),
           cpus: float = typer.Option(1.0, help="CPUs per voice."),
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
        if lora_rank is not None:
            rec["lora_rank"] = lora_rank
        gate_cfg = gate_of(gate, min_similarity, max_wer)
        quiet_logs()
        from .enroll import enroll_batch

        with progress_bars():
            summary = enroll_batch(src, store, pretrained=pretrained, recipe=rec, num_gpus=gpus, num_cpus=cpus,
                                   gate=gate_cfg, workers=workers)
        raise typer.Exit(print_enroll(summary))


def gate_of(mode: str, min_similarity: float, max_wer: float) -> dict:
    from voicefleet.tasks.evaluate import Gate

    if mode not in ("enforce", "report", "off"):
        raise CLIError(f"--gate {mode!r} is not one of enforce, report, off", EXIT_BAD_INPUT)
    try:
        return Gate(mode=mode, min_similarity=min_similarity, max_wer=max_wer).model_dump()
    except ValueError as e:
        raise CLIError(f"invalid gate: {e}", EXIT_BAD_INPUT) from e


@app.command()
def render(script: str = typer.Argument(..., help="Script file or URL (.csv, .jsonl, .parquet)."),
           principal: str = typer.Option(..., "--as", help="Who renders: lines whose voice they may not use are refused."),
           store: str = StoreOpt,
           job: Optional[str] = typer.Option(None, help="Job id (default: derived from script and principal; a rerun resumes)."),
           actors: int = typer.Option(1, help="Synthesis actors."),
           gpus: float = typer.Option(0.0, help="GPUs per actor (fractional allowed)."),
           cpus: float = typer.Option(1.0, help="CPUs per actor."),
           batch_size: int = typer.Option(16, help="Lines per synthesis batch."),
           lines_per_shard: int = typer.Option(256, help="Lines per output shard."),
           pretrained: Optional[str] = typer.Option(None, help="Pretrained folder (for the Chinese BERT model).")):
    """Render a script into WebDataset shards + a Parquet index under renders/<job>/."""
    with handled():
        from voicefleet.tasks.registry import check_principal
        from voicefleet.tasks.script import inspect_script

        check_principal(principal)
        check_pretrained(pretrained)
        info = inspect_script(script)
        known = {v.voice_id for v in _registry(store).list()}
        unknown = sorted(v for v in info.voices if v not in known)
        if unknown and len(unknown) == len(info.voices):
            raise CLIError(f"unknown voice(s) {', '.join(unknown)}: no line of {script} can be rendered "
                           f"(see `voicefleet voices list --store {store}`)", EXIT_NOT_FOUND)
        if unknown:
            err.print(f"[yellow]warning[/]: unknown voice(s) {', '.join(unknown)}: their lines will be refused")
        quiet_logs()
        from .render import render_script

        with progress_bars():
            summary = render_script(script, principal, store, job_id=job, pretrained=pretrained, actors=actors,
                                    num_gpus=gpus, num_cpus=cpus, batch_size=batch_size, lines_per_shard=lines_per_shard)
        if summary.get("dashboard"):
            console.print(f"Ray dashboard: {summary['dashboard']}")
        raise typer.Exit(print_render(summary))


def _registry(store: str):
    from voicefleet.tasks.registry import VoiceRegistry

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
        from voicefleet.tasks.registry import UnknownVersion

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


@jobs_app.command("show")
def jobs_show(job: str = typer.Argument(..., help="Render job id."), store: str = StoreOpt):
    """Status and counts of a render job."""
    with handled():
        from voicefleet.tasks.shards import index_glob, job_prefix
        from voicefleet.tasks.storage import safe_id

        from .render import job_totals

        s = store_of(store)
        safe_id(job, "job id")
        key = f"{job_prefix(job)}/job.json"
        if not s.exists(key):
            raise CLIError(f"no render job {job} in {store}", EXIT_NOT_FOUND)
        meta = s.read_json(key)
        totals = job_totals(s, job)
        t = Table(title=f"job {job}")
        t.add_column("field")
        t.add_column("value")
        status = "complete" if totals["lines_indexed"] == meta.get("lines") else (
            "incomplete (rerun the render command to resume)" if meta.get("status") != "running" else "running or interrupted")
        for k, v in [("status", status), ("script", meta.get("script")), ("principal", meta.get("principal")),
                     ("lines", meta.get("lines")), ("indexed", totals["lines_indexed"]), ("ok", totals["ok"]),
                     ("failed", totals["failed"]), ("refused", totals["refused"]), ("audio s", totals["audio_s"]),
                     ("runs", len(meta.get("runs", []))), ("index", index_glob(s, job))]:
            t.add_row(k, str(v))
        console.print(t)


@app.command()
def demo(store: str = StoreOpt,
         speakers: int = typer.Option(3, min=1, max=6, help="Demo speakers (distinct voices from pip packages)."),
         lines: int = typer.Option(300, min=1, help="Script lines to render."),
         pretrained: Optional[str] = typer.Option(None, help="Official pretrained folder (default: tiny random model).")):
    """Build a demo enrollment set, enroll it, render a script, and print where everything is."""
    with handled():
        t0 = time.perf_counter()
        check_pretrained(pretrained)
        quiet_logs()
        from voicefleet.tasks.demo_data import build_demo_enrollment, build_demo_script

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
            summary = enroll_batch(s.url("demo/enroll"), store, pretrained=pretrained, recipe=rec,
                                   gate=gate_of(gate_mode, 0.75, 0.35))
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
            rsum = render_script(s.url("demo/script.csv"), owner, store, pretrained=pretrained)
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


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
