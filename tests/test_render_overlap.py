"""The render actor checks and encodes one batch on its finishing thread while its main thread
synthesises the next (issue 22: the accelerator does not wait for CPU work), and what it delivers is
the same as with the overlap off: one row per line, same seeds, same audio."""
from __future__ import annotations

import csv
import io
import threading

import pyarrow as pa
import pytest
import soundfile as sf
from render_voices import register_tiny_voices

OWNER = "user:demo"


def _actor_and_part(store, tmp_path, lines: int, **settings):
    from voicefleet.tasks.render.line_qc import QCConfig
    from voicefleet.tasks.render.plan import plan_script, write_todo
    from voicefleet.tasks.render.render_actor import SynthesizeLines
    from voicefleet.tasks.render.settings import RenderSettings

    register_tiny_voices(store, ["ann"], OWNER)
    path = tmp_path / "s.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["line_id", "voice_id", "text", "language"])
        w.writeheader()
        w.writerows({"line_id": f"l{i}", "voice_id": "ann", "text": f"Line {i} of the part.", "language": "en"}
                    for i in range(lines))
    plan = plan_script(str(path), store, OWNER)
    todo = write_todo(plan, store, "j", run=1, batch_size=8)
    assert len(todo.keys) == 1   # one part: its batches follow each other on one actor
    actor = SynthesizeLines(store.uri, RenderSettings(batch_size=2, qc=QCConfig(mode="off"), **settings),
                            plan.decisions, run=1)
    return actor, pa.table({"part": todo.keys}), plan


def _delivered(batches: list[pa.Table]) -> list[tuple]:
    rows = [r for b in batches for r in b.to_pylist()]
    return [(r["line_id"], r["status"], r["seed"], r["attempts"], sf.read(io.BytesIO(r["flac"]))[0].tobytes())
            for r in rows]


def test_a_batch_is_finished_on_another_thread_while_the_next_one_synthesises(local_store, tmp_path, monkeypatch):
    """Batch 1's watermark (finishing thread) waits for batch 2's synthesis to begin (main thread): with
    the overlap on it sees it begin; the model itself is never used by two threads at once."""
    from voicefleet.tasks.render import render_actor

    actor, part, plan = _actor_and_part(local_store, tmp_path, 5, post_overlap=1)
    synthesize, mark = actor.synth.synthesize_many, render_actor.mark_line
    second_started, inside, seen = threading.Event(), [0], []

    def counting_synthesize(work):
        inside[0] += 1
        assert inside[0] == 1, "two threads in the model at once"
        try:
            if len(seen) >= 1:   # the first call was batch 1's; this one is batch 2's
                second_started.set()
            seen.append(threading.current_thread().name)
            return synthesize(work)
        finally:
            inside[0] -= 1

    marked = []

    def waiting_mark(wav, sr, post):
        marked.append((threading.current_thread().name, second_started.wait(timeout=60)))
        return mark(wav, sr, post)

    monkeypatch.setattr(actor.synth, "synthesize_many", counting_synthesize)
    monkeypatch.setattr(render_actor, "mark_line", waiting_mark)
    batches = list(actor(part))
    assert [b.num_rows for b in batches] == [2, 2, 1]
    assert set(seen) == {threading.main_thread().name}   # first attempts: the actor's main thread
    assert all(name.startswith("render-finish") for name, _ in marked)
    assert marked[0][1] and marked[1][1]   # batch 1 was still being finished when batch 2 began synthesis
    plan.cleanup()


@pytest.mark.parametrize("overlap", [0, 2])
def test_the_overlap_delivers_what_the_serial_actor_delivers(local_store, tmp_path, overlap):
    from voicefleet.tasks.store.storage import Store

    actor, part, plan = _actor_and_part(local_store, tmp_path, 7, post_overlap=1)
    with_overlap = _delivered(list(actor(part)))
    plan.cleanup()
    (tmp_path / "o").mkdir()
    actor, part, plan = _actor_and_part(Store(str(tmp_path / "o" / "store")), tmp_path / "o", 7, post_overlap=overlap)
    assert _delivered(list(actor(part))) == with_overlap   # same lines, order, seeds and audio
    assert sorted(r[0] for r in with_overlap) == [f"l{i}" for i in range(7)]
    plan.cleanup()


def test_post_overlap_is_checked():
    from voicefleet.tasks.render.settings import RenderSettings

    with pytest.raises(ValueError, match="post_overlap must be 0 or more"):
        RenderSettings(post_overlap=-1)
