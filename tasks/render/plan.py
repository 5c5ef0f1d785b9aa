"""The render plan: script -> checked, authorized lines -> this run's work list, grouped by voice.

    plan_script   reads the script ONCE (tasks/render/script.py's streaming reader), checks every line
                  (tasks/render/line_checks.py) and its voice (registry read once per voice per run),
                  and writes Parquet plan parts to a local folder: one row per line, status
                  "pending" or "refused" with the reasons, its seed, settings and length bucket
    write_todo    DuckDB: line ids unique, then an anti-join of the plan against the job's index
                  (newest row per line) -> the lines this run must render or record, sorted by
                  (voice, version, length bucket) so synthesis batches are dense and one voice's
                  lines arrive together; written as Parquet parts into the store for Ray Data

Driver memory stays flat as the script grows: the script is streamed in Arrow batches (small CSV
read blocks), the plan lives on disk, Arrow's freed buffers go back to the system before DuckDB
starts, and DuckDB checks, joins and sorts out of core on one thread under a small memory limit,
the work list in key ranges of SORT_ROWS lines so that no sort grows with the script. No Python set
of line ids exists anywhere. Measured (`python benchmarks/render_throughput.py --lines 0
--plan-sizes 100000,1000000,3000000`): +122, +162 and +177 MiB peak over the interpreter.

Which lines a run takes (`write_todo`), given the newest index row of each line:
    no row                          -> yes
    a row made from something else  -> yes: its `line_hash` differs from the line's (text, language,
                                       voice version, per-line settings or the job's audio settings
                                       changed since); rows from before hashes existed (null) match
    ok                              -> never again
    failed                          -> only with `retry_failed`
    refused                         -> yes, unless refused again for the same reason (a new
                                       grant or a fixed value takes effect on the next run)

`line_hash` is md5 over what makes a line's audio: its text, language, voice and the version the
plan authorized, its seed and per-line settings, and the run's `audio_key` (the job-wide settings
that change audio: sampling defaults, post-processing, QC). `write_todo` also writes the current
script's lines (line_id, line_hash) to the job (`script_prefix`), the manifest `voicefleet jobs`
counts against: lines no longer in the script are reported apart from the totals.
"""
from __future__ import annotations

import os
import shutil
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from voicefleet.tasks.store.ids import InvalidId, safe_id
from voicefleet.tasks.store.storage import Store

from .index_read import index_parts, register_index
from .job_cleanup import runs_prefix
from .job_paths import script_prefix
from .line_checks import CONTROL_CLASS, LANGUAGES, RULES, LineLimits, check_line
from .out_of_core import with_memory
from .scratch import scratch_dir
from .script import ScriptError, check_columns, iter_batches
from .todo_parts import VoiceParts, affinity_chunk, part_groups

PLAN_SCHEMA = pa.schema([
    ("line_id", pa.string()), ("voice_id", pa.string()), ("voice_version", pa.string()), ("text", pa.string()),
    ("language", pa.string()), ("status", pa.string()), ("error", pa.string()), ("seed", pa.int64()),
    ("speed", pa.float64()), ("top_k", pa.int32()), ("temperature", pa.float64()), ("noise_scale", pa.float64()),
    ("target_seconds", pa.float64()), ("bucket", pa.int32()), ("row", pa.int64()),
])
TODO_COLUMNS = [n for n in PLAN_SCHEMA.names if n != "row"]
TODO_SCHEMA = pa.schema([PLAN_SCHEMA.field(n) for n in TODO_COLUMNS] + [pa.field("line_hash", pa.string())])
# DuckDB spills its aggregate, join and sort to disk beyond its memory limit, which bounds the
# driver's memory whatever the script's length; it runs on one thread (each thread sorts its own runs
# and needs its own share). Measured on a 1e6-line plan: the uniqueness check runs in 32 MB, the
# sorted work list needs 64 MB (two threads: more). A query that still runs out of memory is run
# again under the next limit, so only a script that needs it costs more memory.
UNIQUE_MEMORY_MB = (32, 64, 256, 1024)
SORT_ROWS = 250_000  # lines per DuckDB sort of the work list (see _sort_bounds)
TODO_MEMORY_MB = (64, 256, 1024)
T = TypeVar("T")
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"  # storage.safe_id's rule


class NoKnownVoice(LookupError):
    """None of a script's voices is registered: no line of it can be rendered."""


@dataclass
class VoiceDecision:
    allowed: bool
    reason: str = ""
    version: int | None = None
    record: Any = None  # the VersionRecord the actors load (files, reference clip, prompt tokens)


class VoiceAuthorizer:
    """principal x voice -> VoiceDecision, reading the registry once per voice."""

    def __init__(self, store: Store, principal: str):
        from voicefleet.tasks.safety.access import email_domain
        from voicefleet.tasks.voices.registry import VoiceRegistry

        self.registry = VoiceRegistry(store, org_of=email_domain)
        self.principal = principal
        self.decisions: dict[str, VoiceDecision] = {}

    def __call__(self, voice: str) -> VoiceDecision:
        if voice not in self.decisions:
            self.decisions[voice] = self._decide(voice)
        return self.decisions[voice]

    def _decide(self, voice: str) -> VoiceDecision:
        from voicefleet.tasks.voices.errors import RegistryError, UnknownVoice

        try:
            rec = self.registry.get(safe_id(voice, "voice id"))
        except (UnknownVoice, InvalidId):
            return VoiceDecision(False, f"unknown voice {voice!r}")
        if rec.current_version is None:
            return VoiceDecision(False, f"voice {voice} is not ready (status {rec.status})")
        d = self.registry.authorize(voice, self.principal)
        if not d.allowed:
            return VoiceDecision(False, d.reason, rec.current_version)
        try:
            version = self.registry.version(voice, rec.current_version)
        except (RegistryError, ValueError) as e:
            return VoiceDecision(False, f"voice {voice} v{rec.current_version} cannot be read: {e}")
        return VoiceDecision(True, "", rec.current_version, version)


@dataclass
class Plan:
    url: str
    directory: str                      # local folder of plan parts (Parquet, PLAN_SCHEMA)
    lines: int
    voices: dict[str, int] = field(default_factory=dict)       # voice_id -> lines
    decisions: dict[str, VoiceDecision] = field(default_factory=dict)
    refused: int = 0                    # lines refused by the plan (bad values or voice)

    def cleanup(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def line_seed(line_id: str, text: str) -> int:
    return zlib.crc32(f"{line_id}\x1f{text}".encode())


def plan_script(url: str, store: Store, principal: str, limits: LineLimits = LineLimits(),
                batch_rows: int = 16384, bucket_chars: int = 64) -> Plan:
    """Read and check the script once; returns the plan (its parts in a local temp folder)."""
    authorize = VoiceAuthorizer(store, principal)
    plan = Plan(url, scratch_dir("vf-plan-"), 0)  # folders of killed planners are swept here
    try:
        for i, batch in enumerate(iter_batches(url, batch_rows)):
            check_columns(url, batch.schema.names, require=i == 0)
            table = _plan_batch(batch, plan, authorize, limits, bucket_chars)
            pq.write_table(table, os.path.join(plan.directory, f"part-{i:05d}.parquet"))
        if plan.lines == 0:
            raise ScriptError(f"script {url} has no rows")
        pa.default_memory_pool().release_unused()
        _check_unique(plan)
        plan.decisions = authorize.decisions
        return plan
    except BaseException:
        plan.cleanup()
        raise


def _plan_batch(batch: pa.RecordBatch, plan: Plan, authorize: VoiceAuthorizer, limits: LineLimits,
                bucket_chars: int) -> pa.Table:
    """Plan rows for one script batch.

    Most lines are plain (text, language, voice, no per-line options): they are checked with Arrow
    kernels. The rest go through `check_line` one by one, which words every reason.
    """
    first_row = plan.lines + 1
    plan.lines += batch.num_rows
    col = {name: batch.column(name) for name in batch.schema.names}
    ids = col["line_id"]
    if ids.null_count or not pc.all(pc.match_substring_regex(ids.cast(pa.string()), ID_PATTERN)).as_py():
        _raise_bad_id(ids.to_pylist(), first_row, plan.url)
    text, language, voice = (col[c].cast(pa.string()) for c in ("text", "language", "voice_id"))
    plain = pc.and_kleene(pc.is_in(language, pa.array(LANGUAGES)), pc.greater(pc.utf8_length(voice), 0))
    plain = pc.and_kleene(plain, pc.less_equal(pc.utf8_length(text), limits.max_chars))
    plain = pc.and_kleene(plain, pc.match_substring_regex(text, r"[\p{L}\p{N}]"))
    plain = pc.and_kleene(plain, pc.invert(pc.match_substring_regex(text, CONTROL_CLASS)))
    for name in RULES:
        if name in col:
            plain = pc.and_kleene(plain, pc.is_null(col[name]))
    plain = pc.fill_null(plain, False)
    rows = pc.add(pa.array(range(batch.num_rows), pa.int64()), first_row)

    fast = pa.table({"line_id": ids.cast(pa.string()), "voice_id": voice, "text": text, "language": language,
                     "row": rows}).filter(plain)
    fast_voices = fast["voice_id"].to_pylist()
    decisions = [authorize(v) for v in fast_voices]
    fast_ids, fast_text = fast["line_id"].to_pylist(), fast["text"].to_pylist()
    parts = [pa.table({
        "line_id": fast["line_id"], "voice_id": fast["voice_id"],
        "voice_version": pa.array([None if d.version is None else str(d.version) for d in decisions], pa.string()),
        "text": fast["text"], "language": fast["language"],
        "status": pa.array(["pending" if d.allowed else "refused" for d in decisions], pa.string()),
        "error": pa.array([None if d.allowed else d.reason for d in decisions], pa.string()),
        "seed": pa.array([line_seed(i, t) for i, t in zip(fast_ids, fast_text)], pa.int64()),
        **{k: pa.nulls(fast.num_rows, PLAN_SCHEMA.field(k).type) for k in RULES if k != "seed"},
        "bucket": pc.min_element_wise(pc.divide(pc.utf8_length(fast["text"]), bucket_chars), 64).cast(pa.int32()),
        "row": fast["row"]}, schema=PLAN_SCHEMA)]
    plan.refused += sum(not d.allowed for d in decisions)
    for v in fast_voices:
        plan.voices[v] = plan.voices.get(v, 0) + 1

    slow = pa.Table.from_batches([batch]).append_column("row", rows).filter(pc.invert(plain)).to_pylist()
    parts.append(pa.Table.from_pylist([_plan_row(r, plan, authorize, limits, bucket_chars) for r in slow],
                                      schema=PLAN_SCHEMA))
    return pa.concat_tables(parts)


def _raise_bad_id(ids: list, first_row: int, url: str) -> None:
    for n, line_id in enumerate(ids, first_row):
        if line_id is None or not str(line_id).strip():
            raise ScriptError(f"row {n} of {url} has no line_id")
        try:
            safe_id(str(line_id), "line_id")
        except InvalidId as e:
            raise ScriptError(f"row {n} of {url}: {e}") from e


def _plan_row(r: dict, plan: Plan, authorize: VoiceAuthorizer, limits: LineLimits, bucket_chars: int) -> dict:
    line_id = str(r["line_id"])
    clean, reasons = check_line(r, limits)
    voice = clean["voice_id"]
    plan.voices[voice] = plan.voices.get(voice, 0) + 1
    decision = authorize(voice) if voice else None
    if decision is not None and not decision.allowed:
        reasons.append(decision.reason)
    plan.refused += bool(reasons)
    text = clean["text"]
    return {
        "line_id": line_id, "voice_id": voice, "text": text, "language": clean["language"],
        "voice_version": None if decision is None or decision.version is None else str(decision.version),
        "status": "refused" if reasons else "pending", "error": "; ".join(reasons) or None,
        "seed": clean["seed"] if clean["seed"] is not None else line_seed(line_id, text),
        **{k: clean[k] for k in RULES if k != "seed"},
        "bucket": min(len(text) // bucket_chars, 64), "row": r["row"],
    }


def _parts(plan: Plan) -> str:
    return os.path.join(plan.directory, "part-*.parquet")


def _sql_str(value: str) -> str:
    """A SQL string literal (COPY takes no parameters)."""
    return "'" + value.replace("'", "''") + "'"


def _with_memory(plan: Plan, limits: tuple[int, ...], run: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
    """`run` under the first memory limit (MB) of `limits` that suffices, spilling into the plan's folder."""
    return with_memory(limits, plan.directory, run)


def _check_unique(plan: Plan) -> None:
    query = ("SELECT line_id, min(row), max(row) FROM read_parquet(?) GROUP BY line_id "
             "HAVING count(*) > 1 ORDER BY min(row) LIMIT 1")
    dup = _with_memory(plan, UNIQUE_MEMORY_MB, lambda con: con.execute(query, [_parts(plan)]).fetchone())
    if dup:
        raise ScriptError(f"line_id {dup[0]!r} appears more than once in {plan.url} (rows {dup[1]} and {dup[2]})")


@dataclass
class Todo:
    keys: list[str]     # store keys of the todo parts (Parquet, TODO_COLUMNS)
    lines: int          # lines this run renders or records
    skipped: int        # plan lines already finished in earlier runs


def todo_prefix(job_id: str, run: int) -> str:
    return f"{runs_prefix(job_id)}/{run:05d}"


def write_todo(plan: Plan, store: Store, job_id: str, run: int, retry_failed: bool = False,
               rows_per_part: int = 512, audio_key: str = "", actors: int = 1, batch_size: int = 16) -> Todo:
    """This run's lines, sorted by (voice, version, length bucket), as Parquet parts in the store;
    the script's manifest (line_id, line_hash) written first. `audio_key`: RenderSettings.audio_key().

    Each part holds one voice's lines (or several LoRA voices' over one base: `part_groups`), at most
    `affinity_chunk(...)` of them (<= rows_per_part): the render pipeline hands one part to one
    synthesis actor, so a voice's lines go to few actors."""
    return _with_memory(plan, TODO_MEMORY_MB,
                        lambda con: _write_todo(con, plan, store, job_id, run, retry_failed, rows_per_part, audio_key,
                                                actors, batch_size))


def _write_todo(con: duckdb.DuckDBPyConnection, plan: Plan, store: Store, job_id: str, run: int, retry_failed: bool,
                rows_per_part: int, audio_key: str, actors: int, batch_size: int) -> Todo:
    register_index(con, store, index_parts(store, job_id))  # DuckDB's own reader: within its memory limit
    write_manifest(con, plan, store, job_id, run, audio_key)
    prefix = todo_prefix(job_id, run)
    store.delete(prefix, recursive=True)
    # One anti-join over the whole plan and index, its rows written unsorted into one folder per key
    # range; then one bounded sort per range (the join and the index's GROUP BY run once, not per range)
    bounds = _sort_bounds(con, plan)
    ranges_dir = os.path.join(plan.directory, "todo-ranges")
    shutil.rmtree(ranges_dir, ignore_errors=True)
    con.execute(f"COPY ({_todo_query(plan, retry_failed, bounds, audio_key)}) TO {_sql_str(ranges_dir)} "
                f"(FORMAT parquet, PARTITION_BY (range_no), ROW_GROUP_SIZE {int(rows_per_part)})")
    folders = [r for r in range(len(bounds) + 1) if os.path.isdir(os.path.join(ranges_dir, f"range_no={r}"))]
    total = con.execute(f"SELECT count(*) FROM read_parquet({_sql_str(os.path.join(ranges_dir, '*', '*.parquet'))})"
                        ).fetchone()[0] if folders else 0
    parts = VoiceParts(store, prefix, affinity_chunk(total, actors, batch_size, rows_per_part), TODO_SCHEMA,
                       part_groups(plan.decisions))
    sorted_path = os.path.join(plan.directory, "todo.parquet")
    for r in folders:
        part_glob = os.path.join(ranges_dir, f"range_no={r}", "*.parquet")
        # DuckDB writes one range, sorted, to a local file (its sort streams into the writer; an Arrow
        # reader over the same query peaked ~45 MB higher at 1e6 lines); it is cut into parts here
        con.execute(f"COPY (SELECT {', '.join(TODO_COLUMNS)}, line_hash FROM read_parquet({_sql_str(part_glob)}) "
                    f"ORDER BY voice_id, voice_version, bucket, line_id) TO {_sql_str(sorted_path)} "
                    f"(FORMAT parquet, ROW_GROUP_SIZE {int(rows_per_part)})")
        for batch in pq.ParquetFile(sorted_path).iter_batches(batch_size=4096):
            parts.add(pa.Table.from_batches([batch]))
        os.remove(sorted_path)
    parts.flush()
    keys, lines = parts.keys, parts.lines
    shutil.rmtree(ranges_dir, ignore_errors=True)
    return Todo(keys, lines, plan.lines - lines)


# The work list's order as one string: ids are safe_id's [A-Za-z0-9_-] and versions digits, so
# comparing these strings (byte order) is comparing (voice, version NULLS LAST, bucket, line id)
SORT_KEY = ("coalesce(p.voice_id, chr(127)) || chr(1) || coalesce(p.voice_version, chr(127)) || chr(1) "
            "|| lpad(p.bucket::VARCHAR, 3, '0') || chr(1) || p.line_id")


def line_hash_sql(audio_key: str) -> str:
    """SQL for a plan row `p`'s line_hash (see the module docstring); NULLs are spelled out, so
    that a value moving between columns changes the hash."""
    parts = ", ".join(f"coalesce(p.{c}::VARCHAR, chr(2))" for c in HASHED_COLUMNS)
    return f"md5(concat_ws(chr(31), {parts}, {_sql_str(audio_key)}))"


HASHED_COLUMNS = ("text", "language", "voice_id", "voice_version", "seed", "speed", "top_k", "temperature",
                  "noise_scale", "target_seconds")


def write_manifest(con: duckdb.DuckDBPyConnection, plan: Plan, store: Store, job_id: str, run: int,
                   audio_key: str) -> str:
    """The current script's lines (line_id, line_hash) as run `run`'s manifest; older ones removed."""
    path = os.path.join(plan.directory, "lines.parquet")
    con.execute(f"COPY (SELECT p.line_id, {line_hash_sql(audio_key)} AS line_hash "
                f"FROM read_parquet({_sql_str(_parts(plan))}) p) TO {_sql_str(path)} (FORMAT parquet)")
    key = f"{script_prefix(job_id, run)}/lines.parquet"
    store.put_file(path, key)
    os.remove(path)
    for old in store.glob(f"{script_prefix(job_id)}/r*/*.parquet"):
        if not old.startswith(script_prefix(job_id, run) + "/"):
            store.delete(old)
    return key


def _todo_query(plan: Plan, retry_failed: bool, bounds: list[str], audio_key: str = "") -> str:
    """The anti-join of the plan against the index, each row with its `range_no`: how many of the
    sorted `bounds` its SORT_KEY exceeds (range r holds bounds[r-1] < key <= bounds[r])."""
    range_no = (f"len(list_filter([{', '.join(_sql_str(b) for b in bounds)}]::VARCHAR[], lambda b: b < {SORT_KEY}))"
                if bounds else "0")
    return f"""
        WITH idx AS (
            SELECT line_id, arg_max(status, newest) AS status, arg_max(error, newest) AS error,
                   arg_max(line_hash, newest) AS line_hash
            FROM (SELECT line_id, status, error, line_hash,
                         (coalesce(run, -1), coalesce(shard, '')) AS newest FROM raw_index)
            GROUP BY line_id),
        plan AS (SELECT p.*, {line_hash_sql(audio_key)} AS line_hash FROM read_parquet({_sql_str(_parts(plan))}) p)
        SELECT {', '.join('p.' + c for c in TODO_COLUMNS)}, p.line_hash, {range_no} AS range_no
        FROM plan p LEFT JOIN idx i ON p.line_id = i.line_id
        WHERE (i.line_id IS NULL
           OR (i.line_hash IS NOT NULL AND i.line_hash <> p.line_hash)
           OR (i.status = 'failed' AND {'true' if retry_failed else 'false'})
           OR (i.status = 'refused' AND (p.status <> 'refused' OR p.error IS DISTINCT FROM i.error)))"""


def _sort_bounds(con: duckdb.DuckDBPyConnection, plan: Plan) -> list[str]:
    """Bounds of SORT_KEY ranges of about SORT_ROWS plan lines each, from a bounded sample, so that no
    single DuckDB sort grows with the script (one sort of 3e6 lines needed more than 64 MB)."""
    ranges = -(-plan.lines // SORT_ROWS)
    if ranges <= 1:
        return []
    sample = sorted(k for (k,) in con.execute(
        f"SELECT {SORT_KEY} FROM read_parquet({_sql_str(_parts(plan))}) p "
        f"USING SAMPLE reservoir({ranges * 200} ROWS) REPEATABLE (7)").fetchall())
    return sorted({sample[len(sample) * j // ranges] for j in range(1, ranges)})
