"""Job commands at scale: wall time and peak RSS of every command that handles a render job whole.

For each size (index rows of the current run) a job is built directly in the index schema: 1,000
Parquet parts of the current run plus 50 parts of an older run (the same line ids, a smaller `run`,
an older `line_hash`), a script manifest (0.1% of lines edited since, 0.1% cut from the script), one
empty tar per 256 ok lines plus a few orphans, and a few real tars of FLAC lines that the report
ranks worst (so it fetches and embeds real audio). Each command then runs in a fresh process, its
peak RSS read from `os.wait4` (that child alone, started from a small launcher: a child's peak counts the
memory of the process it was spawned from, so measured straight from a large process it would read that
process's size):

    show      voicefleet jobs show JOB --store DIR            (on the uncompacted index)
    report    voicefleet jobs report JOB --store DIR          (on the uncompacted index)
    compact   voicefleet jobs compact JOB --store DIR         (1,050 parts -> compacted, orphans removed)
    finish    the end of a render, on the uncompacted index again: what flows/render.py's `finish()`
              and `job_report()` call (compact, remove_orphans, job_totals, write_report)
    todo      the rerun work list: tasks/render/plan.py `write_todo` on a plan of the same lines

    python benchmarks/job_scale.py                                   # 1e5 and 1e6 rows
    python benchmarks/job_scale.py --sizes 100000,1000000,3000000
    python benchmarks/job_scale.py --sizes 100000 --commands show,report

Prints seconds and peak RSS (MiB) per command and size, and their ratios to the first size.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

PARTS, OLD_PARTS, LINES_PER_TAR, REAL_LINES = 1000, 50, 256, 8
COMMANDS = ("show", "report", "compact", "finish", "todo")
VOICES = [f"voice-{i}" for i in range(8)]
TEXT = "The storm rolled in before dawn and nobody on the pier had seen it coming, line "
FINISH = """
import sys
from voicefleet.tasks.render.job_index import compact, job_totals, remove_orphans
from voicefleet.tasks.render.job_lease import JobLease
from voicefleet.tasks.render.job_report import write_report
from voicefleet.tasks.store.storage import Store
s, job = Store(sys.argv[1]), sys.argv[2]
with JobLease(s, job) as lease:
    compact(s, job, generation=lease.generation)
    remove_orphans(s, job, older_than=lease.acquired_store_time)
    job_totals(s, job)
write_report(s, job)
"""
TODO = """
import sys
from voicefleet.tasks.render.plan import Plan, write_todo
from voicefleet.tasks.store.storage import Store
todo = write_todo(Plan("bench.csv", sys.argv[3], int(sys.argv[4])), Store(sys.argv[1]), sys.argv[2], run=9)
print(todo.lines, "lines to render")
"""


def _ids(lo: int, hi: int) -> pa.Array:
    return pc.binary_join_element_wise("L", pc.utf8_lpad(pa.array(np.arange(lo, hi)).cast(pa.string()), 8, "0"), "")


def _hash(ids: pa.Array, salt: str) -> pa.Array:
    """A stand-in for line_hash: 32 characters that depend on the line id and `salt`."""
    return pc.utf8_rpad(pc.binary_join_element_wise(salt, ids, ""), 32, "0")


def index_rows(lo: int, hi: int, run: int, rng: np.random.Generator, salt: str = "h1-") -> pa.Table:
    """Rows for lines lo..hi-1 of run `run`: ~94% ok, 4% failed, 2% refused, realistic measures."""
    from voicefleet.tasks.render.index_schema import INDEX_SCHEMA

    n = hi - lo
    ids = _ids(lo, hi)
    draw = rng.random(n)
    status = np.where(draw < 0.94, "ok", np.where(draw < 0.98, "failed", "refused"))
    ok = status == "ok"
    dur = np.round(rng.gamma(4.0, 0.9, n), 3)
    wer = np.round(np.clip(rng.exponential(0.08, n), 0, 1.5), 3)
    sim = np.round(np.clip(rng.normal(0.82, 0.06, n), 0, 1), 3)
    qc_ok = (wer <= 0.35) & (sim >= 0.6)
    tar = (np.arange(lo, hi) // LINES_PER_TAR).astype(str)
    reasons = np.where(wer > 0.35, "WER above 0.35", np.where(sim < 0.6, "speaker similarity below 0.6", None))
    cols = {
        "line_id": ids, "voice_id": pa.array(np.array(VOICES)[np.arange(lo, hi) % len(VOICES)]),
        "voice_version": pa.array(np.full(n, "1")), "status": pa.array(status),
        "error": pa.array(np.where(status == "failed", "quality check failed after 3 attempt(s): WER",
                                   np.where(status == "refused", "voice voice-x is not granted", None))),
        "shard": pa.array(np.where(ok, np.char.add(np.char.add(f"shards/r{run}-", tar), ".tar"), None)),
        "offset": pa.array(np.where(ok, 512, 0)), "size": pa.array(np.where(ok, 40_000, 0)),
        "sample_rate": pa.array(np.full(n, 32000, np.int32)), "num_samples": pa.array((dur * 32000).astype(np.int64)),
        "duration_s": pa.array(np.where(ok, dur, np.nan)), "sha256": _hash(ids, "sha-"),
        "text": pc.binary_join_element_wise(TEXT, ids, ""), "language": pa.array(np.full(n, "en")),
        "loudness_lufs": pa.array(np.round(rng.normal(-23, 0.7, n), 2)), "rtf": pa.array(rng.uniform(0.05, 0.4, n)),
        "attempts": pa.array(rng.choice([1, 1, 1, 2, 3], n).astype(np.int32)),
        "run": pa.array(np.full(n, run, np.int32)), "seed": pa.array(np.arange(lo, hi) * 7919),
        "truncated": pa.array(rng.random(n) < 0.005), "wer": pa.array(wer), "asr_text": pc.binary_join_element_wise(
            TEXT, ids, ""), "speaker_similarity": pa.array(sim), "qc_passed": pa.array(qc_ok), "qc_reasons": pa.array(
            reasons), "attempt_log": pa.array(np.full(n, '[{"attempt": 1, "seed": 5, "passed": true}]')),
        "line_hash": _hash(ids, salt),
    }
    table = pa.table({k: v for k, v in cols.items()})
    missing = [f for f in INDEX_SCHEMA if f.name not in table.column_names]
    for f in missing:  # columns this benchmark does not fill (and any added later) stay null
        table = table.append_column(f, pa.nulls(n, f.type))
    table = table.select(INDEX_SCHEMA.names)
    mask = pa.array(~ok)
    for c in ("duration_s", "wer", "speaker_similarity", "qc_passed", "loudness_lufs"):
        i = table.schema.get_field_index(c)
        table = table.set_column(i, c, pc.if_else(mask, pa.nulls(n, table.schema.field(c).type), table[c]))
    return table.cast(INDEX_SCHEMA)


def build_job(root: str, rows: int, job: str = "scale", parts: int = PARTS, old_parts: int = OLD_PARTS,
              seed: int = 0) -> dict:
    """A job of `rows` lines in the store at `root` (see the module docstring); returns what was built."""
    from voicefleet.tasks.measure.audio import encode_flac
    from voicefleet.tasks.render.job_paths import index_key, job_key, script_prefix, shard_key
    from voicefleet.tasks.render.shards import write_shard
    from voicefleet.tasks.store.storage import Store

    store, rng = Store(root), np.random.default_rng(seed)
    step = -(-rows // parts)
    for p in range(parts):
        lo, hi = p * step, min(rows, (p + 1) * step)
        if lo < hi:
            pq.write_table(index_rows(lo, hi, 2, rng), store.fs_path(index_key(job, f"r2-{p:05d}")))
    for p in range(old_parts):  # an older run of the first lines: duplicates with a smaller run
        lo, hi = p * step, min(rows, (p + 1) * step)
        if lo < hi:
            pq.write_table(index_rows(lo, hi, 1, rng, salt="h0-"), store.fs_path(index_key(job, f"r1-{p:05d}")))
    tars = {f"r2-{i}" for i in range(-(-rows // LINES_PER_TAR))} | {f"orphan-{i}" for i in range(20)}
    for name in tars:
        with open(store.fs_path(shard_key(job, name)), "wb") as f:
            f.write(b"\0" * 512)
    # the worst lines, rendered again as run 3 into real tars (their newest rows)
    t = np.linspace(0, 1.5, 48000, dtype=np.float32)
    flac = encode_flac(0.3 * np.sin(2 * np.pi * 220 * t), 32000)
    for k in range(2):
        items = []
        for i in range(k * REAL_LINES // 2, (k + 1) * REAL_LINES // 2):
            line = i * (rows // REAL_LINES) + 1  # not one of the edited lines (multiples of 1000)
            items.append(({"line_id": f"L{line:08d}", "voice_id": VOICES[line % len(VOICES)], "status": "ok",
                           "text": f"{TEXT}{line}", "language": "en", "run": 3, "wer": 1.5 + i / 100,
                           "speaker_similarity": 0.1, "qc_passed": False, "attempts": 3,
                           "qc_reasons": "WER 1.50 > 0.35; speaker similarity 0.10 < 0.6; truncated",
                           "line_hash": f"h1-L{line:08d}".ljust(32, "0")}, flac))
        write_shard(store, job, f"real-{k}", items)
    # the script: every line but the last 0.1% (cut), and 0.1% edited since (another hash)
    kept = rows - rows // 1000
    ids = _ids(0, kept)
    edited = np.zeros(kept, bool)
    edited[np.arange(0, kept, 1000)[1:]] = True
    hashes = pc.if_else(pa.array(edited), _hash(ids, "h2-"), _hash(ids, "h1-"))
    os.makedirs(store.fs_path(script_prefix(job, 2)), exist_ok=True)
    pq.write_table(pa.table({"line_id": ids, "line_hash": hashes}), store.fs_path(f"{script_prefix(job, 2)}/lines.parquet"))
    store.write_json(job_key(job), {"job_id": job, "lines": kept, "status": "complete", "principal": "user:bench",
                                    "script": "bench.csv", "post": {"loudness_lufs": -23.0},
                                    "runs": [{"started_at": "2026-11-27T10:00:00+00:00",
                                              "finished_at": "2026-11-27T11:00:00+00:00"}] * 2})
    return {"rows": rows, "script_lines": kept, "edited": int(edited.sum()), "tars": len(tars) + 2}


def build_plan(directory: str, rows: int) -> int:
    """Plan parts (PLAN_SCHEMA) for the script's lines, as plan_script writes them; returns lines."""
    from voicefleet.tasks.render.plan import PLAN_SCHEMA

    os.makedirs(directory, exist_ok=True)
    kept, step = rows - rows // 1000, 100_000
    for p, lo in enumerate(range(0, kept, step)):
        hi = min(kept, lo + step)
        n, ids = hi - lo, _ids(lo, hi)
        given = {"line_id": ids, "voice_id": pa.array(np.array(VOICES)[np.arange(lo, hi) % len(VOICES)]),
                 "voice_version": pa.array(np.full(n, "1")), "text": pc.binary_join_element_wise(TEXT, ids, ""),
                 "language": pa.array(np.full(n, "en")), "status": pa.array(np.full(n, "pending")),
                 "seed": pa.array(np.arange(lo, hi) * 7919), "bucket": pa.array(np.full(n, 1, np.int32)),
                 "row": pa.array(np.arange(lo, hi) + 1)}
        table = pa.table({f.name: given[f.name].cast(f.type) if f.name in given else pa.nulls(n, f.type)
                          for f in PLAN_SCHEMA}, schema=PLAN_SCHEMA)  # columns not set here (added later) stay null
        pq.write_table(table, os.path.join(directory, f"part-{p:05d}.parquet"))
    return kept


PEAK = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measure(cmd: list[str], env: dict | None = None) -> tuple[float, float, str]:
    """Run `cmd` in a child process: (wall seconds, its peak RSS in MiB, its output).

    Linux records, when a process execs, the peak RSS of the memory it replaces, and a child spawned
    from a 3 GB process starts out sharing those 3 GB: so the child is started by a small launcher
    (PEAK) whose own size is all that can leak into the figure (~10 MiB)."""
    with tempfile.NamedTemporaryFile(prefix="vf-peak-", suffix=".txt") as peak:
        t0 = time.perf_counter()
        child = subprocess.run([sys.executable, "-c", PEAK, peak.name, *cmd], check=False, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, env=env)
        wall = time.perf_counter() - t0
        out = child.stdout.decode(errors="replace")
        if child.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:4])} exited {child.returncode}:\n{out[-3000:]}")
        return wall, int(open(peak.name).read()) / 1024, out


def run_size(rows: int, commands: tuple[str, ...] = COMMANDS, tmp: str | None = None) -> dict[str, tuple[float, float]]:
    """Build a job of `rows` lines and measure each command on it: name -> (seconds, peak RSS MiB)."""
    from voicefleet.tasks.render.job_paths import job_prefix
    from voicefleet.tasks.store.storage import Store

    root = tempfile.mkdtemp(prefix="vf-jobscale-", dir=tmp)
    try:
        store, job = Store(os.path.join(root, "store")), "scale"
        for d in ("index", "shards"):
            os.makedirs(store.fs_path(f"{job_prefix(job)}/{d}"), exist_ok=True)
        build_job(store.uri, rows, job)
        index = store.fs_path(f"{job_prefix(job)}/index")
        shards = store.fs_path(f"{job_prefix(job)}/shards")
        shutil.copytree(index, index + ".orig")
        shutil.copytree(shards, shards + ".orig")
        cli = [os.path.join(os.path.dirname(sys.executable), "voicefleet"), "jobs"]
        py = [sys.executable, "-c"]
        env = dict(os.environ, COLUMNS="200", VOICEFLEET_DASHBOARD="0")
        argv = {"show": cli + ["show", job, "--store", store.uri], "report": cli + ["report", job, "--store", store.uri],
                "compact": cli + ["compact", job, "--store", store.uri], "finish": py + [FINISH, store.uri, job]}
        figures = {}
        for name in commands:
            if name in ("finish", "todo"):  # on the uncompacted index again
                for path in (index, shards):
                    shutil.rmtree(path)
                    shutil.copytree(path + ".orig", path)
            if name == "todo":
                lines = build_plan(os.path.join(root, "plan"), rows)
                argv["todo"] = py + [TODO, store.uri, job, os.path.join(root, "plan"), str(lines)]
            wall, rss, out = measure(argv[name], env)
            figures[name] = (wall, rss)
            if os.environ.get("JOB_SCALE_VERBOSE"):
                print(out[-4000:])
        return figures
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000", help="index rows of the current run, comma-separated")
    ap.add_argument("--commands", default=",".join(COMMANDS), help=f"of {', '.join(COMMANDS)}")
    ap.add_argument("--tmp", default=None, help="folder for the stores (default: the system's temp folder)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    commands = tuple(c for c in args.commands.split(",") if c)
    results = {}
    for rows in sizes:
        results[rows] = run_size(rows, commands, args.tmp)
        print(json.dumps({"rows": rows, **{k: {"s": round(w, 2), "rss_mib": round(r)} for k, (w, r) in
                                           results[rows].items()}}), flush=True)
    base = sizes[0]
    print(f"\n{'command':<9}" + "".join(f"{f'{n:,} rows':>22}" for n in sizes)
          + "".join(f"{f'x{n // base} rows: s, RSS':>22}" for n in sizes[1:]))
    for c in commands:
        cells = "".join(f"{f'{results[n][c][0]:.1f} s {results[n][c][1]:.0f} MiB':>22}" for n in sizes)
        ratios = "".join(f"{f'{results[n][c][0] / results[base][c][0]:.1f}x {results[n][c][1] / results[base][c][1]:.2f}x':>22}"
                         for n in sizes[1:])
        print(f"{c:<9}{cells}{ratios}")


if __name__ == "__main__":
    main()
