"""End to end on real Ray, Prefect and object storage: enroll -> render, on a local folder and on
the S3 server; a render killed midway (SIGKILL of the process) and resumed.

Voices come from pip-shipped TTS packages (flows/demo/); models are the tiny config.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from render_checks import assert_render_complete

from voicefleet.flows.demo.enrollment import build_demo_enrollment
from voicefleet.flows.demo.script import build_demo_script
from voicefleet.tasks.enroll.speech_checks import QCConfig
from voicefleet.tasks.render.index_read import read_index
from voicefleet.tasks.render.job_paths import index_glob, job_prefix
from voicefleet.tasks.safety.principal import Principal
from voicefleet.tasks.store.storage import Store
from voicefleet.tasks.train.finetune import Recipe
from voicefleet.tasks.voices.registry import VoiceRegistry

pytestmark = pytest.mark.slow
DEMO_QC = QCConfig.demo().model_dump(exclude_defaults=True)  # six short takes per voice: the demo's own minimum
OWNER = "user:demo"
REPORT_GATE = {"mode": "report"}


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """One local Ray cluster for the session, started after the S3 env is set (workers inherit it)."""
    import ray

    from voicefleet.tasks.cluster.runtime import ensure_ray

    os.environ["VOICEFLEET_DASHBOARD"] = "0"
    ensure_ray(num_cpus=2)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="session")
def enrollment_src(tmp_path_factory) -> Path:
    """Two demo speakers plus two broken ones (no consent; audio that is not audio)."""
    root = tmp_path_factory.mktemp("enroll")
    build_demo_enrollment(root, n_speakers=2, clips_per_speaker=6)
    good = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))[0]
    shutil.copytree(good, root / "no-consent")
    (root / "no-consent" / "consent.json").unlink()
    junk = root / "not-audio"
    shutil.copytree(good, junk)
    for f in junk.glob("take*"):
        f.write_text("this is a text file, not audio")
    consent = json.loads((junk / "consent.json").read_text())
    (junk / "consent.json").write_text(json.dumps({**consent, "speaker_id": "not-audio"}))
    return root


def upload(src: Path, store: Store, prefix: str) -> str:
    for f in sorted(src.rglob("*")):
        if f.is_file():
            store.put_file(f, f"{prefix}/{f.relative_to(src).as_posix()}")
    return store.url(prefix)


def write_script(store: Store, key: str, rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    store.write_text(key, buf.getvalue())
    return store.url(key)


@pytest.fixture(scope="session")
def enrolled(ray_cluster, enrollment_src, s3_server, tmp_path_factory):
    """Enroll once per store kind; returns {kind: (store, summary)}."""
    from voicefleet.flows.enroll import enroll_batch

    out = {}
    for kind in ("local", "s3"):
        store = Store(str(tmp_path_factory.mktemp("store"))) if kind == "local" else Store(s3_server.uri(f"e2e-{os.getpid()}"))
        src = upload(enrollment_src, store, "incoming")
        # tiny random-weight voices cannot pass the quality gate: record its verdict, don't enforce it
        summary = enroll_batch(src, store.uri, recipe=Recipe.demo().model_dump(), qc=DEMO_QC, gate=REPORT_GATE)
        out[kind] = (store, summary)
    return out


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_enroll_then_render(enrolled, kind):
    from voicefleet.flows.render import render_as

    store, summary = enrolled[kind]
    status = {r["speaker"]: r for r in summary["speakers"]}
    voices = sorted(s for s, r in status.items() if r["status"] == "accepted")
    assert len(voices) == 2, status
    assert status["no-consent"]["status"] == "rejected" and "consent.json missing" in status["no-consent"]["reasons"]
    assert status["not-audio"]["status"] == "rejected" and "not a recognised audio format" in status["not-audio"]["reasons"]
    registry = VoiceRegistry(store)
    for v in voices:
        rec = registry.get(v)
        assert rec.status == "ready" and rec.current_version == 1 and rec.owner == OWNER
        version = registry.version(v)
        assert version.untrained and store.exists(version.files["gpt"]) and store.exists(version.files["eval"])
        gate = version.evaluation["gate"]
        assert gate["mode"] == "report" and not gate["passed"] and version.evaluation["similarity"] < 0.75
        assert version.pipeline_version.startswith("voicefleet ") and version.base_model == "tiny-random-v1"

    rows = build_demo_script(voices, 14)
    rows.append({"line_id": "ghost-1", "voice_id": "ghost", "text": "Nobody owns this voice.", "language": "en"})
    rows.append({"line_id": "empty-1", "voice_id": voices[0], "text": "  ", "language": "en"})
    rows.append({"line_id": "klingon-1", "voice_id": voices[1], "text": "Qapla!", "language": "tlh"})
    script = write_script(store, "scripts/s1.csv", rows)
    res = render_as(Principal(OWNER, "local"), script, store.uri, lines_per_shard=5, batch_size=8)
    assert res["status"] == "complete" and res["lines"] == 17
    # empty text and an unsupported language are refused by the plan, before any compute
    assert (res["ok"], res["failed"], res["refused"]) == (14, 0, 3)
    table = assert_render_complete(store, res["job_id"], [r["line_id"] for r in rows])
    by_id = {r["line_id"]: r for r in table.to_pylist()}
    assert "unknown voice" in by_id["ghost-1"]["error"]
    assert by_id["empty-1"]["status"] == "refused" and "text is empty" in by_id["empty-1"]["error"]
    assert by_id["klingon-1"]["status"] == "refused" and "unsupported language 'tlh'" in by_id["klingon-1"]["error"]
    assert all(r["attempts"] == 1 and r["run"] == 1 for r in by_id.values() if r["status"] == "ok")
    assert len(store.glob(f"{job_prefix(res['job_id'])}/index/*.parquet")) == 1  # compacted at the end
    assert len({r["shard"] for r in table.to_pylist() if r["shard"]}) >= 3  # 14 ok lines, 5 lines per shard
    assert sorted(store.glob(f"{job_prefix(res['job_id'])}/shards/*.tar")) == sorted(
        f"{job_prefix(res['job_id'])}/{r['shard']}" for r in {r["shard"]: r for r in by_id.values() if r["shard"]}.values())

    # another principal is refused for every line, before any compute
    other = render_as(Principal("user:mallory", "local"), script, store.uri, job_id="mallory-job")
    assert other["ok"] == 0 and other["refused"] == 17

    # DuckDB and pyarrow read the index as it is
    if store.is_local:
        n = duckdb.sql(f"select count(*) from read_parquet('{index_glob(store, res['job_id'])}')").fetchall()[0][0]
    else:
        arrow = read_index(store, res["job_id"])  # noqa: F841 — DuckDB reads the Arrow table by name
        n = duckdb.sql("select count(*) from arrow").fetchall()[0][0]
    assert n == 17
    assert read_index(store, res["job_id"]).num_rows == 17

    # the webdataset library reads a shard; one line by a single ranged read equals the shard's audio
    import webdataset as wds

    ok = [r for r in table.to_pylist() if r["status"] == "ok"]
    row = ok[0]
    shard_key = f"{job_prefix(res['job_id'])}/{row['shard']}"
    local_tar = Path(store.url(shard_key)) if store.is_local else None
    if local_tar is None:
        local_tar = Path(os.environ.get("TMPDIR", "/tmp")) / f"shard-{os.getpid()}.tar"
        local_tar.write_bytes(store.read_bytes(shard_key))
    samples = {s["__key__"]: s for s in wds.WebDataset(str(local_tar), shardshuffle=False)}
    assert row["line_id"] in samples
    from_wds, sr = sf.read(io.BytesIO(samples[row["line_id"]]["flac"]), dtype="float32")
    ranged, sr2 = sf.read(io.BytesIO(store.read_range(shard_key, row["offset"], row["size"])), dtype="float32")
    assert sr == sr2 == 32000 and np.array_equal(from_wds, ranged) and len(ranged) == row["num_samples"]


def test_rerun_enrollment_does_no_work_twice(enrolled, enrollment_src):
    from voicefleet.flows.enroll import enroll_batch

    store, _ = enrolled["local"]
    again = enroll_batch(store.url("incoming"), store.uri, recipe=Recipe.demo().model_dump(), qc=DEMO_QC,
                         gate=REPORT_GATE)
    status = {r["speaker"]: r["status"] for r in again["speakers"]}
    assert sorted(v for v, s in status.items() if s == "unchanged") == sorted(
        v for v in status if v not in ("no-consent", "not-audio"))
    assert all(VoiceRegistry(store).get(v).current_version == 1 for v, s in status.items() if s == "unchanged")


def _index_parts(store: Store, job: str) -> dict[str, bytes]:
    return {k: store.read_bytes(k) for k in store.glob(f"{job_prefix(job)}/index/*.parquet")}


def test_render_killed_midway_resumes_without_duplicates(enrolled, ray_cluster, tmp_path):
    store, summary = enrolled["local"]
    voices = sorted(r["speaker"] for r in summary["speakers"] if r["status"] == "accepted")
    rows = build_demo_script(voices, 60, seed=7)
    script = write_script(store, "scripts/kill.csv", rows)
    job = "kill-test"
    cmd = [sys.executable, "-m", "voicefleet.flows.cli", "render", script, "--as", OWNER, "--local", "--store", store.uri,
           "--job", job, "--lines-per-shard", "4", "--batch-size", "4"]
    env = dict(os.environ, RAY_ADDRESS=ray_cluster, VOICEFLEET_LOCAL_MODE="1")  # `--as`: a single-user machine
    env.pop("VOICEFLEET_PRINCIPAL_KEY", None)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and len(store.glob(f"{job_prefix(job)}/index/*.parquet")) < 2:
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # a real kill of the driver process, mid-job
    proc.wait()
    before = _index_parts(store, job)
    done_before = {r["line_id"] for k in before for r in pq.read_table(io.BytesIO(before[k])).to_pylist()}
    assert 0 < len(done_before) < len(rows), "the kill should land midway"

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    table = assert_render_complete(store, job, [r["line_id"] for r in rows])
    assert set(table.column("status").to_pylist()) == {"ok"}
    # finished work is kept: the same bytes at the same place, still from the first run
    rows_before = {r["line_id"]: r for k in before for r in pq.read_table(io.BytesIO(before[k])).to_pylist()}
    final = {r["line_id"]: r for r in table.to_pylist()}
    for line_id, r in rows_before.items():
        got = final[line_id]
        assert (got["sha256"], got["shard"], got["offset"], got["run"]) == (r["sha256"], r["shard"], r["offset"], 1)
    new_ids = [line_id for line_id, r in final.items() if r["run"] == 2]
    assert not set(new_ids) & done_before  # no finished line rendered twice
    assert sorted(new_ids) == sorted(set(r["line_id"] for r in rows) - done_before)
    assert len(store.glob(f"{job_prefix(job)}/index/*.parquet")) == 1  # compacted when the job finished
    # shards referenced by the index are whole tars
    for shard in set(table.column("shard").to_pylist()):
        with tarfile.open(fileobj=io.BytesIO(store.read_bytes(f"{job_prefix(job)}/{shard}"))) as tf:
            assert len(tf.getmembers()) % 2 == 0


def test_render_normalises_loudness_meets_target_length_checks_every_line_and_writes_a_report(enrolled):
    """Post-processing + per-line QC on the real pipeline. The demo voices come from an untrained base
    model, so QC "auto" reports only (their audio fails every check), and "enforce" retries with new
    seeds and then fails the line with its reasons."""
    from voicefleet.flows.render import render_as
    from voicefleet.tasks.render.line_qc import retry_seed
    from voicefleet.tasks.render.plan import line_seed

    store, summary = enrolled["local"]
    voices = sorted(r["speaker"] for r in summary["speakers"] if r["status"] == "accepted")
    rows = [dict(r, target_seconds="") for r in build_demo_script(voices, 4, seed=3)]
    script = write_script(store, "scripts/qc.csv", rows)
    res = render_as(Principal(OWNER, "local"), script, store.uri, job_id="qc-auto")
    assert res["ok"] == 4 and res["qc"]["mode"] == "auto" and res["qc_checked"] == 4
    table = assert_render_complete(store, "qc-auto", [r["line_id"] for r in rows]).to_pylist()
    for r in table:
        assert abs(r["loudness_lufs"] - (-23.0)) <= 1.0 and r["true_peak_dbtp"] <= -1.0, r
        assert r["attempts"] == 1 and isinstance(r["qc_passed"], bool) and r["wer"] is not None
        assert len(json.loads(r["attempt_log"])) == 1
    assert Path(res["report"]).is_file() and res["report"].endswith("renders/qc-auto/report.html")

    # a target 10 % shorter than the line came out: met by the model's speed, then the bounded stretch
    first = next(r for r in table if r["line_id"] == rows[0]["line_id"])
    rows[0]["target_seconds"] = str(round(first["duration_s"] * 0.9, 2))
    script = write_script(store, "scripts/qc-target.csv", rows)
    res = render_as(Principal(OWNER, "local"), script, store.uri, job_id="qc-enforce",
                    qc={"mode": "enforce", "retries": 1})
    table = {r["line_id"]: r for r in assert_render_complete(store, "qc-enforce", [r["line_id"] for r in rows]).to_pylist()}
    timed = table[rows[0]["line_id"]]
    log = json.loads(timed["attempt_log"])
    assert timed["target_seconds"] == float(rows[0]["target_seconds"])
    assert abs(log[-1]["duration_deviation_s"]) <= 0.05 and log[0]["speed"] > 1.0, log
    assert res["failed"] >= 1, "untrained voices fail QC"
    for r in table.values():
        log = json.loads(r["attempt_log"])
        assert r["attempts"] == len(log) and [e["attempt"] for e in log] == list(range(1, len(log) + 1))
        seed = line_seed(r["line_id"], r["text"])
        assert [e["seed"] for e in log] == [retry_seed(seed, k) for k in range(len(log))]
        if r["status"] == "failed":
            assert r["attempts"] == 2 and r["error"].startswith("quality check failed after 2 attempt(s)")
            assert log[0]["passed"] is False and log[0]["reasons"]


def test_japanese_voice_enrolled_and_rendered(ray_cluster, tmp_path, monkeypatch):
    """A Japanese speaker (Kokoro's Japanese voice, Japanese transcripts and consent phrase): no ASR model
    for Japanese, so an admin approves the consent clip; enrolled with the tiny config (Japanese
    evaluation sentences) and rendered in Japanese (OpenJTalk phones), mixed Japanese + English included."""
    from typer.testing import CliRunner

    from voicefleet.flows.cli import app
    from voicefleet.flows.enroll import enroll_batch
    from voicefleet.flows.render import render_as

    monkeypatch.setenv("VOICEFLEET_ADMINS", "user:root")
    monkeypatch.setenv("VOICEFLEET_LOCAL_MODE", "1")
    src = tmp_path / "enroll-ja"
    [speaker] = build_demo_enrollment(src, n_speakers=1, clips_per_speaker=6, language="ja")
    assert json.loads((src / speaker / "transcripts.jsonl").read_text().splitlines()[0])["language"] == "ja"
    store = Store(str(tmp_path / "store"))

    # (without the approval the speaker is rejected: tests/test_consent_review.py)
    r = CliRunner().invoke(app, ["consent", "approve", speaker, "--src", str(src), "--as", "user:root", "--local",
                                 "--store", store.uri])
    assert r.exit_code == 0, r.output
    summary = enroll_batch(str(src), store.uri, recipe=Recipe.demo().model_dump(), qc=DEMO_QC, gate=REPORT_GATE)
    [row] = summary["speakers"]
    assert row["status"] == "accepted", row
    version = VoiceRegistry(store).version(speaker)
    assert version.consent_check["approved_by"] == "user:root"
    assert version.evaluation["language"] == "ja"  # the Japanese evaluation sentences

    rows = [{"line_id": "ja-1", "voice_id": speaker, "text": "こんにちは、今日はいい天気ですね。", "language": "ja"},
            {"line_id": "ja-2", "voice_id": speaker, "text": "新しいiPhoneを買いました。", "language": "ja"}]
    res = render_as(Principal(OWNER, "local"), write_script(store, "scripts/ja.csv", rows), store.uri, batch_size=2)
    assert (res["status"], res["ok"], res["failed"], res["refused"]) == ("complete", 2, 0, 0), res
    table = assert_render_complete(store, res["job_id"], ["ja-1", "ja-2"])
    assert {r["language"] for r in table.to_pylist()} == {"ja"} and all(r["num_samples"] > 0 for r in table.to_pylist())


def test_v2pro_voice_enrolled_and_rendered_with_its_speaker_embedding(ray_cluster, tmp_path):
    """`--model-version v2Pro` on the tiny base: the voice is fine-tuned as a v2Pro model (each utterance's
    speaker embedding), its reference clip's embedding is stored with the version, and the render actors
    use it (a Pro SoVITS without it cannot render: model/sovits.py refuses)."""
    import numpy as np

    from voicefleet.flows.enroll import enroll_batch
    from voicefleet.flows.render import render_as
    from voicefleet.model.checkpoint import load_sovits
    from voicefleet.tasks.voices.artifacts import load_sv_emb

    src = tmp_path / "enroll-pro"
    [speaker] = build_demo_enrollment(src, n_speakers=1, clips_per_speaker=6)
    store = Store(str(tmp_path / "store"))
    summary = enroll_batch(str(src), store.uri, recipe=Recipe.demo().model_dump(), qc=DEMO_QC, gate=REPORT_GATE,
                           model_version="v2Pro")
    [row] = summary["speakers"]
    assert row["status"] == "accepted", row
    version = VoiceRegistry(store).version(speaker)
    assert version.base_model == "tiny-random-v1-v2Pro" and version.evaluation["clips"]
    assert load_sovits(store.read_bytes(version.files["sovits"])).version == "v2Pro"
    emb = load_sv_emb(store, version.files)
    assert emb.shape == (1280,) and np.isfinite(emb).all()

    rows = [{"line_id": "pro-1", "voice_id": speaker, "text": "A voice made from the Pro model.", "language": "en"},
            {"line_id": "pro-2", "voice_id": speaker, "text": "It keeps its speaker embedding.", "language": "en"}]
    res = render_as(Principal(OWNER, "local"), write_script(store, "scripts/pro.csv", rows), store.uri, batch_size=2)
    assert (res["status"], res["ok"], res["failed"], res["refused"]) == ("complete", 2, 0, 0), res
    table = assert_render_complete(store, res["job_id"], ["pro-1", "pro-2"])
    assert all(r["num_samples"] > 0 and str(r["voice_version"]) == str(version.version) for r in table.to_pylist())
