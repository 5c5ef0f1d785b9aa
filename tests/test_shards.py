"""Render output contract: tar shards + Parquet index, on a local folder and on S3 (moto)."""

from __future__ import annotations

import io
import json
import shlex
import sys

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from render_checks import assert_render_complete

from voicefleet.tasks.measure.audio import encode_flac, encode_wav, read_audio
from voicefleet.tasks.render.index_read import (
    CorruptAudio,
    fetch_audio,
    finished_line_ids,
    read_index,
    unreferenced_shards,
)
from voicefleet.tasks.render.index_schema import INDEX_SCHEMA
from voicefleet.tasks.render.job_paths import index_glob, index_key, job_prefix, shard_key
from voicefleet.tasks.render.shards import InvalidRow, ShardAlreadyIndexed, ShardWriter, sha256_hex, write_shard
from voicefleet.tasks.store.ids import InvalidId
from voicefleet.tasks.store.storage import Store

SR = 32_000
JOB = "job-1"
PCM16_STEP = 1 / 32768   # the most a 16-bit FLAC sample differs from its float32 original


def make_audio(seed: int, seconds: float = 0.25) -> np.ndarray:
    """A short tone plus noise, different per seed: (T,) float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(SR * seconds * (1 + seed % 3))) / SR
    tone = 0.4 * np.sin(2 * np.pi * (200 + 50 * seed) * t)
    return (tone + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def ok_line(i: int) -> tuple[dict, bytes]:
    row = {"line_id": f"L{i:04d}", "voice_id": "joe", "voice_version": "v1", "status": "ok",
           "text": f"line number {i}", "language": "en", "rtf": np.float32(0.1), "attempts": 1}
    return row, encode_flac(make_audio(i), SR)


def not_ok_line(i: int, status: str) -> tuple[dict, None]:
    row = {"line_id": f"L{i:04d}", "voice_id": "sam", "status": status,
           "error": f"{status}: voice sam not granted", "text": f"line {i}", "language": "en"}
    return row, None


def script(n: int) -> list[tuple[dict, bytes | None]]:
    """n lines: mostly ok, every 7th failed, every 11th refused."""
    items: list[tuple[dict, bytes | None]] = []
    for i in range(n):
        if i % 7 == 6:
            items.append(not_ok_line(i, "failed"))
        elif i % 11 == 10:
            items.append(not_ok_line(i, "refused"))
        else:
            items.append(ok_line(i))
    return items


def render(store: Store, items, writer_id: str = "w0", target_bytes: int = 40_000, skip=()) -> list[str]:
    """What the renderer does: skip finished lines, stream the rest through a ShardWriter."""
    with ShardWriter(store, JOB, writer_id, target_bytes=target_bytes) as writer:
        for row, flac in items:
            if row["line_id"] not in skip:
                writer.add(row, flac)
    return writer.published


# -- writing and reading a shard ------------------------------------------------------------------


def test_shard_round_trip_keeps_every_line(store: Store) -> None:
    items = script(12)
    rows = write_shard(store, JOB, "s0", items)

    assert [r["line_id"] for r in rows] == [row["line_id"] for row, _ in items]
    assert store.exists(shard_key(JOB, "s0")) and store.exists(index_key(JOB, "s0"))
    table = assert_render_complete(store, JOB, [row["line_id"] for row, _ in items])
    assert table.schema == INDEX_SCHEMA

    by_id = {r["line_id"]: r for r in table.to_pylist()}
    for row, flac in items:
        got = by_id[row["line_id"]]
        assert got["status"] == row["status"] and got["text"] == row["text"]
        if flac is None:
            assert got["shard"] is got["offset"] is got["sha256"] is None
            assert got["error"] == row["error"]
        else:
            assert got["shard"] == "shards/s0.tar"
            assert got["sha256"] == sha256_hex(flac) and got["size"] == len(flac)
            assert got["duration_s"] == pytest.approx(got["num_samples"] / SR)
            assert got["rtf"] == pytest.approx(0.1) and got["attempts"] == 1


def test_one_line_is_fetched_with_one_ranged_read_sample_for_sample(store: Store, monkeypatch) -> None:
    items = script(9)
    write_shard(store, JOB, "s0", items)
    row = next(r for r in read_index(store, JOB).to_pylist() if r["line_id"] == "L0004")

    calls = []
    real_cat_file = store.fs.cat_file
    monkeypatch.setattr(store.fs, "cat_file", lambda path, start=None, end=None, **kw: (
        calls.append((path, start, end)) or real_cat_file(path, start=start, end=end, **kw)))
    data = fetch_audio(store, JOB, row)

    assert calls == [(store.fs_path(f"{job_prefix(JOB)}/shards/s0.tar"), row["offset"], row["offset"] + row["size"])]
    original = make_audio(4)
    decoded, sr = read_audio(data)
    assert sr == SR and decoded.shape == original.shape
    np.testing.assert_array_equal(decoded, read_audio(items[4][1])[0])
    assert np.max(np.abs(decoded - original)) <= PCM16_STEP


def test_fetch_detects_bytes_that_do_not_match_the_index(store: Store) -> None:
    write_shard(store, JOB, "s0", script(3))
    row = read_index(store, JOB).to_pylist()[1]
    with pytest.raises(CorruptAudio, match="L0001"):
        fetch_audio(store, JOB, {**row, "offset": row["offset"] - 512})
    with pytest.raises(InvalidRow, match="no audio"):
        fetch_audio(store, JOB, {**row, "status": "failed", "shard": None})


def test_index_is_read_by_pyarrow_and_duckdb(store: Store) -> None:
    items = script(30)
    render(store, items)
    n_ok = sum(1 for row, _ in items if row["status"] == "ok")
    samples_ok = sum(read_audio(f)[0].size for _, f in items if f is not None)

    # pyarrow, straight from the store's files
    table = pq.read_table(store.fs_path(f"{job_prefix(JOB)}/index"), filesystem=store.fs)
    assert table.num_rows == len(items)
    assert set(table.column_names) == set(INDEX_SCHEMA.names)

    con = duckdb.connect()
    if store.is_local:   # DuckDB reads the parquet files itself
        con.sql(f"CREATE VIEW idx AS SELECT * FROM read_parquet('{index_glob(store, JOB)}')")
    else:                # no httpfs offline: hand DuckDB the Arrow table read through fsspec
        con.register("idx", read_index(store, JOB))
    got = con.sql("SELECT status, count(*), sum(num_samples) FROM idx GROUP BY status ORDER BY status").fetchall()
    statuses = {s: sum(1 for row, _ in items if row["status"] == s) for s in ("failed", "refused")}
    assert got == [("failed", statuses["failed"], None), ("ok", n_ok, samples_ok),
                   ("refused", statuses["refused"], None)]


def test_shard_is_read_by_the_webdataset_library(store: Store) -> None:
    items = script(8)
    write_shard(store, JOB, "s0", items)
    url = store.url(shard_key(JOB, "s0"))
    if not store.is_local:   # stream the object through fsspec, as a user would from S3
        stream = "import fsspec,shutil,sys; shutil.copyfileobj(fsspec.open(sys.argv[1]).open(), sys.stdout.buffer)"
        url = f"pipe:{shlex.quote(sys.executable)} -c {shlex.quote(stream)} {shlex.quote(url)}"

    samples = list(wds.WebDataset(url, shardshuffle=False, empty_check=False))

    ok = [(row, flac) for row, flac in items if flac is not None]
    assert [s["__key__"] for s in samples] == [row["line_id"] for row, _ in ok]
    for sample, (row, flac) in zip(samples, ok):
        assert sample["flac"] == flac
        meta = json.loads(sample["json"])
        assert meta["line_id"] == row["line_id"] and meta["sha256"] == sha256_hex(flac)
        assert meta["text"] == row["text"] and meta["num_samples"] == make_audio(int(row["line_id"][1:])).size


def test_long_line_ids_get_correct_offsets(store: Store) -> None:
    long_id = "L" + "x" * 127   # name > 100 chars: the tar member gets a PAX header
    flac = encode_flac(make_audio(1), SR)
    write_shard(store, JOB, "s0", [({"line_id": long_id, "status": "ok"}, flac), ok_line(2)])
    assert_render_complete(store, JOB, [long_id, "L0002"])


# -- writer behaviour -----------------------------------------------------------------------------


def test_writer_rolls_over_to_a_new_shard_at_target_bytes(store: Store) -> None:
    items = script(40)
    published = render(store, items, target_bytes=60_000)

    assert len(published) > 2
    assert store.glob(f"{job_prefix(JOB)}/index/*.parquet") == [index_key(JOB, n) for n in sorted(published)]
    for name in published[:-1]:
        with store.open(shard_key(JOB, name)) as f:
            assert len(f.read()) >= 60_000
    assert_render_complete(store, JOB, [row["line_id"] for row, _ in items])


def test_lines_without_audio_alone_make_an_index_part_and_no_tar(store: Store) -> None:
    rows = write_shard(store, JOB, "s0", [not_ok_line(1, "failed"), not_ok_line(2, "refused")])
    assert [r["shard"] for r in rows] == [None, None]
    assert not store.exists(shard_key(JOB, "s0"))
    assert finished_line_ids(store, JOB) == {"L0001", "L0002"}


def test_writer_exits_on_error_without_publishing(store: Store) -> None:
    with pytest.raises(RuntimeError, match="synthesizer died"):
        with ShardWriter(store, JOB, "w0") as writer:
            writer.add(*ok_line(1))
            raise RuntimeError("synthesizer died")
    assert store.list(job_prefix(JOB)) == []
    assert finished_line_ids(store, JOB) == set()


def test_unknown_job_has_an_empty_index(store: Store) -> None:
    assert read_index(store, "never-ran").num_rows == 0
    assert read_index(store, "never-ran").schema == INDEX_SCHEMA
    assert finished_line_ids(store, "never-ran") == set()


@pytest.mark.parametrize("row, flac, error, fragment", [
    ({"line_id": "L1", "status": "ok", "colour": "red"}, "flac", InvalidRow, "unknown index columns"),
    ({"line_id": "L1", "status": "ok", "sha256": "ab"}, "flac", InvalidRow, "set by the shard writer"),
    ({"line_id": "L1", "status": "done"}, "flac", InvalidRow, "'done'"),
    ({"line_id": "L1", "status": "ok"}, None, InvalidRow, "needs its FLAC"),
    ({"line_id": "L1", "status": "failed", "error": "x"}, "flac", InvalidRow, "must not carry audio"),
    ({"line_id": "L1", "status": "refused"}, None, InvalidRow, "needs an error"),
    ({"line_id": "L1", "status": "ok"}, b"RIFF....", InvalidRow, "line L1: "),
    ({"line_id": "L1", "status": "ok"}, "wav", InvalidRow, "mono FLAC.*got WAV"),
    ({"line_id": "L1", "status": "ok"}, "stereo", InvalidRow, "2 channel"),
    ({"line_id": "ep1.line2", "status": "ok"}, "flac", InvalidId, "ep1.line2"),
    ({"line_id": "../x", "status": "ok"}, "flac", InvalidId, r"\.\./x"),
])
def test_writer_refuses_rows_that_break_the_contract(local_store: Store, row, flac, error, fragment) -> None:
    data = {"flac": encode_flac(make_audio(0), SR), "wav": encode_wav(make_audio(0), SR),
            "stereo": encode_flac(np.stack([make_audio(0)] * 2, axis=1), SR)}.get(flac, flac)
    with pytest.raises(error, match=fragment):
        write_shard(local_store, JOB, "s0", [(row, data)])
    assert local_store.list() == []


def test_a_line_added_twice_to_one_shard_is_refused(local_store: Store) -> None:
    with pytest.raises(InvalidRow, match="L0001 was added twice"):
        write_shard(local_store, JOB, "s0", [ok_line(1), ok_line(1)])


def test_index_parts_with_fewer_columns_read_as_nulls(store: Store) -> None:
    write_shard(store, JOB, "s0", script(3))
    old = pa.table({"line_id": ["old1"], "status": ["failed"], "error": ["from an older writer"]})
    buf = io.BytesIO()
    pq.write_table(old, buf)
    store.write_bytes(index_key(JOB, "old"), buf.getvalue())

    table = read_index(store, JOB)
    assert table.num_rows == 4 and table.schema == INDEX_SCHEMA
    row = next(r for r in table.to_pylist() if r["line_id"] == "old1")
    assert row["rtf"] is None and row["voice_id"] is None


# -- crashes and reruns ---------------------------------------------------------------------------


def crash_before_index_parts(store: Store, monkeypatch) -> None:
    """Simulate a worker killed after its tar became visible, before its index part did."""
    real_write = store.write_bytes

    def write_bytes(key: str, data: bytes) -> None:
        if "/index/" in key:
            raise SystemExit("worker killed")
        real_write(key, data)

    monkeypatch.setattr(store, "write_bytes", write_bytes)


def test_a_tar_without_its_index_part_does_not_count_as_finished(store: Store, monkeypatch) -> None:
    items = script(10)
    render(store, items[:5])
    crash_before_index_parts(store, monkeypatch)
    with pytest.raises(SystemExit):
        render(store, items[5:], writer_id="w1")
    monkeypatch.undo()

    orphans = unreferenced_shards(store, JOB)
    assert len(orphans) == 1   # the tar is visible ...
    assert finished_line_ids(store, JOB) == {row["line_id"] for row, _ in items[:5]}   # ... its lines are not done
    assert_render_complete(store, JOB, [row["line_id"] for row, _ in items[:5]])


def test_rerun_after_crash_writes_each_missing_line_exactly_once(store: Store, monkeypatch) -> None:
    items = script(24)
    render(store, items[:10])
    first_run = {key: store.read_bytes(key) for key in store.list(job_prefix(JOB))}
    crash_before_index_parts(store, monkeypatch)
    with pytest.raises(SystemExit):
        render(store, items[10:], writer_id="w1")
    monkeypatch.undo()

    # rerun: same writer ids, so shard sequence numbers start again at 0
    done = finished_line_ids(store, JOB)
    render(store, items, writer_id="w0", skip=done)
    assert_render_complete(store, JOB, [row["line_id"] for row, _ in items])
    for key, data in first_run.items():   # nothing already indexed was touched
        assert store.read_bytes(key) == data

    # a second rerun finds nothing left to do and writes nothing
    before = store.list(job_prefix(JOB))
    assert render(store, items, skip=finished_line_ids(store, JOB)) == []
    assert store.list(job_prefix(JOB)) == before


def test_rerunning_the_same_lines_into_the_orphaned_name_replaces_the_orphan(store: Store, monkeypatch) -> None:
    items = script(6)
    crash_before_index_parts(store, monkeypatch)
    with pytest.raises(SystemExit):
        render(store, items)
    monkeypatch.undo()
    assert len(unreferenced_shards(store, JOB)) == 1

    render(store, items, skip=finished_line_ids(store, JOB))
    assert unreferenced_shards(store, JOB) == []
    assert_render_complete(store, JOB, [row["line_id"] for row, _ in items])


def test_writing_an_already_indexed_shard_again_is_refused(store: Store) -> None:
    write_shard(store, JOB, "s0", script(3))
    before = {key: store.read_bytes(key) for key in store.list(job_prefix(JOB))}
    with pytest.raises(ShardAlreadyIndexed, match="s0.parquet"):
        write_shard(store, JOB, "s0", script(3))
    assert {key: store.read_bytes(key) for key in store.list(job_prefix(JOB))} == before
