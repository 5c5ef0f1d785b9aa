"""The job lease fences: one run writes a job at a time, a run that lost the lease stops within a
batch, and nothing it writes after that is read (tasks/render/job_lease.py, job_fence.py).

Times are the store's (S3 LastModified is whole seconds), so tests that need a lease to expire or a
write to land after another wait on the store's clock rather than assume a host's."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pyarrow as pa
import pytest
from render_checks import assert_render_complete

from voicefleet.tasks.measure.audio import encode_flac
from voicefleet.tasks.render import process_identity
from voicefleet.tasks.render.fault_isolation import is_transient, with_backoff
from voicefleet.tasks.render.index_read import index_dataset, index_parts, read_index
from voicefleet.tasks.render.index_schema import RESULT_SCHEMA, SUMMARY_SCHEMA
from voicefleet.tasks.render.job_index import compact, remove_orphans
from voicefleet.tasks.render.job_lease import JobLease, JobLeaseHeld, JobLeaseLost, lease_key, lease_times, store_now
from voicefleet.tasks.render.job_paths import index_key, job_prefix, part_generation, shard_key
from voicefleet.tasks.render.pipeline import RenderCounts, count_batches, write_shard_batch
from voicefleet.tasks.render.shards import write_shard
from voicefleet.tasks.store.storage import Store, UnsafeStore


def _row(line_id: str, run: int = 1) -> dict:
    return {"line_id": line_id, "voice_id": "ann", "status": "ok", "run": run, "text": "Hello.", "language": "en"}


def _flac(seed: int) -> bytes:
    return encode_flac(np.random.default_rng(seed).standard_normal(3200).astype(np.float32) * 0.1, 32000)


def _batch(*line_ids: str, run: int = 1) -> pa.Table:
    """What the synthesis actors hand the shard writer: rows plus FLAC bytes."""
    return pa.Table.from_pylist([{**_row(i, run), "flac": _flac(n)} for n, i in enumerate(line_ids)],
                                schema=RESULT_SCHEMA)


def _summary(line_id: str) -> pa.Table:
    return pa.Table.from_pylist([{"line_id": line_id, "status": "ok", "duration_s": 0.1}], schema=SUMMARY_SCHEMA)


def _lines(store: Store, job: str) -> set[str]:
    return set(read_index(store, job, ["line_id"]).column("line_id").to_pylist())


def _after_store_tick(store: Store, job: str, since: float) -> None:
    """Wait until the store's clock (whole seconds on S3) is past `since`."""
    while store_now(store, job) <= since:
        time.sleep(0.2)


def _take_when_expired(store: Store, job: str, timeout_s: float = 15.0, **kw) -> JobLease:
    """A new run's lease, taken as soon as the store says the holder's expired."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return JobLease(store, job, **kw).acquire()
        except JobLeaseHeld:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def _stall(lease: JobLease) -> None:
    """Stop a lease's heartbeat, as a frozen process would."""
    lease._stop.set()
    lease._thread.join()


# -- losing the lease stops the run ------------------------------------------------------------


def test_a_failed_renewal_loses_the_lease_and_the_driver_stops_at_the_next_batch(store, monkeypatch):
    lease = JobLease(store, "j").acquire()
    consumed = []

    def batches():
        consumed.append(1)
        yield _summary("a")

        def refuse(key, data):
            raise ConnectionError("store unreachable")
        monkeypatch.setattr(lease.store, "write_bytes", refuse)
        lease.renew()  # the heartbeat's next renewal fails
        consumed.append(2)
        yield _summary("b")
        consumed.append(3)
        yield _summary("c")

    with pytest.raises(JobLeaseLost, match="renewing the lease failed: ConnectionError: store unreachable"):
        count_batches(batches(), RenderCounts(), lease)
    assert consumed == [1, 2]
    monkeypatch.undo()
    lease.renew()  # lost for good: a later renewal that would succeed is not even tried
    assert lease.lost
    lease.release()  # not ours any more: left unreleased, it expires
    assert not store.read_json(lease_key("j", 1))["released"]


def test_the_heartbeat_thread_loses_the_lease_on_any_store_error(store, monkeypatch):
    lease = JobLease(store, "j", ttl_s=2.0).acquire()

    def refuse(pattern):
        raise PermissionError("credentials expired")
    monkeypatch.setattr(lease.store, "glob_times", refuse)
    deadline = time.monotonic() + 5
    while not lease._lost and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "PermissionError: credentials expired" in (lease._lost or "")
    lease._thread.join(timeout=5)   # it marks the lease lost, then returns
    assert not lease._thread.is_alive()
    with pytest.raises(JobLeaseLost):
        lease.check()


def test_a_stalled_heartbeat_loses_the_lease_on_the_holders_own_clock(store):
    lease = JobLease(store, "j", ttl_s=1.0).acquire()
    _stall(lease)
    renewed = lease_times(store, "j")[1]
    time.sleep(lease.safe_s + 0.1)
    assert lease.lost
    with pytest.raises(JobLeaseLost, match="no renewal for .* over the safe window"):
        lease.check()
    lease.renew()  # a heartbeat waking up late never extends a lease that may be gone
    assert lease_times(store, "j")[1] == renewed


def test_a_worker_of_a_run_that_lost_its_lease_stops_before_its_index_part(store):
    old = JobLease(store, "j", ttl_s=2.0).acquire()
    write_shard_batch(_batch("a"), store.uri, "j", generation=old.generation)
    _stall(old)
    new = _take_when_expired(store, "j")
    assert new.generation == 2
    with pytest.raises(JobLeaseLost, match="lost the job to generation 2"):
        write_shard_batch(_batch("b"), store.uri, "j", generation=old.generation)
    assert [part_generation(k) for k in store.glob(f"{job_prefix('j')}/index/*.parquet")] == [1]
    with pytest.raises(JobLeaseLost):
        with_backoff(lambda: write_shard_batch(_batch("b"), store.uri, "j", generation=1), attempts=3, base_s=0.001)
    new.release()
    with pytest.raises(JobLeaseLost, match="was released"):  # a stray worker after its run released the job
        write_shard_batch(_batch("c"), store.uri, "j", generation=2)
    assert _lines(store, "j") == {"a"}


def test_a_lost_lease_is_never_retried_as_transient():
    class EndpointConnectionError(Exception):
        pass

    try:
        try:
            raise EndpointConnectionError("no route")
        except EndpointConnectionError as e:
            raise JobLeaseLost("renewing the lease failed") from e
    except JobLeaseLost as e:
        lost = e
    assert is_transient(lost.__cause__) and not is_transient(lost)
    wrapped = RuntimeError("a Ray task failed")
    wrapped.__cause__ = lost
    assert not is_transient(wrapped)
    calls = []

    def fail():
        calls.append(1)
        raise lost
    with pytest.raises(JobLeaseLost):
        with_backoff(fail, attempts=3, base_s=0.001)
    assert calls == [1]


# -- one writer at a time -------------------------------------------------------------------------


def test_two_runs_started_together_one_writes_the_other_is_refused(store):
    barrier, results = threading.Barrier(2), []

    def run():
        barrier.wait()
        try:
            results.append(JobLease(store, "j").acquire())
        except JobLeaseHeld as e:
            results.append(e)
    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    held = [r for r in results if isinstance(r, JobLease)]
    refused = [r for r in results if isinstance(r, JobLeaseHeld)]
    assert len(held) == 1 and len(refused) == 1 and "being written by another run" in str(refused[0])
    lease = held[0]
    write_shard_batch(_batch("a", "b"), store.uri, "j", generation=lease.generation)
    write_shard_batch(_batch("c"), store.uri, "j", generation=lease.generation)
    lease.release()
    assert_render_complete(store, "j", ["a", "b", "c"])  # every row's bytes are in its tar


# -- what a lost run writes is not read -----------------------------------------------------------


def test_a_part_written_after_the_lease_expired_and_was_taken_is_not_read(store):
    old = JobLease(store, "j", ttl_s=2.0).acquire()
    write_shard(store, "j", "early", [(_row("a"), _flac(1))], generation=old.generation)
    _stall(old)
    new = _take_when_expired(store, "j")
    previous = store.read_json(lease_key("j", new.generation))["previous"]
    assert previous["generation"] == 1 and previous["fence"] <= new.acquired_store_time
    # the old run's worker passed its fence check just before the takeover and lands its part after it
    write_shard(store, "j", "late", [(_row("b"), _flac(2))], generation=old.generation)
    write_shard(store, "j", "mine", [(_row("c", run=2), _flac(3))], generation=new.generation)
    late = index_key("j", "late", 1)
    assert store.exists(late) and late not in index_parts(store, "j")
    assert index_parts(store, "j") == [index_key("j", "early", 1), index_key("j", "mine", 2)]
    assert sorted(index_dataset(store, "j").files) == sorted(store.fs_path(k) for k in index_parts(store, "j"))
    assert _lines(store, "j") == {"a", "c"}
    assert compact(store, "j", generation=new.generation) == 1
    assert [part_generation(k) for k in index_parts(store, "j")] == [2]
    assert _lines(store, "j") == {"a", "c"}
    assert not store.exists(late)   # the new holder deletes it: a plain glob of index/ no longer meets it
    assert store.glob(f"{job_prefix('j')}/index/*.parquet") == index_parts(store, "j")
    new.release()
    assert _lines(store, "j") == {"a", "c"}  # still not after the release


def test_a_released_lease_fences_what_its_workers_write_after(store):
    with JobLease(store, "j") as lease:
        write_shard(store, "j", "before", [(_row("a"), _flac(1))], generation=lease.generation)
    _after_store_tick(store, "j", lease_times(store, "j")[1])
    write_shard(store, "j", "stray", [(_row("b"), _flac(2))], generation=1)  # a worker still running
    assert _lines(store, "j") == {"a"}
    with JobLease(store, "j") as again:
        previous = store.read_json(lease_key("j", again.generation))["previous"]
        assert previous == {"generation": 1, "fence": lease_times(store, "j")[1]}
        assert _lines(store, "j") == {"a"}


def test_parts_without_a_generation_always_count(store):
    write_shard(store, "j", "legacy", [(_row("a"), _flac(1))])
    with JobLease(store, "j") as lease:
        write_shard(store, "j", "new", [(_row("b"), _flac(2))], generation=lease.generation)
    with JobLease(store, "j"):
        assert _lines(store, "j") == {"a", "b"}


def test_the_fence_is_checked_between_the_tar_and_its_index_part(store):
    def fence():
        assert store.exists(shard_key("j", "s")) and not store.exists(index_key("j", "s", 7))
        raise JobLeaseLost("lost")
    with pytest.raises(JobLeaseLost):
        write_shard(store, "j", "s", [(_row("a"), _flac(1))], generation=7, fence=fence)
    assert not store.glob(f"{job_prefix('j')}/index/*.parquet")


# -- cleanup under a lease --------------------------------------------------------------------------


def test_orphan_removal_keeps_tars_younger_than_its_lease(store):
    store.write_bytes(shard_key("j", "old-orphan"), b"left by a crash")
    _after_store_tick(store, "j", store.glob_times(shard_key("j", "old-orphan"))[shard_key("j", "old-orphan")])
    with JobLease(store, "j") as lease:
        # a run that takes the job after us uploads its tar; its index part is not written yet
        store.write_bytes(shard_key("j", "young"), b"uploaded, not indexed yet")
        removed = remove_orphans(store, "j", older_than=lease.acquired_store_time)
    assert removed == [shard_key("j", "old-orphan")]
    assert store.exists(shard_key("j", "young"))


def test_stale_lease_records_go_but_those_a_fence_needs_stay(store):
    with JobLease(store, "j") as first:
        write_shard(store, "j", "p", [(_row("a"), _flac(1))], generation=first.generation)
    for _ in range(4):
        with JobLease(store, "j"):
            pass
    # generation 1 has parts: its record and its successor's (which holds its fence) stay;
    # 4 is the previous generation, 5 the last; 3 fences nothing
    assert sorted(lease_times(store, "j")) == [1, 2, 4, 5]
    assert _lines(store, "j") == {"a"}


# -- stores and hosts ---------------------------------------------------------------------------------


def test_a_store_without_exclusive_create_is_refused_unless_single_writer_is_promised():
    store = Store(f"memory:///vf-{uuid.uuid4().hex[:8]}")
    with pytest.raises(UnsafeStore):
        JobLease(store, "j").acquire()
    assert not store.list()
    with JobLease(store, "j", unsafe_single_writer=True) as lease:
        assert lease.generation == 1
        write_shard(store, "j", "p", [(_row("a"), _flac(1))], generation=lease.generation)
    assert _lines(store, "j") == {"a"}


def test_jobs_compact_on_a_store_without_exclusive_create_needs_the_same_promise():
    from typer.testing import CliRunner

    from voicefleet.flows.cli import app
    from voicefleet.tasks.render.job_paths import job_key

    store = Store(f"memory:///vf-{uuid.uuid4().hex[:8]}")
    store.write_bytes(job_key("j"), json.dumps({"lines": 2}).encode())
    for name in ("p", "q"):
        write_shard(store, "j", name, [(_row(name), _flac(1))], generation=1)
    refused = CliRunner().invoke(app, ["jobs", "compact", "j", "--store", store.uri])
    assert refused.exit_code == 2 and "exclusive" in refused.output.lower(), refused.output
    assert len(index_parts(store, "j")) == 2
    done = CliRunner().invoke(app, ["jobs", "compact", "j", "--store", store.uri, "--unsafe-single-writer"])
    assert done.exit_code == 0 and "index files 2 -> 1" in done.output, done.output
    assert _lines(store, "j") == {"p", "q"}


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _holder(store: Store, process: dict) -> None:
    """Generation 1 held (ttl 10 min, just renewed) by `process`, on this host."""
    record = {"owner": "other", "host": socket.gethostname(), "process": process, "ttl_s": 600.0, "released": False}
    store.write_bytes(lease_key("j", 1), json.dumps(record).encode())


@pytest.mark.skipif(process_identity.current()["pid_ns"] is None, reason="needs Linux /proc")
def test_same_host_takeover_needs_proof_the_holder_is_gone(store):
    me = process_identity.current()
    dead = {**me, "pid": _dead_pid()}
    for not_proof in ({**dead, "pid_ns": me["pid_ns"] + 1},      # another container sharing hostname and pid
                      {**dead, "boot_id": str(uuid.uuid4())},     # another machine (or a boot before)
                      {**dead, "start_time": None},               # a record that cannot tell
                      me):                                        # a live process: the holder runs
        _holder(store, not_proof)
        with pytest.raises(JobLeaseHeld, match="being written by another run"):
            JobLease(store, "j").acquire()
    _holder(store, dead)  # same kernel, same pid namespace, its pid free: taken over at once
    with JobLease(store, "j") as lease:
        assert lease.generation == 2
        assert store.read_json(lease_key("j", 2))["previous"]["fence"] == lease.acquired_store_time


@pytest.mark.skipif(process_identity.current()["pid_ns"] is None, reason="needs Linux /proc")
def test_a_reused_pid_is_not_its_old_holder(store):
    me = process_identity.current()
    _holder(store, {**me, "start_time": me["start_time"] - 1})  # our pid, but a process started before us
    with JobLease(store, "j") as lease:
        assert lease.generation == 2


def test_a_killed_runs_stray_writes_after_the_takeover_are_not_read(local_store):
    store = local_store
    code = ("from voicefleet.tasks.render.job_lease import JobLease; from voicefleet.tasks.store.storage import Store;"
            f"JobLease(Store({store.uri!r}), 'j', ttl_s=600).acquire(); import os; os._exit(0)")
    subprocess.run([sys.executable, "-c", code], check=True)  # exits without releasing, like kill -9
    with JobLease(store, "j") as lease:
        _after_store_tick(store, "j", lease.acquired_store_time)
        write_shard(store, "j", "stray", [(_row("a"), _flac(1))], generation=1)  # its Ray worker, still going
        assert _lines(store, "j") == set()
