"""A job's index as a whole: totals by distinct line, the worst lines, compaction, orphaned tars.

Every run adds small index parts (one per shard). `compact` rewrites them as a few large Parquet
files holding the newest row of each line (sorted by line id, row groups of 100k), then deletes the
parts it replaced; `remove_orphans` deletes tars no row points at (a crash between a tar and its
index part, or rows replaced by a later run). Both run at the end of every job and from
`voicefleet jobs compact JOB`, under the job lease.

Which lines count: the flow writes the current script's lines (line_id, line_hash) to the job as a
manifest (tasks/render/plan.py `write_manifest`). Each indexed line's newest row then has a place:

    current   in the script, and made from its current line_hash (or from before hashes: null)
    stale     in the script, made from another hash: the line was edited; a rerun renders it again
    gone      no longer in the script: kept in the index, reported apart (`not_in_script`)

Totals, the state and the worst lines count current lines only; a job without a manifest (before
issue 21) counts every indexed line as current.

Memory stays flat as the job grows: DuckDB reads the parts (tasks/render/index_read.py
`register_index`), picks the newest row per line with an `arg_max` GROUP BY and joins the manifest,
spilling to disk under a small memory limit that is raised only when a query runs out of it
(tasks/render/out_of_core.py); only the worst N lines reach Python. Compaction streams the index
sorted by (line id, newest first) in small Arrow batches and keeps each line's first row. Measured
with `python benchmarks/job_scale.py --sizes 100000,1000000,3000000` (see benchmarks/README.md).

Crash safety: the compacted file is published before any old part is deleted, so at every moment
each line has at least one row; duplicates in between resolve to the newest row.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from voicefleet.tasks.store.storage import Store

from .index_read import attach_store, index_parts, newest_sql, register_index, sql_str, unreferenced_shards
from .index_schema import INDEX_SCHEMA
from .job_fence import check_fence, fenced_out_parts
from .job_lease import JobLease
from .job_paths import index_key, read_job, script_lines_glob
from .out_of_core import MEMORY_MB, with_memory

COMPACT_ROWS_PER_FILE = 1_000_000
ROW_GROUP_ROWS = 100_000
SORT_BATCH_ROWS = 10_000   # rows per Arrow batch out of DuckDB's sort (100k batches: +150 MB at 3e6 rows)
COMPACT_MEMORY_MB = (128, 256, 1024)  # the wide sort needs more than 64 MB
# The newest row's columns the totals need, as struct_pack arguments
TOTAL_FIELDS = "status, truncated, qc_passed, duration_s"


def open_lines(con: duckdb.DuckDBPyConnection, store: Store, job_id: str, fields: str,
               parts: list[str] | None = None) -> int | None:
    """Views on `con`: `raw_index` (the job's index parts, `parts` or all of them) and `lines` (the
    newest row of every indexed line: line_id, `fields` (struct_pack arguments, line_hash not among
    them), line_hash and `place`, see the module docstring). Returns the number of lines in the
    script's manifest; None when the job has none."""
    register_index(con, store, index_parts(store, job_id) if parts is None else parts)
    newest = newest_sql(f"{fields}, line_hash")
    manifest = script_lines_glob(store, job_id)
    if manifest is None:
        con.execute(f"CREATE VIEW lines AS SELECT *, 'current' AS place FROM ({newest})")
        return None
    attach_store(con, store)
    con.execute(f"CREATE VIEW script AS SELECT line_id, line_hash FROM read_parquet({sql_str(manifest)})")
    con.execute(f"""CREATE VIEW lines AS SELECT n.*,
                        CASE WHEN s.line_id IS NULL THEN 'gone'
                             WHEN n.line_hash IS NULL OR n.line_hash = s.line_hash THEN 'current'
                             ELSE 'stale' END AS place
                    FROM ({newest}) n LEFT JOIN script s ON n.line_id = s.line_id""")
    return int(con.execute("SELECT count(*) FROM script").fetchall()[0][0])


@dataclass
class JobTotals:
    """A job's lines by their newest row. `lines_indexed`: current lines (see the module docstring);
    ok + failed + refused = lines_indexed. `script_lines`: lines in the manifest (None: no manifest);
    `stale`: script lines whose row was made from an older version of them; `not_in_script`:
    indexed lines the script no longer has (in no other count)."""

    lines_indexed: int = 0
    ok: int = 0
    failed: int = 0
    refused: int = 0
    truncated: int = 0
    qc_failed: int = 0
    audio_s: float = 0.0
    index_files: int = 0
    qc_checked: int = 0  # ok lines QC measured (qc_passed not null)
    qc_passed: int = 0
    script_lines: int | None = None
    stale: int = 0
    not_in_script: int = 0

    def as_dict(self) -> dict:
        return {**self.__dict__, "audio_s": round(self.audio_s, 2), "audio_h": round(self.audio_s / 3600, 4)}


def totals_of(con: duckdb.DuckDBPyConnection, index_files: int, script_lines: int | None,
              relation: str = "lines") -> JobTotals:
    """JobTotals from the `lines` view of `open_lines` (or a table made from it)."""
    row = con.execute(f"""
        SELECT count(*) FILTER (place = 'current'), count(*) FILTER (place = 'current' AND status = 'ok'),
               count(*) FILTER (place = 'current' AND status = 'failed'),
               count(*) FILTER (place = 'current' AND status = 'refused'),
               count(*) FILTER (place = 'current' AND status = 'ok' AND truncated),
               count(*) FILTER (place = 'current' AND status = 'ok' AND qc_passed = false),
               coalesce(sum(duration_s) FILTER (place = 'current' AND status = 'ok'), 0),
               count(*) FILTER (place = 'current' AND status = 'ok' AND qc_passed IS NOT NULL),
               count(*) FILTER (place = 'current' AND status = 'ok' AND qc_passed),
               count(*) FILTER (place = 'stale'), count(*) FILTER (place = 'gone')
        FROM {relation}""").fetchall()[0]
    return JobTotals(*[int(v) for v in row[:6]], float(row[6]), index_files, int(row[7]), int(row[8]),
                     script_lines, int(row[9]), int(row[10]))


def job_totals(store: Store, job_id: str) -> JobTotals:
    parts = index_parts(store, job_id)

    def count(con: duckdb.DuckDBPyConnection) -> JobTotals:
        return totals_of(con, len(parts), open_lines(con, store, job_id, TOTAL_FIELDS, parts))

    with tempfile.TemporaryDirectory(prefix="vf-totals-") as tmp:
        return with_memory(MEMORY_MB, tmp, count)


def job_complete(job: dict, totals: JobTotals) -> bool:
    """Every line of the current script has a row made from it (failed and refused rows count:
    `totals.failed` / `refused` say whether all became audio). Without a manifest: as many lines
    indexed as the job record's script had."""
    expected = totals.script_lines if totals.script_lines is not None else job.get("lines")
    return totals.lines_indexed == expected


def job_state(job: dict, totals: JobTotals) -> str:
    """A job's state from its record and index: complete (with failures, when some lines failed or
    were refused); otherwise running or interrupted while its record says running, else incomplete
    (a rerun resumes it)."""
    if job_complete(job, totals):
        if totals.failed or totals.refused:
            return f"complete with failures ({totals.failed} failed, {totals.refused} refused)"
        return "complete"
    return "incomplete (rerun the render command to resume)" if job.get("status") != "running" else \
        "running or interrupted"


WORST_ORDER = ("(status = 'failed') DESC, (status = 'refused') DESC, (qc_passed = false) DESC, truncated DESC, "
               "wer DESC NULLS LAST, speaker_similarity ASC NULLS LAST, line_id")


def worst_lines(store: Store, job_id: str, n: int = 10) -> list[dict]:
    """Failed lines first, then lines that failed QC or were truncated, then by WER and similarity
    (current lines only). The ranking reads a few narrow columns; the n lines' details come after."""
    def worst(con: duckdb.DuckDBPyConnection) -> list[dict]:
        open_lines(con, store, job_id, "status, qc_passed, truncated, wer, speaker_similarity")
        ids = [i for (i,) in con.execute(f"""
            SELECT line_id FROM lines WHERE place = 'current'
              AND (status <> 'ok' OR qc_passed = false OR truncated OR wer IS NOT NULL)
            ORDER BY {WORST_ORDER} LIMIT ?""", [n]).fetchall()]
        rows = line_details(con, ids, "voice_id, status, reason := coalesce(error, qc_reasons), duration_s, wer, "
                                      "speaker_similarity, truncated, attempts")
        return [rows[i] for i in ids]

    with tempfile.TemporaryDirectory(prefix="vf-worst-") as tmp:
        return with_memory(MEMORY_MB, tmp, worst)


def line_details(con: duckdb.DuckDBPyConnection, ids: list[str], fields: str) -> dict[str, dict]:
    """line_id -> its newest row's `fields` (struct_pack arguments), for a few lines of `raw_index`."""
    if not ids:
        return {}
    con.register("picked", pa.table({"picked_id": pa.array(ids, pa.string())}))
    rows = con.sql(newest_sql(fields, "line_id IN (SELECT picked_id FROM picked)")).to_arrow_table().to_pylist()
    return {r["line_id"]: r for r in rows}


# -------------------------------------------------------------------------------- compaction
def compact(store: Store, job_id: str, generation: int | None = None) -> int:
    """Rewrite the index as few large files of the newest row per line; returns files written.

    The parts are listed once; exactly those are compacted and then deleted (a part written after
    the listing stays). With `generation` (the job lease's) the files are named under it, and the
    old parts are deleted only while that generation still holds the lease (`JobLeaseLost` if not),
    with the parts older generations wrote after their fence (never read)."""
    parts = index_parts(store, job_id)
    if not parts:
        return 0
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]
    with tempfile.TemporaryDirectory(prefix="vf-compact-") as tmp:
        files = with_memory(COMPACT_MEMORY_MB, tmp, lambda con: _write_newest(con, store, parts, tmp))
        written = []
        for i, path in enumerate(files):
            key = index_key(job_id, f"compact-{digest}-{i:04d}", generation)
            store.put_file(path, key)
            written.append(key)
    if generation is not None:
        check_fence(store, job_id, generation)  # a run that lost the lease deletes nothing
        for key in fenced_out_parts(store, job_id, generation):
            store.delete(key)  # a lost run's late parts: never read, and gone from a plain glob of index/
    if not written:  # one part without duplicates: already compact, nothing replaces it
        return 0
    for key in parts:
        if key not in written:
            store.delete(key)
    return len(written)


def _write_newest(con: duckdb.DuckDBPyConnection, store: Store, parts: list[str], tmp: str) -> list[str]:
    """The newest row of every line in `parts`, sorted by line id, as local Parquet files in `tmp`;
    [] when `parts` is one file without duplicates (already compact)."""
    register_index(con, store, parts)
    if len(parts) == 1 and not con.execute("SELECT count(*) > count(DISTINCT line_id) FROM raw_index").fetchall()[0][0]:
        return []
    reader = con.sql("SELECT * FROM raw_index ORDER BY line_id, run DESC NULLS LAST, shard DESC NULLS LAST"
                     ).to_arrow_reader(SORT_BATCH_ROWS)
    files: list[str] = []
    writer, rows, pending, last = None, 0, [], None
    for batch in reader:
        if batch.num_rows == 0:
            continue
        ids = batch.column("line_id")
        before = pa.concat_arrays([pa.array([last], ids.type), ids.slice(0, len(ids) - 1)])
        batch, last = batch.filter(pc.fill_null(pc.not_equal(ids, before), True)), ids[-1].as_py()
        pending.append(batch)
        if sum(b.num_rows for b in pending) < ROW_GROUP_ROWS:
            continue
        if writer is None or rows >= COMPACT_ROWS_PER_FILE:
            writer, rows = _next_file(writer, files, tmp), 0
        rows += _write_group(writer, pending)
    if pending:
        if writer is None or rows >= COMPACT_ROWS_PER_FILE:
            writer = _next_file(writer, files, tmp)
        _write_group(writer, pending)
    if writer is not None:
        writer.close()
    return files


def _next_file(writer: pq.ParquetWriter | None, files: list[str], tmp: str) -> pq.ParquetWriter:
    if writer is not None:
        writer.close()
    files.append(os.path.join(tmp, f"c{len(files):04d}.parquet"))
    return pq.ParquetWriter(files[-1], INDEX_SCHEMA)


def _write_group(writer: pq.ParquetWriter, pending: list[pa.RecordBatch]) -> int:
    """Write the pending batches as one row group and empty the list; returns its rows."""
    table = pa.Table.from_batches(pending).cast(INDEX_SCHEMA)
    writer.write_table(table, row_group_size=table.num_rows)
    pending.clear()
    return table.num_rows


# -------------------------------------------------------------------------------- orphans, under the lease
def remove_orphans(store: Store, job_id: str, older_than: float | None = None) -> list[str]:
    """Delete shard tars no line's newest row references; returns their keys. With `older_than`
    (epoch seconds, store clock: the lease's start) only tars the store last modified before it:
    a run that lost the lease may still be writing younger ones. Tars are listed before the index,
    so a tar whose index part was published before the listing is never taken for an orphan."""
    orphans = unreferenced_shards(store, job_id, older_than)
    for key in orphans:
        store.delete(key)
    return orphans


@dataclass(frozen=True)
class Compaction:
    """What `compact_job` did: index files before and after, files written, orphaned tars removed."""

    files_before: int
    files_after: int
    written: int
    orphans: list[str]


def compact_job(store: Store, job_id: str, unsafe_single_writer: bool = False) -> Compaction:
    """Compact a job's index and remove its orphaned tars under the job's lease (`voicefleet jobs compact`);
    `unsafe_single_writer` as for a render (a store without exclusive create)."""
    read_job(store, job_id)
    before = len(index_parts(store, job_id))
    with JobLease(store, job_id, unsafe_single_writer=unsafe_single_writer) as lease:
        written = compact(store, job_id, generation=lease.generation)
        orphans = remove_orphans(store, job_id, older_than=lease.acquired_store_time)
    return Compaction(before, len(index_parts(store, job_id)), written, orphans)
