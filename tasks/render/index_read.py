"""Reading a render job's output: its index (the newest row per line), one line's FLAC bytes by a
ranged read, and tars no row points at. The writing side is tasks/render/shards.py.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from voicefleet.tasks.store.storage import Store

from .index_schema import INDEX_SCHEMA
from .job_paths import job_prefix
from .shards import InvalidRow, sha256_hex


class CorruptAudio(IOError):
    """Bytes fetched for a line do not match the size or sha256 its index row records."""


def index_dataset(store: Store, job_id: str) -> pads.Dataset | None:
    """The job's index parts as one pyarrow dataset with INDEX_SCHEMA (None when there is none)."""
    parts = store.glob(f"{job_prefix(job_id)}/index/*.parquet")
    if not parts:
        return None
    return pads.dataset([store.fs_path(p) for p in parts], schema=INDEX_SCHEMA, format="parquet",
                        filesystem=store.fs)


def latest_rows(table: pa.Table) -> pa.Table:
    """One row per line id: the one from the latest run (ties: the greatest shard name)."""
    if table.num_rows == 0 or pc.count_distinct(table["line_id"]).as_py() == table.num_rows:
        return table
    ordered = table.sort_by([("line_id", "ascending"), ("run", "descending"), ("shard", "descending")])
    ids = ordered["line_id"].combine_chunks()
    keep = pa.concat_arrays([pa.array([True]), pc.not_equal(ids[1:], ids[:-1])])
    return ordered.filter(keep)


def read_index(store: Store, job_id: str, columns: list[str] | None = None) -> pa.Table:
    """The index of a job, one row per line id (parts written with fewer columns read as nulls).

    A line rendered again (`--retry-failed`, a refusal lifted by a new grant) has a newer row in a
    later run; only the newest is returned. Compaction (tasks/render/job_index.py) drops the old ones.
    """
    dataset = index_dataset(store, job_id)
    if dataset is None:
        schema = INDEX_SCHEMA if columns is None else pa.schema([INDEX_SCHEMA.field(c) for c in columns])
        return schema.empty_table()
    need = None if columns is None else list(dict.fromkeys([*columns, "line_id", "run", "shard"]))
    table = latest_rows(dataset.to_table(columns=need))
    return table if columns is None else table.select(columns)


def finished_line_ids(store: Store, job_id: str) -> set[str]:
    """Lines that must not be rendered again: every line with an index row, whatever its status."""
    return set(read_index(store, job_id, columns=["line_id"]).column("line_id").to_pylist())


def fetch_audio(store: Store, job_id: str, row: Mapping[str, Any]) -> bytes:
    """The FLAC bytes of one ok line, with one ranged read; checked against size and sha256."""
    line_id = row["line_id"]
    if row.get("status") != "ok" or not row.get("shard"):
        raise InvalidRow(f"line {line_id} has status {row.get('status')!r} and no audio")
    data = store.read_range(f"{job_prefix(job_id)}/{row['shard']}", row["offset"], row["size"])
    digest = sha256_hex(data)
    if digest != row["sha256"]:
        raise CorruptAudio(f"line {line_id}: bytes at {row['shard']}@{row['offset']}+{row['size']} "
                           f"hash to {digest[:16]}..., index says {str(row['sha256'])[:16]}...")
    return data


def unreferenced_shards(store: Store, job_id: str) -> list[str]:
    """Shard keys no index row points at (left by a crash between tar and index part)."""
    prefix = job_prefix(job_id)
    referenced = {f"{prefix}/{s}" for s in read_index(store, job_id, ["shard"]).column("shard").to_pylist() if s}
    return [key for key in store.glob(f"{prefix}/shards/*.tar") if key not in referenced]
