"""Render output: WebDataset tar shards plus a Parquet index, at `renders/<job_id>/`.

Layout (design.md, "Render output"):

    renders/<job_id>/shards/<name>.tar      members <line_id>.flac then <line_id>.json per line
    renders/<job_id>/index/<name>.parquet   one row per script line (INDEX_SCHEMA); g<generation>-<name>.parquet
                                            when written under a job lease (its fence: tasks/render/job_fence.py)

A shard and its index part share `<name>`. Publishing one is two atomic writes in a fixed
order: the tar (built whole in a local temp file) first, then the index part. So a reader who
finds a row always finds its bytes; a crash between the two leaves a tar that no row points at,
which `read_index` never sees and `finished_line_ids` does not count, so those lines are
rendered again. Failed and refused lines get rows too (no shard). An ok line is never rendered
again; a failed one only with `--retry-failed`, a refused one when its refusal changed. The new
row carries a later `run`, and `read_index` returns the newest row per line id.

`ShardWriter` names its shards `<writer_id>-<seq>-<digest of the line ids>`: a rerun never reuses
the name of a part that points at other lines, and the index part for a name is refused if it
exists already. The render pipeline instead names a shard after its content (`content_name`), so a
retried write of the same result replaces itself (`replace=True`) instead of adding rows.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from voicefleet.tasks.measure.audio import AudioDecodeError, probe_audio
from voicefleet.tasks.store.ids import safe_id
from voicefleet.tasks.store.storage import Store

from .index_schema import CALLER_FIELDS, INDEX_SCHEMA, STATUSES, WRITER_FIELDS
from .job_paths import index_key, shard_key

# The one index-row schema (INDEX_SCHEMA, STATUSES, ...) lives in tasks/render/index_schema.py.
_LOCATION_FIELDS = ("shard", "offset", "size")

DEFAULT_TARGET_BYTES = 256 << 20
DEFAULT_MAX_ROWS = 20_000


class InvalidRow(ValueError):
    """A line handed to the shard writer that cannot become an index row."""


class ShardAlreadyIndexed(FileExistsError):
    """An index part with this shard name exists: writing it again would re-render lines."""


# -- bytes -------------------------------------------------------------------------------------


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of a line's FLAC bytes (the index's `sha256` column)."""
    return hashlib.sha256(data).hexdigest()


# -- rows --------------------------------------------------------------------------------------


def _complete_row(row: Mapping[str, Any], flac: bytes | None) -> dict[str, Any]:
    """Validate a caller's row and add the columns derived from its FLAC bytes."""
    line_id = safe_id(row.get("line_id"), "line_id")
    unknown = set(row) - CALLER_FIELDS
    if unknown & WRITER_FIELDS:
        raise InvalidRow(f"line {line_id}: {sorted(unknown & WRITER_FIELDS)} are set by the shard writer")
    if unknown:
        raise InvalidRow(f"line {line_id}: unknown index columns {sorted(unknown)}")
    status = row.get("status")
    if status not in STATUSES:
        raise InvalidRow(f"line {line_id}: status {status!r} is not one of {STATUSES}")
    if status == "ok" and flac is None:
        raise InvalidRow(f"line {line_id}: status 'ok' needs its FLAC bytes")
    if status != "ok" and flac is not None:
        raise InvalidRow(f"line {line_id}: status {status!r} must not carry audio")
    if status != "ok" and not row.get("error"):
        raise InvalidRow(f"line {line_id}: status {status!r} needs an error a person can act on")

    full = {name: row.get(name) for name in INDEX_SCHEMA.names}
    if flac is not None:
        try:
            info = probe_audio(flac, name=f"line {line_id}")
        except AudioDecodeError as exc:
            raise InvalidRow(str(exc)) from exc
        if info.format != "FLAC" or info.channels != 1:
            raise InvalidRow(f"line {line_id}: audio must be mono FLAC (encode_flac), "
                             f"got {info.format} with {info.channels} channel(s)")
        full.update(size=len(flac), sample_rate=info.sample_rate, num_samples=info.frames,
                    duration_s=info.duration_s, sha256=sha256_hex(flac))
    return full


def _sample_json(row: Mapping[str, Any]) -> bytes:
    """The `<line_id>.json` member: the row without its location and without nulls."""
    meta = {k: v for k, v in row.items() if k not in _LOCATION_FIELDS and v is not None}
    # numpy scalars (a metric computed with numpy) become plain numbers
    return json.dumps(meta, sort_keys=True, ensure_ascii=False,
                      default=lambda v: v.item() if hasattr(v, "item") else str(v)).encode("utf-8")


# -- building and publishing one shard ----------------------------------------------------------


class _TarSpool:
    """A tar being built in a local temp file; `add` returns where the member's data starts."""

    def __init__(self, spool_dir: str | None) -> None:
        fd, self.path = tempfile.mkstemp(prefix="vf-shard-", suffix=".tar", dir=spool_dir)
        self._file = os.fdopen(fd, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT)
        self._mtime = int(time.time())

    @property
    def nbytes(self) -> int:
        return self._tar.offset

    def add(self, name: str, data: bytes) -> int:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), self._mtime, 0o644
        self._tar.addfile(info, io.BytesIO(data))
        # addfile leaves `offset` after the data padded to whole 512-byte blocks; the header
        # (one block, more with PAX records for long names) sits before the data.
        padded = -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        return self._tar.offset - padded

    def finish(self) -> None:
        self._tar.close()
        self._file.close()

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class _PendingShard:
    """The rows (and, for ok lines, the tar) of one shard not yet published."""

    def __init__(self, spool_dir: str | None) -> None:
        self.rows: list[dict[str, Any]] = []
        self._spool_dir = spool_dir
        self._spool: _TarSpool | None = None
        self._line_ids: set[str] = set()

    @property
    def nbytes(self) -> int:
        return self._spool.nbytes if self._spool else 0

    def add(self, row: Mapping[str, Any], flac: bytes | None) -> None:
        full = _complete_row(row, flac)
        line_id = full["line_id"]
        if line_id in self._line_ids:
            raise InvalidRow(f"line {line_id} was added twice to the same shard")
        if flac is not None:
            if self._spool is None:
                self._spool = _TarSpool(self._spool_dir)
            full["offset"] = self._spool.add(f"{line_id}.flac", flac)
            self._spool.add(f"{line_id}.json", _sample_json(full))
        self.rows.append(full)
        self._line_ids.add(line_id)

    def publish(self, store: Store, job_id: str, name: str, replace: bool = False, generation: int | None = None,
                fence: Callable[[], None] | None = None) -> list[dict[str, Any]]:
        """Make the tar visible, then its index part. Returns the index rows.

        `replace=True` is for names derived from the content (`content_name`): a retried write
        of the same lines with the same bytes lands on the same keys and replaces them.
        `generation`: the job lease generation the part is written under (its name carries it, and
        readers judge it by that generation's fence, tasks/render/job_fence.py). `fence` is called
        after the tar, right before the index part, and raises to stop a run that lost its lease.
        """
        part = index_key(job_id, name, generation)
        if not replace and store.exists(part):
            raise ShardAlreadyIndexed(f"{store.url(part)} exists; its lines are already rendered")
        if self._spool is not None:
            self._spool.finish()
            store.put_file(self._spool.path, shard_key(job_id, name))
            for row in self.rows:
                if row["status"] == "ok":
                    row["shard"] = f"shards/{name}.tar"
        if fence is not None:
            fence()
        table = pa.Table.from_pylist(self.rows, schema=INDEX_SCHEMA)
        buf = io.BytesIO()
        pq.write_table(table, buf)
        store.write_bytes(part, buf.getvalue())
        return self.rows

    def discard(self) -> None:
        if self._spool is not None:
            self._spool.discard()


def write_shard(
    store: Store,
    job_id: str,
    shard_name: str,
    items: Iterable[tuple[Mapping[str, Any], bytes | None]],
    spool_dir: str | None = None,
    replace: bool = False,
    generation: int | None = None,
    fence: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """Write one shard and its index part from `(row, flac_or_None)` items; return the rows.

    `replace`: overwrite a part of the same name (only for content-derived names, `content_name`).
    `generation`, `fence`: the job lease's fencing token and check (`_PendingShard.publish`).
    """
    safe_id(shard_name, "shard name")
    pending = _PendingShard(spool_dir)
    try:
        for row, flac in items:
            pending.add(row, flac)
        return pending.publish(store, job_id, shard_name, replace=replace, generation=generation, fence=fence)
    finally:
        pending.discard()


class ShardWriter:
    """Streams rendered lines into shards of about `target_bytes`, publishing each when full.

    One writer per concurrent producer (e.g. per Ray actor), each with a `writer_id` no other
    running writer of the job uses. The writer checks a line id is not repeated within a shard;
    skipping lines that are already finished (`finished_line_ids`) is the caller's job.
    Use as a context manager: a clean exit publishes the last shard; an exception discards the
    unpublished lines (they have no row, so a rerun renders them).
    """

    def __init__(
        self,
        store: Store,
        job_id: str,
        writer_id: str,
        target_bytes: int = DEFAULT_TARGET_BYTES,
        max_rows: int = DEFAULT_MAX_ROWS,
        spool_dir: str | None = None,
    ) -> None:
        self.store = store
        self.job_id = safe_id(job_id, "job_id")
        self.writer_id = safe_id(writer_id, "writer_id")
        self.target_bytes = target_bytes
        self.max_rows = max_rows
        self.published: list[str] = []   # shard names, in publishing order
        self._spool_dir = spool_dir
        self._pending = _PendingShard(spool_dir)
        self._closed = False

    def add(self, row: Mapping[str, Any], flac: bytes | None = None) -> None:
        """Buffer one line: `flac` for status "ok", None for "failed"/"refused"."""
        if self._closed:
            raise RuntimeError(f"ShardWriter {self.writer_id} of job {self.job_id} is closed")
        self._pending.add(row, flac)
        if self._pending.nbytes >= self.target_bytes or len(self._pending.rows) >= self.max_rows:
            self.flush()

    def flush(self) -> str | None:
        """Publish the buffered lines as one shard; return its name (None if nothing buffered)."""
        pending = self._pending
        if not pending.rows:
            return None
        digest = hashlib.sha256("\n".join(r["line_id"] for r in pending.rows).encode()).hexdigest()
        name = f"{self.writer_id}-{len(self.published):05d}-{digest[:12]}"
        try:
            pending.publish(self.store, self.job_id, name)
        finally:
            pending.discard()
            self._pending = _PendingShard(self._spool_dir)
        self.published.append(name)
        return name

    def close(self) -> None:
        if not self._closed:
            self.flush()
            self._closed = True

    def abort(self) -> None:
        """Drop the unpublished lines without writing anything."""
        self._pending.discard()
        self._pending = _PendingShard(self._spool_dir)
        self._closed = True

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# -- naming ------------------------------------------------------------------------------------


def content_name(items: Iterable[tuple[Mapping[str, Any], bytes | None]]) -> str:
    """A shard name derived from what it holds (line ids, statuses, audio hashes or errors).

    A retried write of the same lines with the same result gets the same name and replaces
    itself; a different result gets another name, and the newer row wins (`read_index`).
    """
    h = hashlib.sha256()
    for row, flac in items:
        detail = sha256_hex(flac) if flac is not None else str(row.get("error"))
        h.update(f"{row['line_id']}\x1f{row.get('status')}\x1f{row.get('run')}\x1f{detail}\x1e".encode())
    return f"part-{h.hexdigest()[:24]}"
