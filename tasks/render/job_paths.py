"""Where a render job's files live in the store: `renders/<job_id>/` and its shard and index keys.

    renders/<job_id>/job.json               the job record (script, principal, runs, totals)
    renders/<job_id>/shards/<name>.tar      WebDataset shards (tasks/render/shards.py)
    renders/<job_id>/index/<name>.parquet   index parts, one per shard (tasks/render/index_schema.py)
"""
from __future__ import annotations

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


def index_key(job_id: str, name: str) -> str:
    return f"{job_prefix(job_id)}/index/{safe_id(name, 'shard name')}.parquet"


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
