"""Voice affinity on real Ray (issue 22): the work list's parts are one voice's lines each, and one
synthesis actor takes a part whole, so a script of many small voices loads each voice on one actor,
not on every actor, and each actor's batches hold one voice's lines."""
from __future__ import annotations

import csv
import json
import os

import pytest
from render_voices import register_tiny_voices

from voicefleet.tasks.render.index_read import read_index
from voicefleet.tasks.safety.principal import Principal
from voicefleet.tasks.store.storage import Store

OWNER = "user:demo"
VOICES = [f"v{i}" for i in range(6)]


@pytest.fixture(scope="module")
def ray_cluster(s3_server):
    from voicefleet.tasks.cluster.runtime import ensure_ray

    os.environ["VOICEFLEET_DASHBOARD"] = "0"
    ensure_ray(num_cpus=2)


@pytest.mark.slow
def test_each_voice_is_rendered_by_one_actor_when_the_script_has_many_small_voices(ray_cluster, tmp_path):
    from voicefleet.flows.render import render_as

    store = Store(str(tmp_path / "store"))
    register_tiny_voices(store, VOICES, OWNER)
    path = tmp_path / "s.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["line_id", "voice_id", "text", "language"])
        w.writeheader()
        w.writerows({"line_id": f"{v}-{i}", "voice_id": v, "text": f"Line {i} for {v}.", "language": "en"}
                    for i in range(3) for v in VOICES)   # interleaved in the script: the plan groups them
    res = render_as(Principal(OWNER, "local"), str(path), store.uri, job_id="aff", actors=2, num_cpus=0.5,
                    batch_size=2, qc={"mode": "off"})
    assert res["status"] == "complete" and res["ok"] == 18
    rows = read_index(store, "aff").to_pylist()
    workers = {}
    for r in rows:
        workers.setdefault(r["voice_id"], set()).add(json.loads(r["attempt_log"])[-1]["worker"])
    assert all(len(w) == 1 for w in workers.values()), workers   # 6 voice loads, not up to 12
    assert len(set().union(*workers.values())) == 2               # and both actors worked
    calls = [c["batch_lines"] for r in rows for c in json.loads(r["attempt_log"])[-1]["synthesis_calls"]]
    assert max(calls) == 2 and sum(c == 2 for c in calls) >= 12   # full batches of one voice


def test_an_actor_renders_a_part_batch_by_batch_and_times_every_stage(local_store, tmp_path, monkeypatch):
    """In process (no Ray): a part of 5 lines yields batches of 2, 2, 1 lines, and each stage of the work
    (synthesis, post-processing + QC, watermark, FLAC encoding) is counted in the stage metric, so the
    dashboard shows where the actor's time goes, not synthesis alone."""
    import pyarrow as pa

    from voicefleet.tasks.render.line_qc import QCConfig
    from voicefleet.tasks.render.metrics import RenderMetrics
    from voicefleet.tasks.render.plan import plan_script, write_todo
    from voicefleet.tasks.render.render_actor import SynthesizeLines
    from voicefleet.tasks.render.settings import RenderSettings

    busy: dict[str, float] = {}
    monkeypatch.setattr(RenderMetrics, "stage", lambda self, name, s: busy.update({name: busy.get(name, 0.0) + s}))
    store = local_store
    register_tiny_voices(store, ["ann"], OWNER)
    path = tmp_path / "s.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["line_id", "voice_id", "text", "language"])
        w.writeheader()
        w.writerows({"line_id": f"l{i}", "voice_id": "ann", "text": f"Line {i}.", "language": "en"} for i in range(5))
    plan = plan_script(str(path), store, OWNER)
    todo = write_todo(plan, store, "j", run=1, batch_size=8)   # one part of 5 lines
    assert len(todo.keys) == 1
    actor = SynthesizeLines(store.uri, RenderSettings(batch_size=2, qc=QCConfig(mode="off")), plan.decisions, run=1)
    batches = list(actor(pa.table({"part": todo.keys})))
    assert [b.num_rows for b in batches] == [2, 2, 1]
    assert all(s == "ok" for b in batches for s in b.column("status").to_pylist())
    assert set(busy) == {"synthesis", "post_qc", "watermark", "encode"} and all(v > 0 for v in busy.values())
    plan.cleanup()
