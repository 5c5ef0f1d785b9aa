"""Where a render job's files live in the store: `renders/<job_id>/` and its shard and index keys.

    renders/<job_id>/job.json               the job record (script, principal, runs, totals)
    renders/<job_id>/shards/<name>.tar      WebDataset shards (tasks/render/shards.py)
    renders/<job_id>/index/<name>.parquet   index parts, one per shard (tasks/render/index_schema.py);
                                            g<generation>-<name>.parquet when written under a job lease
                                            generation (tasks/render/job_lease.py: the fence)
    renders/<job_id>/script/r<run>/*.parquet the current script's lines (line_id, line_hash) as of
                                            run <run>; the newest run's folder is the script
"""
from __future__ import annotations

import re
from typing import Any

from voicefleet.tasks.store.ids import safe_id
from voicefleet.tasks.store.storage import Store


class NoSuchJob(LookupError):
    """No render job with this id in the store (no job.json)."""


def job_prefix(job_id: str) -> str:
    return f"renders/{safe_id(job_id, 'job_id')}"


def job_key(job_id: str) -> str:
    """The job record: script, principal, voices, runs, totals."""
    return f"{job_prefix(job_id)}/job.json"


def shard_key(job_id: str, name: str) -> str:
    return f"{job_prefix(job_id)}/shards/{safe_id(name, 'shard name')}.tar"


def index_key(job_id: str, name: str, generation: int | None = None) -> str:
    """An index part's key; `generation` (the job lease's) prefixes the name as `g<8 digits>-`."""
    name = safe_id(name, "shard name")
    if generation is not None:
        name = f"g{int(generation):08d}-{name}"
    return f"{job_prefix(job_id)}/index/{name}.parquet"


_GENERATION = re.compile(r"g([0-9]{8})-[^/]*\.parquet", re.ASCII)


def part_generation(key: str) -> int | None:
    """The lease generation an index part was written under; None for parts written without one."""
    m = _GENERATION.fullmatch(key.rsplit("/", 1)[-1])
    return int(m.group(1)) if m else None


def script_prefix(job_id: str, run: int | None = None) -> str:
    """Folder of the script's line manifest (all runs', or run `run`'s)."""
    base = f"{job_prefix(job_id)}/script"
    return base if run is None else f"{base}/r{int(run):05d}"


def script_lines_glob(store: Store, job_id: str) -> str | None:
    """URL pattern of the current script's lines (the newest run's manifest); None before any."""
    runs = sorted({k.split("/")[-2] for k in store.glob(f"{script_prefix(job_id)}/r*/*.parquet")})
    return store.url(script_prefix(job_id), runs[-1], "*.parquet") if runs else None


def index_glob(store: Store, job_id: str) -> str:
    """URL pattern of every index part of a job, e.g. for DuckDB's `read_parquet`.

    Pass `union_by_name=true` to DuckDB so parts written before a column was added still read.
    """
    return store.url(job_prefix(job_id), "index", "*.parquet")


def read_job(store: Store, job_id: str) -> dict[str, Any]:
    """The job record `renders/<job_id>/job.json`; `NoSuchJob` when the job was never started here."""
    key = job_key(safe_id(job_id, "job id"))
    if not store.exists(key):
        raise NoSuchJob(f"no render job {job_id} in {store.uri}")
    return store.read_json(key)
