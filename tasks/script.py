"""Render scripts: CSV, JSONL or Parquet rows of `line_id, voice_id, text, language` (+ options).

`inspect_script` streams the script once in Arrow batches, reading only the id columns, to check
the contract before any compute: required columns present, no unknown columns, unique and safe line
ids. It returns the voices used and the line count; the driver never holds the whole script.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Iterator

import fsspec
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from .storage import InvalidId, safe_id

REQUIRED = ("line_id", "voice_id", "text", "language")
OPTIONAL = ("target_seconds", "speed", "seed", "top_k", "temperature", "noise_scale")
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
MAX_TEXT_CHARS = 5000


class ScriptError(ValueError):
    """The script as a whole is unusable: unreadable, wrong columns, duplicate or unsafe ids."""


@dataclass
class ScriptInfo:
    url: str
    format: str
    lines: int
    columns: list[str]
    voices: dict[str, int] = field(default_factory=dict)  # voice_id -> line count


def script_format(url: str) -> str:
    ext = posixpath.splitext(url.split("?", 1)[0])[1].lower()
    if ext not in FORMATS:
        raise ScriptError(f"unsupported script format {ext or '(none)'!r} for {url}; use .csv, .jsonl or .parquet")
    return FORMATS[ext]


def iter_batches(url: str, columns: list[str] | None = None, batch_rows: int = 65536) -> Iterator[pa.RecordBatch]:
    """Stream the script as Arrow record batches (all values as strings except Parquet's own types)."""
    fmt = script_format(url)
    try:
        fs, path = fsspec.core.url_to_fs(url)
        if not fs.exists(path):
            raise ScriptError(f"script not found: {url}")
        with fs.open(path, "rb") as f:
            if fmt == "parquet":
                pf = pq.ParquetFile(f)
                cols = [c for c in (columns or pf.schema_arrow.names) if c in pf.schema_arrow.names]
                yield from pf.iter_batches(batch_size=batch_rows, columns=cols)
            elif fmt == "csv":
                reader = pacsv.open_csv(f, read_options=pacsv.ReadOptions(block_size=1 << 22),
                                        convert_options=pacsv.ConvertOptions(
                                            column_types={c: pa.string() for c in REQUIRED}))
                for batch in reader:
                    yield batch if columns is None else batch.select([c for c in columns if c in batch.schema.names])
            else:
                reader = pajson.open_json(f, read_options=pajson.ReadOptions(block_size=1 << 22))
                for batch in reader:
                    yield batch if columns is None else batch.select([c for c in columns if c in batch.schema.names])
    except ScriptError:
        raise
    except (pa.ArrowInvalid, OSError, ValueError) as e:
        raise ScriptError(f"cannot read script {url}: {str(e).splitlines()[0]}") from e


def inspect_script(url: str) -> ScriptInfo:
    fmt = script_format(url)
    seen: set[str] = set()
    voices: dict[str, int] = {}
    columns: list[str] | None = None
    n = 0
    for batch in iter_batches(url):
        if columns is None:
            columns = list(batch.schema.names)
            missing = [c for c in REQUIRED if c not in columns]
            if missing:
                raise ScriptError(f"script {url} lacks required column(s) {', '.join(missing)} "
                                  f"(has: {', '.join(columns)})")
            unknown = [c for c in columns if c not in REQUIRED + OPTIONAL]
            if unknown:
                raise ScriptError(f"unknown column(s) {', '.join(unknown)} in {url}; "
                                  f"allowed: {', '.join(REQUIRED + OPTIONAL)}")
        for line_id, voice_id in zip(batch.column("line_id").to_pylist(), batch.column("voice_id").to_pylist()):
            n += 1
            if line_id is None:
                raise ScriptError(f"row {n} of {url} has no line_id")
            line_id = str(line_id)
            try:
                safe_id(line_id, "line_id")
            except InvalidId as e:
                raise ScriptError(f"row {n} of {url}: {e}") from e
            if line_id in seen:
                raise ScriptError(f"line_id {line_id!r} appears more than once in {url} (row {n})")
            seen.add(line_id)
            v = "" if voice_id is None else str(voice_id)
            voices[v] = voices.get(v, 0) + 1
    if columns is None or n == 0:
        raise ScriptError(f"script {url} has no rows")
    return ScriptInfo(url, fmt, n, columns, voices)
