"""Resuming a render job follows the script (issue 21), on real Ray + Prefect:

- a line whose text changed is rendered again; a line removed from the script is reported apart
  from the totals; "complete" means every current line has a row made from it;
- `--retry-failed` draws new seeds (per run and attempt), and the index's `seed` is the kept attempt's;
- another principal cannot write into someone's job; an admin can take it over, audited;
- a GPU request on a CPU-only cluster fails before any work, exit 2.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
from render_voices import register_tiny_voices

from voicefleet.tasks.cluster.runtime import ClusterTooSmall, Resources, actors_that_fit
from voicefleet.tasks.render.index_read import read_index
from voicefleet.tasks.safety.principal import Principal
from voicefleet.tasks.render.job_paths import read_job
from voicefleet.tasks.render.line_qc import retry_seed
from voicefleet.tasks.safety import audit
from voicefleet.tasks.store.storage import Store

OWNER = "user:demo"
QC_OFF = {"mode": "off"}


@pytest.fixture(scope="module")
def ray_address(s3_server):
    from voicefleet.tasks.cluster.runtime import ensure_ray

    os.environ["VOICEFLEET_DASHBOARD"] = "0"
    ensure_ray(num_cpus=2)
    import ray

    return ray.get_runtime_context().gcs_address


def write_script(path, rows) -> str:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["line_id", "voice_id", "text", "language"])
        w.writeheader()
        w.writerows(rows)
    return str(path)


def line(i: str, text: str) -> dict:
    return {"line_id": i, "voice_id": "ann", "text": text, "language": "en"}


@pytest.mark.slow
def test_an_edited_line_is_rendered_again_and_a_removed_line_reported_apart(ray_address, tmp_path):
    from voicefleet.flows.render import render_as

    store = Store(str(tmp_path / "store"))
    register_tiny_voices(store, ["ann"], OWNER)
    first = write_script(tmp_path / "v1.csv", [line("a", "Hello there."), line("b", "The first take."),
                                               line("c", "A line we cut later.")])
    res = render_as(Principal(OWNER, "local"), first, store.uri, job_id="edit", batch_size=4, qc=QC_OFF)
    assert res["status"] == "complete" and (res["ok"], res["lines"]) == (3, 3)
    before = {r["line_id"]: r for r in read_index(store, "edit").to_pylist()}
    assert all(r["line_hash"] for r in before.values())

    second = write_script(tmp_path / "v2.csv", [line("a", "Hello there."), line("b", "The second take, rewritten."),
                                                line("d", "A new line.")])
    res = render_as(Principal(OWNER, "local"), second, store.uri, job_id="edit", batch_size=4, qc=QC_OFF)
    after = {r["line_id"]: r for r in read_index(store, "edit").to_pylist()}
    assert after["a"]["run"] == 1 and after["a"]["sha256"] == before["a"]["sha256"]   # unchanged: kept
    assert after["b"]["run"] == 2 and after["b"]["text"] == "The second take, rewritten."
    assert after["b"]["line_hash"] != before["b"]["line_hash"]
    assert after["d"]["run"] == 2 and after["c"]["run"] == 1   # the cut line's row stays, apart
    assert res["status"] == "complete" and res["lines"] == 3 and res["skipped_this_run"] == 1
    assert (res["ok"], res["failed"], res["refused"], res["not_in_script"]) == (3, 0, 0, 1)
    assert read_job(store, "edit")["totals"]["not_in_script"] == 1

    # a job-wide setting that changes the audio (the loudness target) renders every line again
    res = render_as(Principal(OWNER, "local"), second, store.uri, job_id="edit", batch_size=4, qc=QC_OFF,
                    post={"loudness_lufs": -20.0})
    assert res["skipped_this_run"] == 0 and res["ok"] == 3
    assert {r["line_id"]: r["run"] for r in read_index(store, "edit").to_pylist()} == {"a": 3, "b": 3, "c": 1, "d": 3}


@pytest.mark.slow
def test_a_resumed_job_leaves_no_work_lists_plan_folders_stale_leases_or_orphaned_fingerprints(ray_address, tmp_path):
    """What a killed run leaves (its work list, fingerprints of a shard never written) goes with the next
    run; each run's own plan folder and work list go with it; old lease records do not pile up."""
    import glob
    import tempfile

    from voicefleet.flows.render import render_as
    from voicefleet.tasks.render.job_cleanup import runs_prefix
    from voicefleet.tasks.render.job_paths import job_prefix
    from voicefleet.tasks.safety.fingerprint import PREFIX as FINGERPRINTS

    store = Store(str(tmp_path / "store"))
    register_tiny_voices(store, ["ann"], OWNER)
    script = write_script(tmp_path / "s.csv", [line("a", "Kept clean."), line("b", "And tidy.")])
    # this process's plan folders (scratch_dir names them by process; other processes' are theirs)
    plans = lambda: glob.glob(os.path.join(tempfile.gettempdir(), f"vf-plan-*-{os.getpid()}-*"))  # noqa: E731
    before = set(plans())
    render_as(Principal(OWNER, "local"), script, store.uri, job_id="tidy", qc=QC_OFF)
    store.write_bytes(f"{runs_prefix('tidy')}/7/todo-000000.parquet", b"a killed run's work list")
    store.write_bytes(f"{FINGERPRINTS}/tidy/never-written.parquet", b"fingerprints of a tar that never landed")
    for _ in range(4):  # runs 2..5: nothing left to render, each takes and releases the lease
        res = render_as(Principal(OWNER, "local"), script, store.uri, job_id="tidy", qc=QC_OFF, retry_failed=True)
    assert res["status"] == "complete" and res["ok"] == 2
    assert store.list(runs_prefix("tidy")) == []
    assert f"{FINGERPRINTS}/tidy/never-written.parquet" not in store.glob(f"{FINGERPRINTS}/tidy/*.parquet")
    assert set(plans()) <= before
    # lease records: the last run's and its predecessor's, and generation 1's (its parts are still read:
    # compaction found the index compact and kept them) with generation 2's, which holds 1's fence
    gens = sorted(int(k.rsplit("/", 1)[-1].split(".")[0]) for k in store.glob(f"{job_prefix('tidy')}/lease/*.json"))
    assert gens == [1, 2, 4, 5]


@pytest.mark.slow
def test_retry_failed_draws_new_seeds_and_the_index_keeps_the_kept_attempts_seed(ray_address, tmp_path):
    from voicefleet.flows.commands.render import render_exit_code
    from voicefleet.flows.render import render_as

    store = Store(str(tmp_path / "store"))
    register_tiny_voices(store, ["ann"], OWNER)
    script = write_script(tmp_path / "s.csv", [line("x", "Random weights never pass quality control.")])
    enforce = {"mode": "enforce", "retries": 1}   # an untrained voice's audio fails every check
    res = render_as(Principal(OWNER, "local"), script, store.uri, job_id="seeds", qc=enforce)
    assert res["status"] == "complete" and res["failed"] == 1 and render_exit_code(res) == 4
    row1 = read_index(store, "seeds").to_pylist()[0]
    seeds1 = [e["seed"] for e in json.loads(row1["attempt_log"])]
    assert seeds1 == [retry_seed(seeds1[0], k, 1) for k in range(2)] and row1["seed"] == seeds1[-1]

    res = render_as(Principal(OWNER, "local"), script, store.uri, job_id="seeds", qc=enforce, retry_failed=True)
    row2 = read_index(store, "seeds").to_pylist()[0]
    seeds2 = [e["seed"] for e in json.loads(row2["attempt_log"])]
    assert row2["run"] == 2 and seeds2 == [retry_seed(seeds1[0], k, 2) for k in range(2)]
    assert not set(seeds1) & set(seeds2) and row2["seed"] == seeds2[-1]


@pytest.mark.slow
def test_another_principal_is_refused_on_an_existing_job_and_an_admin_takeover_is_audited(ray_address, tmp_path,
                                                                                         monkeypatch):
    from voicefleet.flows.render import render_as
    from voicefleet.tasks.render.job_owner import JobOwnedByOther

    store = Store(str(tmp_path / "store"))
    register_tiny_voices(store, ["ann"], OWNER)
    script = write_script(tmp_path / "s.csv", [line("a", "Mine.")])
    render_as(Principal(OWNER, "local"), script, store.uri, job_id="owned", qc=QC_OFF)
    records = len(audit.read(store))
    with pytest.raises(JobOwnedByOther, match="belongs to user:demo"):
        render_as(Principal("user:eve", "local"), script, store.uri, job_id="owned", qc=QC_OFF)
    assert read_job(store, "owned")["principal"] == OWNER and len(audit.read(store)) == records

    monkeypatch.setenv("VOICEFLEET_ADMINS", "user:root")
    render_as(Principal("user:root", "local"), script, store.uri, job_id="owned", qc=QC_OFF)
    takeover = [r for r in audit.read(store) if r["event"] == "render_job_takeover"]
    assert len(takeover) == 1 and takeover[0]["actor"] == "user:root"
    assert takeover[0]["detail"]["previous_owner"] == OWNER


def test_actors_that_fit_counts_each_node_on_its_own():
    nodes = [{"Resources": {"CPU": 16.0, "GPU": 1.0}}, {"Resources": {"CPU": 4.0}}]
    assert actors_that_fit(Resources(num_cpus=1, num_gpus=0.5), nodes) == 2
    assert actors_that_fit(Resources(num_cpus=2), nodes) == 10
    assert actors_that_fit(Resources(num_cpus=1, num_gpus=1), [{"Resources": {"CPU": 64.0}}]) == 0


@pytest.mark.slow
def test_a_gpu_request_on_a_cpu_only_cluster_fails_fast_with_exit_2(ray_address, tmp_path):
    from voicefleet.tasks.cluster.runtime import check_resources

    with pytest.raises(ClusterTooSmall, match="at most 0 fit"):
        check_resources(Resources(num_cpus=1, num_gpus=1), 1)
    store = Store(str(tmp_path / "store"))
    register_tiny_voices(store, ["ann"], OWNER)
    script = write_script(tmp_path / "s.csv", [line("a", "Needs a GPU.")])
    env = dict(os.environ, RAY_ADDRESS=ray_address, COLUMNS="250", VOICEFLEET_LOCAL_MODE="1")  # `--as`
    env.pop("VOICEFLEET_PRINCIPAL_KEY", None)
    r = subprocess.run([sys.executable, "-m", "voicefleet.flows.cli", "render", script, "--as", OWNER, "--local",
                        "--store", store.uri, "--job", "gpu", "--gpus", "1"], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert "do not fit the Ray cluster" in r.stderr and "0 GPUs" in r.stderr
    assert not store.glob("renders/gpu/index/*.parquet")


def _result_batch(*ids: str):
    import pyarrow as pa

    from voicefleet.tasks.render.index_schema import RESULT_SCHEMA

    return pa.Table.from_pylist([{"line_id": i, "voice_id": "ann", "status": "failed", "error": "bad", "run": 1}
                                 for i in ids], schema=RESULT_SCHEMA)


def test_a_shard_the_store_will_not_take_becomes_unwritten_lines_not_a_failed_run(tmp_path, monkeypatch):
    import voicefleet.tasks.render.pipeline as pipeline

    calls = []

    def broken(*a, **kw):
        calls.append(1)
        raise OSError("503 Slow Down")   # transient: retried, then given up on

    monkeypatch.setattr(pipeline, "write_shard", broken)
    out = pipeline.write_shard_batch(_result_batch("a", "b"), str(tmp_path / "store"), "j", retries=3,
                                     backoff_s=0).to_pylist()
    assert len(calls) == 3 and [r["status"] for r in out] == ["unwritten", "unwritten"]
    assert "not written: OSError: 503 Slow Down" in out[0]["error"]
    counts = pipeline.RenderCounts()
    for r in out:
        counts.add(r)
    assert counts.unwritten == 2 and counts.failed == 0 and len(counts.failures) == 2


def test_a_lost_lease_is_never_counted_as_unwritten(tmp_path, monkeypatch):
    import voicefleet.tasks.render.pipeline as pipeline
    from voicefleet.tasks.render.job_lease import JobLeaseLost

    def lost(*a, **kw):
        raise JobLeaseLost("another run took over")

    monkeypatch.setattr(pipeline, "write_shard", lost)
    with pytest.raises(JobLeaseLost):
        pipeline.write_shard_batch(_result_batch("a"), str(tmp_path / "store"), "j", backoff_s=0)
