"""Reading a render job's output: its index (the newest row per line), one line's FLAC bytes by a
ranged read, and tars no row points at. The writing side is tasks/render/shards.py.

Two ways in. `read_index` returns the index as one Arrow table: for a test or a small job, its
memory grows with the job. Code that handles a job whole (tasks/render/job_index.py, job_report.py)
registers the parts with DuckDB instead (`register_index`) and asks for the newest row per line with
`newest_sql` (an `arg_max` GROUP BY, which spills to disk; a window over every row does not), so that
memory stays flat however many lines the job has.
"""
from __future__ import annotations

import tempfile
from collections.abc import Mapping
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from voicefleet.tasks.store.storage import Store

from .index_schema import INDEX_SCHEMA
from .job_fence import trusted_parts
from .job_paths import job_prefix
from .shards import InvalidRow, sha256_hex


class CorruptAudio(IOError):
    """Bytes fetched for a line do not match the size or sha256 its index row records."""


def index_parts(store: Store, job_id: str) -> list[str]:
    """The keys of the job's index parts a reader may use, sorted: every part except those a run
    wrote after it lost the job's lease (tasks/render/job_fence.py)."""
    return trusted_parts(store, job_id, store.glob_times(f"{job_prefix(job_id)}/index/*.parquet"))


def index_dataset(store: Store, job_id: str) -> pads.Dataset | None:
    """The job's index parts (`index_parts`) as one pyarrow dataset with INDEX_SCHEMA (None when there is none)."""
    parts = index_parts(store, job_id)
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


def unreferenced_shards(store: Store, job_id: str, older_than: float | None = None) -> list[str]:
    """Shard keys no line's newest index row points at (a crash between tar and index part, rows
    replaced by a later run), sorted; with `older_than` (epoch seconds, store clock) only tars whose
    store modification time is earlier. An anti-join in DuckDB: no set of referenced shards in Python."""
    from .out_of_core import MEMORY_MB, with_memory

    prefix = job_prefix(job_id)
    tars = store.glob_times(f"{prefix}/shards/*.tar")  # listed before the index: see remove_orphans
    keys = [k for k, t in tars.items() if older_than is None or t < older_than]
    parts = index_parts(store, job_id)
    if not keys or not parts:
        return keys

    def anti_join(con: duckdb.DuckDBPyConnection) -> list[str]:
        register_index(con, store, parts)
        con.register("tars", pa.table({"shard": [k[len(prefix) + 1:] for k in keys]}))
        found = con.execute(f"SELECT shard FROM tars ANTI JOIN (SELECT DISTINCT shard FROM ({newest_sql('shard')}) "
                            "WHERE shard IS NOT NULL) used USING (shard) ORDER BY shard").fetchall()
        return [f"{prefix}/{s}" for (s,) in found]

    with tempfile.TemporaryDirectory(prefix="vf-orphans-") as tmp:
        return with_memory(MEMORY_MB, tmp, anti_join)


# -------------------------------------------------------------------------------- DuckDB
_SQL_TYPES = {pa.string(): "VARCHAR", pa.int64(): "BIGINT", pa.int32(): "INTEGER", pa.float64(): "DOUBLE",
              pa.bool_(): "BOOLEAN"}
def newest_sql(fields: str, where: str = "") -> str:
    """SQL for the newest row of each line (the latest run; ties: the greatest shard name) over the
    view `raw_index`: line_id plus `fields`, `struct_pack` arguments (`status, wer` or `n := expr`).
    `where` filters rows before the choice. An `arg_max` GROUP BY spills to disk under a memory limit
    (a `row_number()` window over every row did not: 256 MB was not enough for 1e6 rows)."""
    return (f"SELECT line_id, unnest(arg_max(struct_pack({fields}), (coalesce(run, -1), coalesce(shard, '')))) "
            f"FROM raw_index {f'WHERE {where}' if where else ''} GROUP BY line_id")


def sql_str(value: str) -> str:
    """A SQL string literal (for statements that take no parameters: views, COPY)."""
    return "'" + value.replace("'", "''") + "'"


def attach_store(con: duckdb.DuckDBPyConnection, store: Store) -> None:
    """Let DuckDB read the store's URLs through its fsspec filesystem (S3, memory); once per connection."""
    if store.is_local:
        return
    try:
        con.register_filesystem(store.fs)
    except duckdb.InvalidInputException as e:
        if "already been registered" not in str(e):
            raise


def register_index(con: duckdb.DuckDBPyConnection, store: Store, parts: list[str], name: str = "raw_index") -> None:
    """A DuckDB view `name` over exactly the index parts `parts` (keys of `store`), with every
    INDEX_SCHEMA column: absent from every part (written before it existed) it reads as NULL.

    DuckDB's own Parquet reader (local files, or the store's fsspec filesystem) keeps to the
    connection's memory limit; a pyarrow dataset scanned through DuckDB grew with the job (536 MB
    against 326 MB totalling a 3e6-row index)."""
    types = {f.name: _SQL_TYPES[f.type] for f in INDEX_SCHEMA}
    if not parts:
        columns = ", ".join(f'CAST(NULL AS {t}) AS "{c}"' for c, t in types.items())
        con.execute(f"CREATE VIEW {name} AS SELECT {columns} WHERE false")
        return
    attach_store(con, store)
    scan = f"read_parquet([{', '.join(sql_str(store.url(p)) for p in parts)}], union_by_name = true)"
    have = {c: t for c, t, *_ in con.execute(f"DESCRIBE SELECT * FROM {scan}").fetchall()}
    columns = ", ".join(_column(c, t, have.get(c)) for c, t in types.items())
    con.execute(f"CREATE VIEW {name} AS SELECT {columns} FROM {scan}")


def _column(name: str, sql_type: str, found: str | None) -> str:
    """One column of the index view: as stored, cast to the schema's type, or NULL when absent."""
    if found == sql_type:
        return f'"{name}"'
    source = "NULL" if found is None else f'"{name}"'
    return f'CAST({source} AS {sql_type}) AS "{name}"'
