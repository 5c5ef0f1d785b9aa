"""What a render job leaves behind that nothing reads, removed under the job's lease.

    runs/<n>/todo-*.parquet         each run's work list; a killed run leaves its parts, the next run
                                    (holding the lease, so no other run uses them) removes every run's
    watermarks/<job>/<name>.parquet fingerprints of a shard (tasks/safety/fingerprint.py), written just
                                    before the shard: a crash before the tar, or a tar later removed as
                                    an orphan, leaves fingerprints of audio nobody was delivered

Orphaned tars themselves are removed by `remove_orphans` (tasks/render/job_index.py). As there, a file
younger than the lease the cleanup runs under (`older_than`, store clock) is kept: a run that lost
its lease may still be writing it.
"""
from __future__ import annotations

from voicefleet.tasks.safety.fingerprint import PREFIX as FINGERPRINTS
from voicefleet.tasks.store.ids import safe_id
from voicefleet.tasks.store.storage import Store

from .job_paths import job_prefix


def runs_prefix(job_id: str) -> str:
    """Folder of every run's work list (tasks/render/plan.py `todo_prefix`)."""
    return f"{job_prefix(job_id)}/runs"


def remove_work_lists(store: Store, job_id: str) -> None:
    """Every run's todo parts (call under the job lease, before writing this run's)."""
    store.delete(runs_prefix(job_id), recursive=True)


def remove_unreferenced_fingerprints(store: Store, job_id: str, older_than: float | None = None) -> list[str]:
    """Fingerprint parts of the job whose shard tar does not exist; returns the keys removed."""
    job = safe_id(job_id, "job id")
    tars = {k.rsplit("/", 1)[-1].removesuffix(".tar") for k in store.glob(f"{job_prefix(job)}/shards/*.tar")}
    removed = []
    for key, mtime in store.glob_times(f"{FINGERPRINTS}/{job}/*.parquet").items():
        if key.rsplit("/", 1)[-1].removesuffix(".parquet") in tars:
            continue
        if older_than is not None and mtime >= older_than:
            continue
        store.delete(key)
        removed.append(key)
    return removed
