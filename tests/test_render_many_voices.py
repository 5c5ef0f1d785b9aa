"""Many LoRA voices in one synthesis batch (issue 22): the work list puts voices over one base into the
same part, the actor batches their lines together (each GPT row with its own adapter, SoVITS per
voice), and every line is what it is when its voice is rendered alone."""
from __future__ import annotations

import csv
import io

import pyarrow as pa
import soundfile as sf
from render_voices import register_tiny_lora_voices

OWNER = "user:demo"
VOICES = [f"lv{i}" for i in range(8)]


def _render(store, tmp_path, **settings):
    from voicefleet.tasks.render.line_qc import QCConfig
    from voicefleet.tasks.render.plan import plan_script, write_todo
    from voicefleet.tasks.render.render_actor import SynthesizeLines
    from voicefleet.tasks.render.settings import RenderSettings

    path = tmp_path / "s.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["line_id", "voice_id", "text", "language"])
        w.writeheader()
        w.writerows({"line_id": f"{v}-{i}", "voice_id": v, "text": f"Line {i} for {v}.", "language": "en"}
                    for i in range(4) for v in VOICES)   # interleaved in the script
    s = RenderSettings(qc=QCConfig(mode="off"), max_tokens_per_phone=2.5, **settings)
    plan = plan_script(str(path), store, OWNER)
    try:
        todo = write_todo(plan, store, f"j{s.voice_cache}", run=1, batch_size=s.batch_size)
        actor = SynthesizeLines(store.uri, s, plan.decisions, run=1)
        calls = []
        many = actor.synth.synthesize_many
        actor.synth.synthesize_many = lambda work: calls.append((len(work), sum(len(ls) for _, ls in work))) or many(work)
        rows = [r for b in actor(pa.table({"part": todo.keys})) for r in b.to_pylist()]
    finally:
        plan.cleanup()
    return todo, rows, calls


def test_lora_voices_over_one_base_share_batches_and_render_as_each_alone(local_store, tmp_path):
    register_tiny_lora_voices(local_store, VOICES, OWNER)
    todo, rows, calls = _render(local_store, tmp_path, batch_size=16, voice_cache=4)
    assert len(todo.keys) == 2                 # 32 lines of 8 voices: two parts of four voices, not 8 parts
    assert calls == [(4, 16), (4, 16)]         # each part one model call: 16 rows of four voices
    assert sorted(r["line_id"] for r in rows) == sorted(f"{v}-{i}" for v in VOICES for i in range(4))
    assert all(r["status"] == "ok" for r in rows)

    (tmp_path / "alone").mkdir()
    _, alone, alone_calls = _render(local_store, tmp_path / "alone", batch_size=16, voice_cache=1)
    assert alone_calls == [(1, 4)] * 8         # one voice per batch
    audio = {r["line_id"]: (r["seed"], sf.read(io.BytesIO(r["flac"]))[0]) for r in rows}
    for r in alone:
        seed, wav = audio[r["line_id"]]
        assert r["seed"] == seed and (wav == sf.read(io.BytesIO(r["flac"]))[0]).all(), r["line_id"]
    voices = {r["line_id"].split("-")[0]: sf.read(io.BytesIO(r["flac"]))[0] for r in rows if r["line_id"].endswith("-0")}
    assert len({w.tobytes() for w in voices.values()}) == len(VOICES)   # the adapters differ per voice


def test_a_batch_holds_at_most_voice_cache_voices():
    from voicefleet.tasks.render.render_actor import SynthesizeLines
    from voicefleet.tasks.render.settings import RenderSettings

    actor = SynthesizeLines.__new__(SynthesizeLines)   # batching alone, no models
    actor.settings = RenderSettings(batch_size=5, voice_cache=2)
    lines = [{"voice_id": v, "voice_version": "1"} for v in "aaabbbcd"]
    assert [[r["voice_id"] for r in b] for b in actor.batches(lines)] == [list("aaabb"), list("bc"), list("d")]
