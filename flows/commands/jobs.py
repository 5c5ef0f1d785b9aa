"""`voicefleet jobs ...`: show, compact and report a render job."""
from __future__ import annotations

import typer
from rich.table import Table

from .console import console
from .exits import handled
from .options import StoreOpt, UnsafeSingleWriterOpt, store_of

app = typer.Typer(help="Inspect render jobs.", no_args_is_help=True)


@app.command("show")
def jobs_show(job: str = typer.Argument(..., help="Render job id."), store: str = StoreOpt,
              worst: int = typer.Option(10, min=0, help="How many of the worst lines to list.")):
    """Status and counts of a render job (the current script's lines, by distinct line), audio hours and the
    worst lines; lines edited since they were rendered and lines no longer in the script are counted apart."""
    with handled():
        from voicefleet.tasks.render.job_index import job_state, job_totals, worst_lines
        from voicefleet.tasks.render.job_paths import index_glob, read_job

        s = store_of(store)
        meta = read_job(s, job)
        totals = job_totals(s, job)
        t = Table(title=f"job {job}")
        t.add_column("field")
        t.add_column("value")
        for k, v in [("status", job_state(meta, totals)), ("script", meta.get("script")), ("principal", meta.get("principal")),
                     ("lines", meta.get("lines")),
                     ("script lines", "-" if totals.script_lines is None else totals.script_lines),
                     ("indexed", totals.lines_indexed),
                     ("stale (edited; a rerun renders)", totals.stale),
                     ("not in script", totals.not_in_script), ("ok", totals.ok),
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


@app.command("compact")
def jobs_compact(job: str = typer.Argument(..., help="Render job id."), store: str = StoreOpt,
                 unsafe_single_writer: bool = UnsafeSingleWriterOpt):
    """Rewrite a job's index parts as a few large files and delete tars no row points at."""
    with handled():
        from voicefleet.tasks.render.job_index import compact_job

        done = compact_job(store_of(store), job, unsafe_single_writer=unsafe_single_writer)
        console.print(f"job {job}: index files {done.files_before} -> {done.files_after} "
                      f"({done.written} written), orphaned tars removed: {len(done.orphans)}")


@app.command("report")
def jobs_report(job: str = typer.Argument(..., help="Render job id."), store: str = StoreOpt,
                worst: int = typer.Option(20, min=1, max=500, help="Worst lines shown with audio players.")):
    """Write report.html beside the job's index: counts, per-voice throughput, histograms, worst lines."""
    with handled():
        from voicefleet.tasks.render.job_report import write_report
        from voicefleet.tasks.store.ids import safe_id

        safe_id(job, "job id")
        console.print(f"report: {write_report(store_of(store), job, worst=worst)}")

