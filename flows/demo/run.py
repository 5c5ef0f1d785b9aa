"""The demo, step by step: an enrollment set from the pip voices, enrolled, then a script rendered.

    upload_enrollment   build the enrollment set (flows/demo/enrollment.py) and put it in the store
    enroll              the enroll_batch flow with the demo's choices (recipe, QC minimum, gate mode)
    render              a generated script (flows/demo/script.py) rendered by the render_script flow

`voicefleet demo` (flows/commands/demo.py) calls these in order and prints between them.
"""
from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path

from voicefleet.tasks.enroll.speech_checks import QCConfig
from voicefleet.tasks.store.storage import Store
from voicefleet.tasks.train.evaluate import Gate
from voicefleet.tasks.train.finetune import Recipe

from .enrollment import build_demo_enrollment
from .script import build_demo_script

OWNER = "user:demo"  # who owns the demo's voices and renders them
ENROLL_KEY = "demo/enroll"
SCRIPT_KEY = "demo/script.csv"


def upload_enrollment(store: Store, speakers: int, clips_per_speaker: int = 6) -> list[str]:
    """Write the demo enrollment set under `demo/enroll/` in the store; returns the speaker ids."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "enroll"
        ids = build_demo_enrollment(root, n_speakers=speakers, clips_per_speaker=clips_per_speaker)
        for f in sorted(root.rglob("*")):
            if f.is_file():
                store.put_file(f, f"{ENROLL_KEY}/{f.relative_to(root).as_posix()}")
    return ids


def gate_mode(pretrained: str | None) -> str:
    """The tiny random base cannot make speech, so its voices would all fail the quality gate: without
    pretrained weights the demo records the gate's verdict but does not enforce it."""
    return "enforce" if pretrained else "report"


def enroll(store: str, pretrained: str | None, model_version: str | None = None) -> dict:
    """Enroll the uploaded set: the short demo recipe on the tiny base, the demo's lower speech minimum
    (its six short takes per voice hold ~17 s of speech), the gate in `gate_mode`."""
    from voicefleet.flows.enroll import enroll_batch

    recipe = (Recipe.demo() if not pretrained else Recipe()).model_dump()
    gate = Gate(mode=gate_mode(pretrained), max_wer=0.35).model_dump()
    return enroll_batch(Store(store).url(ENROLL_KEY), store, pretrained=pretrained, recipe=recipe,
                        qc=QCConfig.demo().model_dump(exclude_defaults=True), gate=gate, model_version=model_version)


def enrolled_voices(summary: dict) -> list[str]:
    """The voices an enrollment summary says can be rendered."""
    return [r["speaker"] for r in summary["speakers"] if r["status"] in ("accepted", "unchanged")]


def render(store: str, voices: list[str], lines: int, pretrained: str | None, model_version: str | None = None) -> dict:
    """Write a `lines`-line script for `voices` to `demo/script.csv` and render it as the demo owner."""
    from voicefleet.flows.render import render_as
    from voicefleet.tasks.safety.principal import Principal

    rows = build_demo_script(voices, lines)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    s = Store(store)
    s.write_text(SCRIPT_KEY, buf.getvalue())
    # the demo names no one from outside: it renders the voices it just enrolled, as their owner
    return render_as(Principal(OWNER, "demo"), s.url(SCRIPT_KEY), store, pretrained=pretrained,
                     model_version=model_version)
