"""What the CLI prints with: the consoles, quiet library logs, and progress bars fed by flows/progress.py."""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from voicefleet.flows import progress as progress_hook

console = Console(soft_wrap=True)  # paths and commands stay on one line, copyable
err = Console(stderr=True)


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
