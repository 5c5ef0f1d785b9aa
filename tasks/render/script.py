"""Render scripts: CSV, JSONL or Parquet rows of `line_id, voice_id, text, language` (+ options).

`iter_batches` is the one reader of a script: it streams the file in Arrow record batches and is
read once per render run (by the plan, tasks/render/plan.py). CSV and JSONL values arrive as
strings (or null), whatever they look like, so one odd value ("fast" in a numeric column) is a
bad line for the plan to refuse, not an unreadable file; Parquet keeps its own column types.
`check_columns` checks the header: required columns present, no unknown columns.

A script is data: a Parquet column of an Arrow *extension* type is refused before any value is read
(`check_plain_schema`), whether or not the process registered that type. Some extension types turn
values into Python objects on reading (Ray's ``ray.data.arrow_pickled_object``, registered by
``import ray.data``, unpickles each value in ``to_pylist()``: a script could run code); an
unregistered one arrives as its storage type with ``ARROW:extension:name`` in the field's metadata,
and is refused the same way so the outcome never depends on what was imported.
"""
from __future__ import annotations

import json
import posixpath
from typing import Iterator

import fsspec
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

REQUIRED = ("line_id", "voice_id", "text", "language")
OPTIONAL = ("target_seconds", "speed", "seed", "top_k", "temperature", "noise_scale")
CSV_BLOCK_BYTES = 1 << 18  # CSV read block: see _csv_batches
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}


class ScriptError(ValueError):
    """The script as a whole is unusable: unreadable, wrong columns, duplicate or unsafe ids."""


def script_format(url: str) -> str:
    ext = posixpath.splitext(url.split("?", 1)[0])[1].lower()
    if ext not in FORMATS:
        raise ScriptError(f"unsupported script format {ext or '(none)'!r} for {url}; use .csv, .jsonl or .parquet")
    return FORMATS[ext]


def check_columns(url: str, columns: list[str], require: bool = True) -> None:
    """Unknown columns are refused; with `require`, missing required ones too (JSONL rows may omit keys)."""
    missing = [c for c in REQUIRED if c not in columns] if require else []
    if missing:
        raise ScriptError(f"script {url} lacks required column(s) {', '.join(missing)} (has: {', '.join(columns)})")
    unknown = [c for c in columns if c not in REQUIRED + OPTIONAL]
    if unknown:
        raise ScriptError(f"unknown column(s) {', '.join(unknown)} in {url}; allowed: {', '.join(REQUIRED + OPTIONAL)}")


_EXTENSION_KEY = b"ARROW:extension:name"


def _extension_in(field: pa.Field) -> str | None:
    """The name of an extension type `field` is or nests (registered or not), else None."""
    if isinstance(field.type, pa.ExtensionType):
        return field.type.extension_name
    if field.metadata and _EXTENSION_KEY in field.metadata:
        return field.metadata[_EXTENSION_KEY].decode("utf-8", "replace")
    t = field.type
    if pa.types.is_dictionary(t):
        children = [pa.field(field.name, t.value_type)]
    elif pa.types.is_map(t):
        children = [t.key_field, t.item_field]
    elif hasattr(t, "value_field"):  # list, large list, fixed-size list, list view
        children = [t.value_field]
    else:  # struct, union (no children for plain scalars)
        children = [t.field(i) for i in range(t.num_fields)]
    return next((name for c in children if (name := _extension_in(c))), None)


def check_plain_schema(url: str, schema: pa.Schema) -> None:
    """Refuse extension-typed columns (see the module note): a script's values are plain Arrow types."""
    for field in schema:
        name = _extension_in(field)
        if name is not None:
            raise ScriptError(f"script {url}: column {field.name!r} has the Arrow extension type {name!r}; "
                              "a script holds plain values (strings and numbers): write that column as a plain "
                              "type (its values were not read)")


def iter_batches(url: str, batch_rows: int = 65536) -> Iterator[pa.RecordBatch]:
    """Stream the script as Arrow record batches of at most `batch_rows` rows."""
    fmt = script_format(url)
    try:
        fs, path = fsspec.core.url_to_fs(url)
        if not fs.exists(path):
            raise ScriptError(f"script not found: {url}")
        with fs.open(path, "rb") as f:
            if fmt == "parquet":
                parquet = pq.ParquetFile(f)
                check_plain_schema(url, parquet.schema_arrow)
                yield from parquet.iter_batches(batch_size=batch_rows)
            elif fmt == "csv":
                yield from _csv_batches(f, batch_rows)
            else:
                yield from _jsonl_batches(url, f, batch_rows)
    except ScriptError:
        raise
    except (pa.ArrowInvalid, OSError, ValueError) as e:
        raise ScriptError(f"cannot read script {url}: {str(e).splitlines()[0]}") from e


def _csv_batches(f, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """CSV in small read blocks, regrouped into batches of `batch_rows`.

    The streaming reader's buffers grow with the block size and, up to a bound, with the file
    (measured on a 1e6-line, 75 MB script: +146 MiB peak with 4 MiB blocks, +62 MiB with 1 MiB,
    +33 MiB with 256 KiB), so blocks stay small and are joined here instead.
    """
    reader = pacsv.open_csv(f, read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
                            convert_options=pacsv.ConvertOptions(
                                column_types={c: pa.string() for c in REQUIRED + OPTIONAL},
                                null_values=[""], strings_can_be_null=True))
    pending: list[pa.RecordBatch] = []
    rows = 0
    for block in reader:
        pending.append(block)
        rows += block.num_rows
        while rows >= batch_rows:
            table = pa.Table.from_batches(pending).combine_chunks()
            yield table.slice(0, batch_rows).to_batches()[0]
            rest = table.slice(batch_rows)
            pending, rows = rest.to_batches(), rest.num_rows
    if rows:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


def _jsonl_batches(url: str, f, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """JSON lines -> string columns (non-string values as their JSON text: 1.5 -> "1.5", true -> "true")."""
    rows: list[dict] = []
    columns: dict[str, None] = {}
    for n, raw in enumerate(f, 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError as e:
            raise ScriptError(f"line {n} of {url} is not valid JSON: {e}") from e
        if not isinstance(obj, dict):
            raise ScriptError(f"line {n} of {url} is a JSON {type(obj).__name__}, not an object")
        columns.update(dict.fromkeys(obj))
        rows.append({k: v if v is None or isinstance(v, str) else json.dumps(v, ensure_ascii=False)
                     for k, v in obj.items()})
        if len(rows) == batch_rows:
            yield _string_batch(rows, list(columns))
            rows = []
    if rows:
        yield _string_batch(rows, list(columns))


def _string_batch(rows: list[dict], columns: list[str]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({c: pa.array([r.get(c) for r in rows], pa.string()) for c in columns})
