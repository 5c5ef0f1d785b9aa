"""`voicefleet demo`: build a demo enrollment set, enroll it, render a script (flows/demo/run.py), print where."""
from __future__ import annotations

import time
from typing import Optional

import typer
from rich.table import Table

from .console import console, progress_bars, quiet_logs
from .enroll import print_enroll
from .exits import EXIT_INTERNAL, EXIT_OK, CLIError, handled
from .options import ModelVersionOpt, StoreOpt, check_pretrained, store_of
from .pretrained import base_choice
from .render import print_render


def demo(store: str = StoreOpt,
         speakers: int = typer.Option(3, min=1, max=6, help="Demo speakers (distinct voices from pip packages)."),
         lines: int = typer.Option(60, min=1, help="Script lines to render (each is watermarked and checked by "
                                    "ASR + speaker similarity on the CPU: a few seconds per line on 2 cores)."),
         pretrained: Optional[str] = typer.Option(None, help="Official pretrained folder (default: the one "
                                                  "`voicefleet pretrained pull` fetched, if any; else the tiny "
                                                  "random model)."),
         tiny: bool = typer.Option(False, "--tiny", help="Use the tiny random model even when pulled weights are "
                                   "there (fast; the audio is not speech)."),
         model_version: Optional[str] = ModelVersionOpt):
    """Build a demo enrollment set, enroll it, render a script, and print where everything is."""
    with handled():
        t0 = time.perf_counter()
        pretrained, base = base_choice(pretrained, tiny, model_version)
        check_pretrained(pretrained)
        quiet_logs()
        from voicefleet.flows.demo import run

        s = store_of(store)
        console.print(f"[bold]voicefleet demo[/] -> store {s.uri}")
        console.print(f"base model: {base}", highlight=False)
        with console.status("building the demo enrollment set (offline TTS voices from pip packages)..."):
            ids = run.upload_enrollment(s, speakers)
        console.print(f"enrollment set: {len(ids)} speakers ({', '.join(ids)}) at {s.url(run.ENROLL_KEY)}")
        console.print(f"quality gate: {run.gate_mode(pretrained)}" + ("" if pretrained else
                      " (report only: voices from the untrained tiny base cannot pass it; their figures are recorded)"))
        with progress_bars():
            summary = run.enroll(store, pretrained, model_version)
        enroll_code = print_enroll(summary)
        voices = run.enrolled_voices(summary)
        if not voices:
            raise CLIError("no demo voice was enrolled; see the table above", EXIT_INTERNAL)
        with progress_bars():
            rsum = run.render(store, voices, lines, pretrained, model_version)
        code = print_render(rsum)
        wall = time.perf_counter() - t0
        t = Table(title="demo summary", show_header=False)
        t.add_column("", style="bold", no_wrap=True)
        t.add_column("", overflow="fold")
        for k, v in [("base model", base), ("voices", ", ".join(voices)), ("lines", f"{rsum['lines']} ({rsum['ok']} ok)"),
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
                          "(no pretrained weights ship in the package): the pipeline is real, the audio is not "
                          "speech. `voicefleet pretrained pull` fetches the official GPT-SoVITS v2 weights (once, "
                          "over 1 GB); the demo then uses them.")
        raise typer.Exit(code if enroll_code == EXIT_OK else enroll_code)

