"""A job's index as a whole: totals by distinct line, the worst lines, compaction, orphaned tars.

Every run adds small index parts (one per shard). `compact` rewrites them as a few large Parquet
files holding the newest row of each line (sorted by line id, row groups of 100k), then deletes the
parts it replaced; `remove_orphans` deletes tars no row points at (a crash between a tar and its
index part, or rows replaced by a later run). Both run at the end of every job and from
`voicefleet jobs compact JOB`, under the job lease.

Crash safety: the compacted file is published before any old part is deleted, so at every moment
each line has at least one row; duplicates in between resolve to the newest row (`read_index`).
DuckDB does the work out of core, scanning the parts through pyarrow (local folder or S3).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from voicefleet.tasks.store.storage import Store

from .index_read import index_dataset
from .index_schema import INDEX_SCHEMA
from .job_lease import JobLease
from .job_paths import job_prefix, read_job

COMPACT_ROWS_PER_FILE = 1_000_000
_LATEST = ("SELECT * FROM raw_index QUALIFY row_number() OVER "
           "(PARTITION BY line_id ORDER BY run DESC NULLS LAST, shard DESC NULLS LAST) = 1")


def _connect(store: Store, job_id: str, tmp: str | None = None) -> duckdb.DuckDBPyConnection | None:
    dataset = index_dataset(store, job_id)
    if dataset is None:
        return None
    con = duckdb.connect()
    con.execute("SET memory_limit='256MB'")
    con.execute("SET threads=2")
    con.execute("SET temp_directory=?", [tmp or tempfile.gettempdir()])
    con.register("raw_index", dataset)
    con.execute(f"CREATE VIEW idx AS {_LATEST}")
    return con


@dataclass
class JobTotals:
    lines_indexed: int = 0   # distinct line ids with a row
    ok: int = 0
    failed: int = 0
    refused: int = 0
    truncated: int = 0
    qc_failed: int = 0
    audio_s: float = 0.0
    index_files: int = 0
    qc_checked: int = 0  # ok lines QC measured (qc_passed not null)
    qc_passed: int = 0

    def as_dict(self) -> dict:
        return {**self.__dict__, "audio_s": round(self.audio_s, 2), "audio_h": round(self.audio_s / 3600, 4)}


def job_totals(store: Store, job_id: str) -> JobTotals:
    con = _connect(store, job_id)
    if con is None:
        return JobTotals()
    row = con.execute("""SELECT count(*), count(*) FILTER (status = 'ok'), count(*) FILTER (status = 'failed'),
                                count(*) FILTER (status = 'refused'), count(*) FILTER (status = 'ok' AND truncated),
                                count(*) FILTER (status = 'ok' AND qc_passed = false),
                                coalesce(sum(duration_s) FILTER (status = 'ok'), 0),
                                count(*) FILTER (status = 'ok' AND qc_passed IS NOT NULL),
                                count(*) FILTER (status = 'ok' AND qc_passed)
                         FROM idx""").fetchone()
    files = len(store.glob(f"{job_prefix(job_id)}/index/*.parquet"))
    return JobTotals(*[int(v) for v in row[:6]], float(row[6]), files, int(row[7]), int(row[8]))


def job_state(job: dict, totals: JobTotals) -> str:
    """A job's state from its record and index: complete when every script line has a row; otherwise
    running or interrupted while its record says running, else incomplete (a rerun resumes it)."""
    if totals.lines_indexed == job.get("lines"):
        return "complete"
    return "incomplete (rerun the render command to resume)" if job.get("status") != "running" else \
        "running or interrupted"


def worst_lines(store: Store, job_id: str, n: int = 10) -> list[dict]:
    """Failed lines first, then lines that failed QC or were truncated, then by WER and similarity."""
    con = _connect(store, job_id)
    if con is None:
        return []
    return con.sql("""
        SELECT line_id, voice_id, status, coalesce(error, qc_reasons) AS reason, duration_s, wer, speaker_similarity,
               truncated, attempts
        FROM idx WHERE status <> 'ok' OR qc_passed = false OR truncated OR wer IS NOT NULL
        ORDER BY (status = 'failed') DESC, (status = 'refused') DESC, (qc_passed = false) DESC, truncated DESC,
                 wer DESC NULLS LAST, speaker_similarity ASC NULLS LAST, line_id
        LIMIT ?""", params=[n]).to_arrow_table().to_pylist()


def compact(store: Store, job_id: str) -> int:
    """Rewrite the index as few large files of the newest row per line; returns files written."""
    parts = store.glob(f"{job_prefix(job_id)}/index/*.parquet")
    if len(parts) <= 1 and not _has_duplicates(store, job_id):
        return 0
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]
    with tempfile.TemporaryDirectory(prefix="vf-compact-") as tmp:
        con = _connect(store, job_id, tmp)
        reader = con.sql("SELECT * FROM idx ORDER BY line_id").to_arrow_reader(100_000)
        written: list[str] = []
        writer, rows, path = None, 0, ""
        for batch in reader:
            if writer is None or rows >= COMPACT_ROWS_PER_FILE:
                if writer is not None:
                    writer.close()
                    written.append(_publish(store, job_id, path, digest, len(written)))
                path = os.path.join(tmp, f"c{len(written)}.parquet")
                writer, rows = pq.ParquetWriter(path, INDEX_SCHEMA), 0
            writer.write_table(pa.Table.from_batches([batch]).cast(INDEX_SCHEMA), row_group_size=100_000)
            rows += batch.num_rows
        if writer is not None:
            writer.close()
            written.append(_publish(store, job_id, path, digest, len(written)))
    for key in parts:
        if key not in written:
            store.delete(key)
    return len(written)


def _publish(store: Store, job_id: str, path: str, digest: str, i: int) -> str:
    key = f"{job_prefix(job_id)}/index/compact-{digest}-{i:04d}.parquet"
    store.put_file(path, key)
    return key


def _has_duplicates(store: Store, job_id: str) -> bool:
    con = _connect(store, job_id)
    return con is not None and con.execute("SELECT count(*) > count(DISTINCT line_id) FROM raw_index").fetchone()[0]


def remove_orphans(store: Store, job_id: str) -> list[str]:
    """Delete shard tars that no current index row references; returns their keys."""
    prefix = job_prefix(job_id)
    con = _connect(store, job_id)
    referenced = set()
    if con is not None:
        referenced = {f"{prefix}/{s}" for (s,) in con.execute("SELECT DISTINCT shard FROM idx WHERE shard IS NOT NULL").fetchall()}
    orphans = [k for k in store.glob(f"{prefix}/shards/*.tar") if k not in referenced]
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


def compact_job(store: Store, job_id: str) -> Compaction:
    """Compact a job's index and remove its orphaned tars under the job's lease (`voicefleet jobs compact`)."""
    read_job(store, job_id)
    before = job_totals(store, job_id).index_files
    with JobLease(store, job_id):
        written = compact(store, job_id)
        orphans = remove_orphans(store, job_id)
    return Compaction(before, job_totals(store, job_id).index_files, written, orphans)
