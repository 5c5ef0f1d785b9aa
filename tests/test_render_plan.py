"""The render plan and job contract without Ray: line checks, the work list, the newest row per line,
compaction, orphaned tars, the job lease and fault isolation."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
from render_checks import assert_render_complete

from voicefleet.tasks.measure.audio import encode_flac
from voicefleet.tasks.render.fault_isolation import is_transient, synthesize_isolated, with_backoff
from voicefleet.tasks.render.index_read import read_index
from voicefleet.tasks.render.job_index import compact, job_totals, remove_orphans, worst_lines
from voicefleet.tasks.render.job_lease import JobLease, JobLeaseHeld
from voicefleet.tasks.render.job_paths import job_prefix, shard_key
from voicefleet.tasks.render.line_checks import LANGUAGES, LineLimits, check_line
from voicefleet.tasks.render.plan import plan_script, todo_prefix, write_todo
from voicefleet.tasks.render.script import ScriptError
from voicefleet.tasks.render.shards import write_shard
from voicefleet.tasks.store.storage import Store

GOOD = {"voice_id": "ann", "text": "Hello there.", "language": "en"}


def test_languages_match_the_text_frontend():
    from voicefleet.model.text.language import LANGUAGES as FRONTEND

    assert LANGUAGES == FRONTEND


@pytest.mark.parametrize("field, value, fragment", [
    ("speed", "fast", "speed 'fast' is not a number; use 0.5–2.0"),
    ("speed", "-1", "speed '-1' is out of range; use 0.5–2.0"),
    ("speed", 0, "speed 0 is out of range"),
    ("speed", "NaN", "speed 'NaN' is not a finite number"),
    ("speed", float("inf"), "speed inf is not a finite number"),
    ("speed", True, "speed True is not a number"),
    ("top_k", "0", "top_k '0' is out of range; use 1–1,025"),
    ("top_k", "2.5", "top_k '2.5' is not a whole number"),
    ("seed", "-1", "seed '-1' is out of range"),
    ("temperature", "-0.1", "temperature '-0.1' is out of range; use 0.0–2.0"),
    ("noise_scale", "inf", "noise_scale 'inf' is not a finite number"),
    ("target_seconds", "0", "target_seconds '0' is out of range; use 0.1–600.0 s"),
    ("text", "", "text is empty"),
    ("text", "   \t ", "text is empty"),
    ("text", "?!... ——", "has no letters or digits to speak"),
    ("text", "Hello\x07 there", "control character U+0007 at character 6; remove it"),
    ("text", "a" * 2001, "text is 2,001 characters, over the 2,000-character cap"),
    ("language", "tlh", "unsupported language 'tlh'; use one of en, zh, all_zh, ja, all_ja, ko, all_ko, yue, all_yue, auto, auto_yue"),
    ("language", None, "unsupported language (empty)"),
    ("voice_id", " ", "voice_id is empty"),
])
def test_a_bad_value_is_refused_with_a_reason_a_person_can_act_on(field, value, fragment):
    _, reasons = check_line({**GOOD, field: value}, LineLimits())
    assert any(fragment in r for r in reasons), reasons


@pytest.mark.parametrize("field, value, parsed", [
    ("temperature", "0", 0.0), ("noise_scale", 0, 0.0), ("speed", "1.25", 1.25), ("top_k", 1.0, 1),
    ("seed", "42", 42), ("target_seconds", "3.5", 3.5), ("speed", "", None), ("speed", None, None),
])
def test_zero_and_empty_are_honoured_not_replaced(field, value, parsed):
    clean, reasons = check_line({**GOOD, field: value}, LineLimits())
    assert reasons == [] and clean[field] == parsed


def test_every_problem_of_a_line_is_listed_and_chinese_and_newlines_are_fine():
    _, reasons = check_line({"voice_id": "ann", "text": "", "language": "xx", "speed": "fast"}, LineLimits())
    assert len(reasons) == 3
    assert check_line({**GOOD, "text": "你好，世界。\nHello again."}, LineLimits())[1] == []
    assert check_line({**GOOD, "text": "a" * 50}, LineLimits(max_chars=40))[1][0].startswith("text is 50 characters")


@pytest.fixture
def voices(local_store):
    from render_voices import register_tiny_voices

    register_tiny_voices(local_store, ["ann", "bob"], owner="user:demo")
    return local_store


def write_csv(path, rows: list[dict]) -> str:
    cols = ["line_id", "voice_id", "text", "language", "speed", "target_seconds"]
    with open(path, "w") as f:
        f.write(",".join(cols) + "\n")
        for r in rows:
            f.write(",".join(str(r.get(c, "")) for c in cols) + "\n")
    return str(path)


def test_plan_refuses_bad_lines_and_keeps_the_rest(voices, tmp_path):
    rows = [{"line_id": f"a{i}", "voice_id": "ann", "text": f"Line {i}.", "language": "en"} for i in range(3)]
    rows += [{"line_id": "fast", "voice_id": "bob", "text": "Quick.", "language": "en", "speed": "fast"},
             {"line_id": "ghost", "voice_id": "ghost", "text": "Boo.", "language": "en"},
             {"line_id": "dub", "voice_id": "bob", "text": "Dubbed.", "language": "en", "target_seconds": "2.5"}]
    plan = plan_script(write_csv(tmp_path / "s.csv", rows), voices, "user:demo")
    try:
        table = pq.read_table(plan.directory).to_pylist()
        by_id = {r["line_id"]: r for r in table}
        assert plan.lines == 6 and plan.refused == 2 and plan.voices == {"ann": 3, "bob": 2, "ghost": 1}
        assert by_id["fast"]["status"] == "refused" and "speed 'fast' is not a number" in by_id["fast"]["error"]
        assert by_id["ghost"]["error"] == "unknown voice 'ghost'"
        assert by_id["dub"]["status"] == "pending" and by_id["dub"]["target_seconds"] == 2.5
        assert by_id["a0"]["voice_version"] == "1" and by_id["a0"]["seed"] == by_id["a0"]["seed"]
    finally:
        plan.cleanup()
    assert not os.path.exists(plan.directory)


def test_jsonl_with_mixed_value_types_is_read_and_checked(voices, tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [
        {"line_id": "1", "voice_id": "ann", "text": "Hi.", "language": "en", "speed": 1.5},
        {"line_id": "2", "voice_id": "ann", "text": "Hi.", "language": "en", "speed": "fast"},
        {"line_id": "3", "voice_id": "ann", "text": "Hi.", "language": "en", "speed": None, "top_k": True}]))
    plan = plan_script(str(p), voices, "user:demo")
    by_id = {r["line_id"]: r for r in pq.read_table(plan.directory).to_pylist()}
    plan.cleanup()
    assert by_id["1"]["status"] == "pending" and by_id["1"]["speed"] == 1.5
    assert "speed 'fast'" in by_id["2"]["error"] and "top_k 'true' is not a number" in by_id["3"]["error"]


def test_duplicate_line_ids_are_a_script_error(voices, tmp_path):
    rows = [{"line_id": "x", "voice_id": "ann", "text": "A.", "language": "en"}] * 2
    with pytest.raises(ScriptError, match="line_id 'x' appears more than once .*\\(rows 1 and 2\\)"):
        plan_script(write_csv(tmp_path / "s.csv", rows), voices, "user:demo")


def _row(line_id, status, voice="ann", run=1, error=None):
    return {"line_id": line_id, "voice_id": voice, "status": status, "run": run,
            "error": error or (None if status == "ok" else f"{status} reason")}


def _flac(seed):
    return encode_flac(np.random.default_rng(seed).standard_normal(3200).astype(np.float32) * 0.1, 32000)


def test_work_list_is_an_anti_join_sorted_by_voice(voices, tmp_path):
    store: Store = voices
    rows = [{"line_id": f"l{i}", "voice_id": ["bob", "ann"][i % 2], "text": "x" * (10 + 70 * (i % 3)) + ".",
             "language": "en"} for i in range(8)]
    rows.append({"line_id": "bad", "voice_id": "ann", "text": "Fast.", "language": "en", "speed": "fast"})
    plan = plan_script(write_csv(tmp_path / "s.csv", rows), store, "user:demo")
    bad_reason = next(r["error"] for r in pq.read_table(plan.directory).to_pylist() if r["line_id"] == "bad")
    write_shard(store, "j", "p1", [(_row("l0", "ok"), _flac(0)), (_row("l1", "failed"), None),
                                   (_row("l2", "refused", error="voice ann not granted"), None),
                                   (_row("bad", "refused", error=bad_reason), None)])
    todo = write_todo(plan, store, "j", run=2)
    got = [r for k in todo.keys for r in pq.read_table(store.fs_path(k)).to_pylist()]
    ids = [r["line_id"] for r in got]
    # ok and failed skipped; refused for another reason -> taken again; refused for the same reason -> skipped
    assert sorted(ids) == ["l2", "l3", "l4", "l5", "l6", "l7"] and todo.skipped == 3
    keys = [(r["voice_id"], r["bucket"]) for r in got]
    assert keys == sorted(keys)  # grouped by voice, then length bucket
    retry = write_todo(plan, store, "j", run=3, retry_failed=True)
    assert "l1" in [r["line_id"] for k in retry.keys for r in pq.read_table(store.fs_path(k)).to_pylist()]
    plan.cleanup()


def test_each_work_list_part_is_one_voices_lines_sized_for_the_actors(voices, tmp_path):
    """Voice affinity: a part (one actor's block) never mixes voices; a voice with few lines is one
    part; a voice with many is cut so that every actor gets some (about four parts per actor)."""
    from voicefleet.tasks.render.todo_parts import affinity_chunk

    assert affinity_chunk(512, actors=2, batch_size=16, rows_per_part=512) == 64    # 64 voices x 8 lines: 1 part each
    assert affinity_chunk(10, actors=4, batch_size=16, rows_per_part=512) == 16     # never under one batch
    assert affinity_chunk(10**6, actors=16, batch_size=16, rows_per_part=512) == 512
    store: Store = voices
    rows = ([{"line_id": f"a{i:03d}", "voice_id": "ann", "text": f"Line {i} of ann.", "language": "en"} for i in range(40)]
            + [{"line_id": f"b{i}", "voice_id": "bob", "text": f"Line {i} of bob.", "language": "en"} for i in range(3)]
            + [{"line_id": "g", "voice_id": "ghost", "text": "Nobody's voice.", "language": "en"}])
    plan = plan_script(write_csv(tmp_path / "s.csv", rows), store, "user:demo")
    todo = write_todo(plan, store, "j", run=1, actors=2, batch_size=2)   # 44 lines: parts of ceil(44/8) = 6
    parts = [pq.read_table(store.fs_path(k)).to_pylist() for k in todo.keys]
    assert all(len({(r["voice_id"], r["voice_version"]) for r in p}) == 1 for p in parts)
    sizes = {}
    for p in parts:
        sizes.setdefault(p[0]["voice_id"], []).append(len(p))
    assert sizes == {"ann": [6, 6, 6, 6, 6, 6, 4], "bob": [3], "ghost": [1]}
    assert todo.lines == 44 and [r["line_id"] for p in parts for r in p][:3] == ["a000", "a001", "a002"]
    plan.cleanup()


def test_a_work_list_sorted_in_ranges_equals_one_sort(voices, tmp_path, monkeypatch):
    """Big scripts are sorted in key ranges (bounded DuckDB sorts): the parts must hold the same
    lines in the same order as one sort, with the index's finished lines left out."""
    import voicefleet.tasks.render.plan as render_plan
    from voicefleet.tasks.render.out_of_core import connect

    store: Store = voices
    rows = [{"line_id": f"l{i:03d}", "voice_id": ["bob", "ann", "ghost"][i % 3], "text": "x" * (5 + 37 * (i % 7)) + ".",
             "language": "en"} for i in range(300)]
    plan = plan_script(write_csv(tmp_path / "s.csv", rows), store, "user:demo")
    write_shard(store, "j", "p1", [(_row("l001", "ok"), _flac(0)), (_row("l004", "failed"), None)])

    def listed(run, **kw):
        todo = write_todo(plan, store, "j", run=run, rows_per_part=16, **kw)
        return todo, [r for k in todo.keys for r in pq.read_table(store.fs_path(k)).to_pylist()]

    one, whole = listed(2)
    monkeypatch.setattr(render_plan, "SORT_ROWS", 40)
    assert len(render_plan._sort_bounds(connect(plan.directory, 64), plan)) >= 3
    split, ranged = listed(3)
    assert ranged == whole and split.lines == one.lines == 298 and split.skipped == 2
    assert [(r["voice_id"], r["voice_version"] or "~", r["bucket"], r["line_id"]) for r in whole] == sorted(
        (r["voice_id"], r["voice_version"] or "~", r["bucket"], r["line_id"]) for r in whole)
    assert "l004" in [r["line_id"] for r in listed(4, retry_failed=True)[1]]
    plan.cleanup()


def test_a_query_out_of_memory_runs_again_under_the_next_limit(voices, tmp_path, monkeypatch):
    import voicefleet.tasks.render.out_of_core as out_of_core
    import voicefleet.tasks.render.plan as render_plan

    store: Store = voices
    rows = [{"line_id": f"l{i}", "voice_id": "ann", "text": f"Line {i} here.", "language": "en"} for i in range(3000)]
    limits, connect = [], out_of_core.connect
    monkeypatch.setattr(out_of_core, "connect", lambda d, mb: limits.append(mb) or connect(d, mb))
    monkeypatch.setattr(render_plan, "UNIQUE_MEMORY_MB", (1, 64))   # 1 MB: DuckDB runs out of memory
    monkeypatch.setattr(render_plan, "TODO_MEMORY_MB", (1, 64))
    plan = plan_script(write_csv(tmp_path / "s.csv", rows), store, "user:demo")
    todo = write_todo(plan, store, "j", run=1, rows_per_part=500)
    assert limits == [1, 64, 1, 64] and todo.lines == 3000 and len(todo.keys) == 6
    assert store.list(todo_prefix("j", 1)) == todo.keys
    monkeypatch.setattr(render_plan, "TODO_MEMORY_MB", (1,))
    with pytest.raises(duckdb.OutOfMemoryException):
        write_todo(plan, store, "j", run=2)
    plan.cleanup()


def test_newest_row_wins_compaction_keeps_it_and_orphans_go(store):
    write_shard(store, "j", "p1", [(_row("a", "ok"), _flac(1)), (_row("b", "failed"), None)], replace=True)
    write_shard(store, "j", "p2", [(_row("b", "ok", run=2), _flac(2))])
    store.write_bytes(shard_key("j", "orphan"), b"left by a crash")
    assert len(read_index(store, "j")) == 2
    assert {r["line_id"]: r["run"] for r in read_index(store, "j").to_pylist()} == {"a": 1, "b": 2}
    totals = job_totals(store, "j")
    assert (totals.lines_indexed, totals.ok, totals.failed, totals.index_files) == (2, 2, 0, 2)
    assert compact(store, "j") == 1
    parts = store.glob(f"{job_prefix('j')}/index/*.parquet")
    assert len(parts) == 1 and pq.read_table(store.fs_path(parts[0]), filesystem=store.fs).num_rows == 2
    assert remove_orphans(store, "j") == [shard_key("j", "orphan")]
    assert_render_complete(store, "j", ["a", "b"])
    assert compact(store, "j") == 0  # already compact
    assert [r["line_id"] for r in worst_lines(store, "j")] == []


def test_a_retried_write_of_the_same_content_replaces_itself(local_store):
    from voicefleet.tasks.render.shards import content_name

    items = [(_row("a", "ok"), _flac(1)), (_row("b", "refused"), None)]
    name = content_name(items)
    assert name == content_name(items) and name != content_name(items[:1])
    write_shard(local_store, "j", name, items, replace=True)
    write_shard(local_store, "j", name, items, replace=True)
    assert len(local_store.glob(f"{job_prefix('j')}/index/*.parquet")) == 1
    assert_render_complete(local_store, "j", ["a", "b"])


def test_a_second_run_of_a_job_cannot_take_its_lease(store):
    with JobLease(store, "j"):
        with pytest.raises(JobLeaseHeld, match="render job j is being written by another run"):
            JobLease(store, "j").acquire()
    with JobLease(store, "j") as again:  # released: the next run takes it
        assert again.generation == 2


def test_a_killed_runs_lease_is_taken_over(local_store):
    code = ("import sys; from voicefleet.tasks.render.job_lease import JobLease; from voicefleet.tasks.store.storage import Store;"
            f"JobLease(Store({local_store.uri!r}), 'j', ttl_s=600).acquire(); import os; os._exit(0)")
    subprocess.run([sys.executable, "-c", code], check=True)  # exits without releasing, like kill -9
    with JobLease(local_store, "j") as lease:
        assert lease.generation == 2


class Poisoned(RuntimeError):
    pass


def test_a_poisoned_line_fails_alone():
    calls = []

    def synthesize(lines):
        calls.append(list(lines))
        if "poison" in lines:
            raise Poisoned("CUDA out of memory (a line that breaks the batch)")
        return [f"audio of {x}" for x in lines]

    lines = [f"l{i}" for i in range(7)] + ["poison"]
    out = synthesize_isolated(synthesize, lines)
    assert [o.result for o in out[:7]] == [f"audio of l{i}" for i in range(7)]
    assert out[7].result is None and "Poisoned: CUDA out of memory" in out[7].error
    assert out[7].attempts == 4 and len(out[7].log) == 4   # batches of 8, 4, 2, then alone
    assert out[0].attempts == 2 and out[4].attempts == 3 and out[6].attempts == 4  # one per call that held it
    assert all(o.log[-1].get("error") is None for o in out[:7])


def test_transient_errors_are_retried_with_backoff_and_others_are_not():
    seen = []

    def flaky():
        seen.append(1)
        if len(seen) < 3:
            raise ConnectionError("object store hiccup")
        return "ok"

    assert with_backoff(flaky, attempts=3, base_s=0.001) == "ok" and len(seen) == 3
    with pytest.raises(FileNotFoundError):
        with_backoff(lambda: (_ for _ in ()).throw(FileNotFoundError("gone")), attempts=3, base_s=0.001)
    assert is_transient(TimeoutError()) and not is_transient(ValueError()) and not is_transient(FileNotFoundError())
    tries = []
    out = synthesize_isolated(lambda xs: tries.append(1) or (_ for _ in ()).throw(ConnectionError("x")), ["a"],
                              line_retries=2, backoff_s=0.001)
    assert out[0].attempts == 3 and len(tries) == 3 and out[0].error.startswith("ConnectionError")


def test_planning_memory_stays_flat(tmp_path):
    """Driver peak RSS planning 20k vs 200k lines, in fresh processes (see benchmarks for 1e6)."""
    from plan_memory import plan_memory

    peaks = {n: plan_memory(n, str(tmp_path))[0] for n in (20_000, 200_000)}
    # measured 2026-11-27 20:40 UTC: +93 MiB at 20k, +131 MiB at 200k (+162 at 1e6, +177 at 3e6,
    # benchmarks/README.md); before small CSV blocks and DuckDB's 32/64 MB limits on one thread:
    # +101 / +190 (and +359 at 1e6). Holding the 200k rows as Python dicts would take ~300 MB more.
    assert peaks[200_000] < 200 and peaks[200_000] - peaks[20_000] < 75, peaks


def test_a_local_folder_store_is_refused_on_a_multi_node_cluster(local_store, s3_store, monkeypatch):
    import ray

    from voicefleet.tasks.cluster.runtime import LocalStoreOnCluster, check_store_for_cluster

    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}, {"Alive": True}, {"Alive": False}])
    with pytest.raises(LocalStoreOnCluster, match="is a local folder but the Ray cluster has 2 nodes"):
        check_store_for_cluster(local_store)
    check_store_for_cluster(s3_store)   # an object store is reachable from every node
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}])
    check_store_for_cluster(local_store)
