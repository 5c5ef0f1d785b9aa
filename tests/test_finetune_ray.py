"""Fine-tuning many voices on a local Ray cluster (tiny configs, demo TTS speakers):

three voices trained at once while a poisoned one fails alone; a training worker killed after an
epoch (the process exits) and its voice finishing from the checkpoint on a restarted worker,
every epoch run exactly once; the quality gate keeping a bad version from becoming current;
`voices rollback`; a LoRA voice rendering through the Ray Data render path.
"""
from __future__ import annotations

import csv
import io
import json
import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from voicefleet.flows.demo.enrollment import build_demo_enrollment
from voicefleet.flows.demo.script import build_demo_script
from voicefleet.tasks.cluster.runtime import Resources
from voicefleet.tasks.enroll.prepare import prepare_speaker, run_on_ray
from voicefleet.tasks.store.storage import Store
from voicefleet.tasks.train.checkpoint import state_key
from voicefleet.tasks.train.finetune import PLAIN_GPT, Recipe
from voicefleet.tasks.train.scheduler import train_voices
from voicefleet.tasks.voices.base_store import publish_base
from voicefleet.tasks.voices.registry import VoiceRegistry

pytestmark = pytest.mark.slow
OWNER = "user:demo"
RECIPE = Recipe(sovits_epochs=1, gpt_epochs=3, batch_size=4, sovits_lr=5e-4, gpt_lr=2e-3,
                min_items_per_epoch=8, **PLAIN_GPT).model_dump()
HALF_CPU = Resources(num_cpus=0.5)


@pytest.fixture(scope="module")
def ray_local(s3_server):
    import ray

    from voicefleet.tasks.cluster.runtime import ensure_ray

    started = not ray.is_initialized()
    os.environ["VOICEFLEET_DASHBOARD"] = "0"
    ensure_ray(num_cpus=2)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def prepared(ray_local, s3_server, tmp_path_factory):
    """Three demo speakers ingested and featurised into an S3 store; their `prepared` records."""
    root = tmp_path_factory.mktemp("enroll")
    build_demo_enrollment(root, n_speakers=3, clips_per_speaker=4)
    store = Store(s3_server.uri(f"ft-{uuid.uuid4().hex[:8]}"))
    for f in sorted(root.rglob("*")):
        if f.is_file():
            store.put_file(f, f"incoming/{f.relative_to(root).as_posix()}")
    speakers = sorted(p.name for p in root.iterdir() if p.is_dir())
    calls = [(s, (store.url("incoming"), store.uri, s, "tiny", "run1", {"min_speech_s": 5.0, "recommended_speech_s": 5.0}, None)) for s in speakers]
    out = run_on_ray(prepare_speaker, calls, Resources(num_cpus=1))
    assert all(p.status == "prepared" for p in out), [(p.speaker_id, p.reasons) for p in out]
    registry = VoiceRegistry(store)
    for p in out:
        registry.ensure_voice(p.speaker_id, p.owner, p.sharing)
    return store, publish_base(store, "tiny"), sorted(out, key=lambda p: p.speaker_id)


def poisoned_copy(store: Store, p, voice_id: str):
    """The speaker's dataset with semantic tokens outside the codebook, under another voice id."""
    table = pq.read_table(io.BytesIO(store.read_bytes(f"{p.run_prefix}/dataset.parquet")))
    bad = table.set_column(table.schema.get_field_index("semantic"), "semantic",
                           pa.array([[5000] * len(s) for s in table.column("semantic").to_pylist()], pa.list_(pa.int32())))
    prefix = f"voices/{voice_id}/runs/run1"
    buf = io.BytesIO()
    pq.write_table(bad, buf)
    store.write_bytes(f"{prefix}/dataset.parquet", buf.getvalue())
    store.write_bytes(f"{prefix}/ref.wav", store.read_bytes(f"{p.run_prefix}/ref.wav"))
    return p.model_copy(update={"speaker_id": voice_id, "run_prefix": prefix})


@pytest.fixture(scope="module")
def three_trained(prepared):
    store, base, voices = prepared
    poisoned = poisoned_copy(store, voices[0], "poisoned")
    results = train_voices(store.uri, [*voices, poisoned], base, RECIPE, {"mode": "off"}, HALF_CPU, workers=3)
    return {r.speaker_id: r for r in results}


def test_three_voices_train_at_once_and_a_poisoned_one_fails_alone(three_trained, prepared):
    store, _, voices = prepared
    assert sorted(three_trained) == sorted([v.speaker_id for v in voices] + ["poisoned"])
    bad = three_trained.pop("poisoned")
    assert bad.status == "failed" and "index" in bad.reasons[0].lower(), bad.reasons
    assert all(r.status == "trained" for r in three_trained.values()), {k: r.reasons for k, r in three_trained.items()}
    actors = {r.metrics["trained_on"]["actor"] for r in three_trained.values()}
    assert len(actors) == 3  # three workers trained the three voices side by side
    assert {r.metrics["base_reads_in_worker"] for r in three_trained.values()} == {1}  # base read once per worker
    for r in three_trained.values():
        assert r.metrics["gpt_loss"][-1] < r.metrics["gpt_loss"][0]
        assert store.exists(r.files["gpt"]) and store.exists(r.files["sovits"])
        assert not store.exists(state_key(r.run_prefix))  # the training state is dropped once the voice is stored
        assert r.evaluation["gate"] == {"mode": "off", "passed": True, "reasons": ["evaluation and gate are off"]}


@pytest.fixture(scope="module")
def resumed(prepared, tmp_path_factory):
    """One LoRA voice, gate enforced, whose worker process exits right after the checkpoint of epoch 2."""
    store, base, voices = prepared
    events = tmp_path_factory.mktemp("events") / "events.txt"
    marker = events.with_suffix(".killed")

    def hook(voice, event, epoch, _events=str(events), _marker=str(marker)):
        with open(_events, "a") as f:
            f.write(f"{os.getpid()} {event} {epoch}\n")
        if event == "checkpoint" and epoch == 2 and not os.path.exists(_marker):
            open(_marker, "w").close()
            os._exit(1)  # the worker process dies here, as on a preempted node

    voice = voices[1].model_copy(update={"run_prefix": f"voices/{voices[1].speaker_id}/runs/lora1"})
    for name in ("dataset.parquet", "ref.wav"):
        store.write_bytes(f"{voice.run_prefix}/{name}", store.read_bytes(f"{voices[1].run_prefix}/{name}"))
    recipe = dict(RECIPE, gpt_epochs=3, lora_rank=4, gpt_lr=1e-2)
    [result] = train_voices(store.uri, [voice], base, recipe, None, HALF_CPU, workers=1, hook=hook)
    lines = [line.split() for line in Path(events).read_text().splitlines()]
    return result, lines, marker


def test_killed_worker_resumes_from_its_checkpoint_without_repeating_epochs(resumed):
    result, lines, marker = resumed
    assert marker.exists(), "the hook should have killed the first worker"
    assert result.status == "trained", result.reasons
    assert result.metrics["attempts"] == 2 and len(result.metrics["worker_errors"]) == 1
    starts = [int(e) for _, ev, e in lines if ev == "epoch_start"]
    assert starts == [1, 2, 3, 4]  # every epoch ran exactly once, across two processes
    pids = {int(e): pid for pid, ev, e in lines if ev == "epoch_start"}
    assert pids[1] == pids[2] != pids[3] == pids[4]
    log = result.metrics["epoch_log"]
    assert [e["epoch"] for e in log] == [1, 2, 3, 4] and result.metrics["resumed_from"] == [2]
    assert log[1]["pid"] != log[2]["pid"]


def test_new_version_is_evaluated_on_fixed_sentences_with_figures_and_clips_stored(resumed, prepared):
    store = prepared[0]
    ev = resumed[0].evaluation
    assert ev["language"] == "en" and len(ev["sentences"]) == 3 and len(ev["clips"]) == 3
    assert all(store.exists(k) for k in ev["clips"]) and resumed[0].files["eval"] == ev["clips"][0]
    assert all("transcript" in s and 0 <= s["wer"] for s in ev["sentences"]) and ev["wer"] is not None
    assert -1 <= ev["similarity"] < 0.75  # a tiny random-weight voice does not sound like its speaker
    assert ev["gate"]["mode"] == "enforce" and not ev["gate"]["passed"]


def test_gate_keeps_a_bad_version_from_becoming_current_and_rollback_restores(prepared, three_trained, resumed,
                                                                             monkeypatch):
    from voicefleet.flows.cli import app
    from voicefleet.flows.enroll import register

    store, _, voices = prepared
    voice = voices[1].speaker_id
    good, bad = three_trained[voice], resumed[0]
    registry = VoiceRegistry(store)
    [first] = register.fn(store.uri, [good], RECIPE)
    assert first.status == "accepted" and registry.get(voice).current_version == first.voice_version
    assert not bad.evaluation["gate"]["passed"] and bad.evaluation["gate"]["mode"] == "enforce"
    [held] = register.fn(store.uri, [bad], RECIPE)

    record = registry.get(voice)
    assert held.status == "gated" and "below the quality gate: speaker similarity" in held.reasons[0]
    assert record.versions == [first.voice_version, held.voice_version]
    assert record.current_version == first.voice_version and record.status == "ready"
    assert f"version {held.voice_version} not made current" in record.status_reason
    v = registry.version(voice, held.voice_version)
    assert v.base_model == "tiny-random-v1" and v.pipeline_version and v.recipe == RECIPE and "lora" in v.files

    runner = CliRunner()
    monkeypatch.setenv("VOICEFLEET_LOCAL_MODE", "1")   # a single-user machine: --as is the owner (issue 23)
    monkeypatch.delenv("VOICEFLEET_PRINCIPAL_KEY", raising=False)
    owner = ["--as", record.owner]
    out = runner.invoke(app, ["voices", "rollback", voice, "--to", str(held.voice_version), "--store", store.uri, *owner])
    assert out.exit_code == 4 and "gate" in out.output, out.output   # a gate-failed version only when asked for
    out = runner.invoke(app, ["voices", "rollback", voice, "--to", str(held.voice_version), "--store", store.uri, *owner,
                              "--allow-gate-failed"])
    assert out.exit_code == 0, out.output
    assert registry.get(voice).current_version == held.voice_version
    out = runner.invoke(app, ["voices", "rollback", voice, "--store", store.uri, *owner])
    assert out.exit_code == 0 and registry.get(voice).current_version == first.voice_version, out.output
    out = runner.invoke(app, ["voices", "rollback", voice, "--to", "9", "--store", store.uri, *owner])
    assert out.exit_code == 3 and "has no version 9" in out.output
    shown = runner.invoke(app, ["voices", "show", voice, "--store", store.uri])
    assert shown.exit_code == 0
    versions = json.loads(shown.output)["versions"]
    assert [v["kind"] for v in versions] == ["full", "lora"] and versions[1]["gate"]["passed"] is False


def test_lora_voice_renders_through_the_render_path(prepared, resumed):
    from voicefleet.flows.enroll import register
    from voicefleet.tasks.render.index_read import read_index
    from voicefleet.tasks.render.pipeline import render_lines
    from voicefleet.tasks.render.plan import plan_script, write_todo
    from voicefleet.tasks.render.settings import RenderSettings

    store, _, _ = prepared
    lora = resumed[0]
    voice = "lora-voice"
    VoiceRegistry(store).ensure_voice(voice, OWNER)
    report_only = {**lora.evaluation, "gate": {**lora.evaluation["gate"], "mode": "report"}}
    [reg] = register.fn(store.uri, [lora.model_copy(update={"speaker_id": voice, "evaluation": report_only})], RECIPE)
    version = VoiceRegistry(store).version(voice, reg.voice_version)
    assert "gpt" not in version.files and store.exists(version.files["lora"])
    delta = len(store.read_bytes(version.files["lora"]))
    full = len(store.read_bytes(version.files["base_gpt"])) + len(store.read_bytes(version.files["base_sovits"]))
    assert delta < full / 2

    rows = build_demo_script([voice], 4)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    store.write_text("scripts/lora.csv", buf.getvalue())
    plan = plan_script(store.url("scripts/lora.csv"), store, OWNER)  # the render flow's own plan + work list
    try:
        assert plan.decisions[voice].allowed and plan.decisions[voice].version == reg.voice_version
        todo = write_todo(plan, store, "lora-job", run=1)
        counts = render_lines(store, "lora-job", todo.keys, plan.decisions, RenderSettings(batch_size=4, lines_per_shard=4),
                              run=1)
    finally:
        plan.cleanup()
    assert (counts.ok, counts.failed, counts.refused) == (4, 0, 0), counts.failures
    index = read_index(store, "lora-job").to_pylist()
    assert {r["voice_version"] for r in index} == {str(reg.voice_version)} and all(r["duration_s"] > 0 for r in index)
