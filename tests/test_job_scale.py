"""A job handled whole, out of core (tasks/render/job_index.py): totals, worst lines, compaction and
orphans agree with the plain reading of the index (`read_index` + the script's manifest), and the job
commands stay within a memory bound (benchmarks/job_scale.py at 1e5 rows, each command in a fresh process).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from voicefleet.tasks.render import job_index
from voicefleet.tasks.render.index_read import index_parts, read_index
from voicefleet.tasks.render.job_index import (
    JobTotals,
    compact,
    job_complete,
    job_state,
    job_totals,
    remove_orphans,
    worst_lines,
)
from voicefleet.tasks.render.job_lease import JobLease
from voicefleet.tasks.render.job_paths import index_key, job_prefix, script_prefix
from voicefleet.tasks.store.storage import Store

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "job_scale.py"
JOB = "scale"


def bench():
    spec = importlib.util.spec_from_file_location("job_scale", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def job(tmp_path) -> Store:
    """3,000 lines in 30 parts, 3 parts of an older run, a manifest (3 lines cut, 2 edited), an empty
    tar per 256 ok lines, 20 orphaned tars and 2 real ones: benchmarks/job_scale.py's job, small."""
    store = Store(str(tmp_path / "store"))
    for d in ("index", "shards"):
        os.makedirs(store.fs_path(f"{job_prefix(JOB)}/{d}"))
    bench().build_job(store.uri, 3000, JOB, parts=30, old_parts=3)
    return store


def expected_places(store: Store) -> dict[str, str]:
    """line id -> current | stale | gone, from the whole index in memory and the manifest."""
    [key] = store.glob(f"{script_prefix(JOB)}/r*/*.parquet")
    manifest = pq.read_table(store.fs_path(key)).to_pylist()
    script = {r["line_id"]: r["line_hash"] for r in manifest}
    places = {}
    for r in read_index(store, JOB).to_pylist():
        if r["line_id"] not in script:
            places[r["line_id"]] = "gone"
        else:
            places[r["line_id"]] = "current" if r["line_hash"] in (None, script[r["line_id"]]) else "stale"
    return places


def test_totals_count_the_current_scripts_lines_and_report_the_rest_apart(job):
    rows = {r["line_id"]: r for r in read_index(job, JOB).to_pylist()}
    places = expected_places(job)
    current = [rows[i] for i, p in places.items() if p == "current"]
    t = job_totals(job, JOB)
    assert (t.script_lines, t.lines_indexed, t.stale, t.not_in_script) == (
        2997, sum(p == "current" for p in places.values()), 2, 3)
    assert t.lines_indexed == t.script_lines - t.stale   # every script line has a row
    assert (t.ok, t.failed, t.refused) == tuple(sum(r["status"] == s for r in current) for s in ("ok", "failed", "refused"))
    assert t.ok + t.failed + t.refused == t.lines_indexed
    assert t.audio_s == pytest.approx(sum(r["duration_s"] for r in current if r["status"] == "ok"))
    assert t.qc_failed == sum(r["status"] == "ok" and r["qc_passed"] is False for r in current)
    assert t.index_files == 30 + 3 + 2   # and the two parts of real tars
    job_record = {"lines": 2997, "status": "complete"}
    assert job_state(job_record, t).startswith("incomplete")   # the edited lines want rendering again
    assert not job_complete(job_record, t)
    done = JobTotals(lines_indexed=2997, ok=2990, failed=7, script_lines=2997)
    assert job_complete(job_record, done) and job_state(job_record, done) == "complete with failures (7 failed, 0 refused)"
    assert job_state({"lines": 5}, JobTotals(lines_indexed=5, ok=5)) == "complete"   # no manifest: the record counts


def test_the_same_job_on_s3_counts_the_same(job, store):
    """DuckDB reads the parts and the manifest through the store's fsspec filesystem (S3 here)."""
    for key in job.list(job_prefix(JOB)):
        store.write_bytes(key, job.read_bytes(key))
    assert job_totals(store, JOB) == job_totals(job, JOB)
    assert worst_lines(store, JOB, 5) == worst_lines(job, JOB, 5)
    assert len(remove_orphans(store, JOB)) == 20


def test_worst_lines_are_current_lines_failed_first(job):
    places = expected_places(job)
    worst = worst_lines(job, JOB, 50)
    assert len(worst) == 50 and all(places[r["line_id"]] == "current" for r in worst)
    assert all(r["status"] == "failed" and r["reason"] for r in worst)   # ~4% of 3,000 lines failed
    assert [r["line_id"] for r in worst if not r["truncated"]] == sorted(r["line_id"] for r in worst if not r["truncated"])


def test_compaction_keeps_each_lines_newest_row_and_only_deletes_what_it_listed(job, monkeypatch):
    before = read_index(job, JOB).sort_by("line_id")
    listed = index_parts(job, JOB)
    late = index_key(JOB, "written-after-the-listing")

    def list_then_write(store, job_id):   # a part that appears after compaction listed the parts
        parts = index_parts(store, job_id)
        pq.write_table(before.slice(0, 1), store.fs_path(late))
        return parts

    monkeypatch.setattr(job_index, "index_parts", list_then_write)
    with JobLease(job, JOB) as lease:
        assert compact(job, JOB, generation=lease.generation) == 1
    monkeypatch.undo()
    parts = index_parts(job, JOB)
    assert not set(parts) & set(listed) and late in parts
    assert [p.rsplit("/", 1)[-1][:18] for p in parts if p != late] == ["g00000001-compact-"]
    job.delete(late)
    after = read_index(job, JOB).sort_by("line_id")
    assert after.equals(before)   # the newest row of every line, gone lines included
    assert job_totals(job, JOB).not_in_script == 3
    assert compact(job, JOB) == 0   # already compact


def test_orphans_go_only_when_older_than_the_lease(job):
    times = job.glob_times(f"{job_prefix(JOB)}/shards/*.tar")
    assert remove_orphans(job, JOB, older_than=min(times.values())) == []
    gone = remove_orphans(job, JOB, older_than=max(times.values()) + 1)
    assert len(gone) == 20 and all("/shards/orphan-" in k for k in gone)
    referenced = {r["shard"] for r in read_index(job, JOB).to_pylist() if r["shard"]}
    assert {k.split(f"{job_prefix(JOB)}/", 1)[1] for k in job.glob(f"{job_prefix(JOB)}/shards/*.tar")} >= referenced


@pytest.mark.slow
def test_job_commands_at_1e5_rows_stay_under_the_memory_bound(tmp_path):
    """Every job command, the end of a render and the rerun work list, each in a fresh process
    (1e6 rows: under 1 GB; see benchmarks/README.md). Loose: a busy machine changes seconds, not RSS."""
    figures = bench().run_size(100_000, tmp=str(tmp_path))
    assert set(figures) == {"show", "report", "compact", "finish", "todo"}
    for name, (seconds, rss_mib) in figures.items():
        assert rss_mib < 700, f"{name}: peak RSS {rss_mib:.0f} MiB at 1e5 rows"
        assert seconds < 120, f"{name}: {seconds:.0f} s at 1e5 rows"
