"""`voicefleet enroll SRC`: check, fine-tune and register one voice per speaker folder (flow enroll_batch)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .console import console, progress_bars, quiet_logs
from .exits import EXIT_BAD_INPUT, EXIT_OK, EXIT_PARTIAL, CLIError, handled
from .options import ModelVersionOpt, StoreOpt, check_pretrained
from .pretrained import base_choice


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


def gate_of(mode: str, min_similarity: float, max_wer: float) -> dict:
    from voicefleet.tasks.train.evaluate import Gate

    if mode not in ("enforce", "report", "off"):
        raise CLIError(f"--gate {mode!r} is not one of enforce, report, off", EXIT_BAD_INPUT)
    try:
        return Gate(mode=mode, min_similarity=min_similarity, max_wer=max_wer).model_dump()
    except ValueError as e:
        raise CLIError(f"invalid gate: {e}", EXIT_BAD_INPUT) from e


def print_enroll(summary: dict) -> int:
    t = Table(title=f"enrollment {summary['run_id']}")
    for col in ("speaker", "status", "version", "minutes", "utterances", "reasons / warnings"):
        t.add_column(col, overflow="fold")
    for r in summary["speakers"]:
        style = {"accepted": "green", "unchanged": "cyan", "rejected": "red", "failed": "red",
                 "gated": "yellow", "busy": "yellow"}.get(r["status"], "")
        name = r["speaker"] if r.get("display_name", r["speaker"]) == r["speaker"] else f"{r['speaker']} ({r['display_name']})"
        notes = (r["reasons"] or r["warnings"] or "").replace("; ", "\n")
        t.add_row(name, f"[{style}]{r['status']}[/]", str(r["version"] or "-"), f"{r.get('minutes', 0):.2f}",
                  str(r.get("utterances") or "-"), notes)
    console.print(t)
    console.print(f"report: {summary['report']}")
    if summary.get("dashboard"):
        console.print(f"Ray dashboard: {summary['dashboard']}")
    c = summary["counts"]
    return EXIT_PARTIAL if c["rejected"] or c["failed"] or c.get("gated") or c.get("busy") else EXIT_OK


def enroll(src: str = typer.Argument(..., help="Enrollment root: <src>/<speaker_id>/{audio, transcripts.jsonl, consent.json}"),
           store: str = StoreOpt,
           pretrained: Optional[str] = typer.Option(None, help="Folder with the official pretrained models "
                                                    "(default: the one `voicefleet pretrained pull` fetched, if any; "
                                                    "else the tiny random model)."),
           tiny: bool = typer.Option(False, "--tiny", help="Fine-tune from the tiny random model even when pulled "
                                     "weights are there."),
           model_version: Optional[str] = ModelVersionOpt,
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
           lora_rank: Optional[int] = typer.Option(None, min=0, help="Train a LoRA delta of this rank over the shared base (0: full fine-tune; default: the recipe's), at the LoRA learning rates unless the recipe names its own."),
           gate: str = typer.Option("enforce", help="Quality gate: 'enforce' (a version below it is registered, not current), 'report' (record the verdict only) or 'off'."),
           min_similarity: float = typer.Option(0.80, help="Gate: least mean speaker similarity of the evaluation sentences (measured: tasks/train/evaluate.py)."),
           max_wer: float = typer.Option(0.35, help="Gate: highest mean word error rate (English)."),
           force: bool = typer.Option(False, "--force", help="Train again uploads already trained into a version "
                                                            "(current or not); by default they are skipped.")):
    """Check, fine-tune and register one voice per speaker folder."""
    with handled():
        check_src(src)
        pretrained, base = base_choice(pretrained, tiny, model_version)
        check_pretrained(pretrained)
        rec = recipe_of(recipe)
        qc = {**qc_of(min_speech, asr_model), **({"allow_synthetic": True} if allow_synthetic else {})}
        if lora_rank is not None:
            rec["lora_rank"] = lora_rank
        gate_cfg = gate_of(gate, min_similarity, max_wer)
        quiet_logs()
        console.print(f"base model: {base}", highlight=False)
        from voicefleet.flows.enroll import enroll_batch

        with progress_bars():
            summary = enroll_batch(src, store, pretrained=pretrained, recipe=rec, num_gpus=gpus, num_cpus=cpus, qc=qc,
                                   gate=gate_cfg, workers=workers, force=force, model_version=model_version)
        raise typer.Exit(print_enroll(summary))

