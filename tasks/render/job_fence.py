"""The job lease's fence: what a run writes after it lost the job's lease is never read.

Every index part is written under the writing run's lease generation and named with it
(`g<generation>-<name>.parquet`, job_paths.index_key). A generation's writes count up to its fence,
a time on the store's clock (tasks/render/job_lease.py):

- an older generation g: the fence g+1 recorded when it took the job (`previous.fence` in g+1's
  lease record): g's release write, g's last renewal + ttl when g had expired, or the takeover's
  probe time when g's process was dead. g cannot move it: a late renewal rewrites g's own record,
  not g+1's.
- the newest generation N: its own record's store time + ttl (its release time once released), so
  a part N wrote after it expired does not count even before anyone takes the job over.

Readers (`trusted_parts`, used by index_read.index_parts and so by every index reader, the work
list and compaction) keep a part when its store time is at or before its generation's fence. Parts
without a generation (written before parts were tagged) always count. A generation older than the
newest whose records are both gone had no parts when they were removed (JobLease keeps the records
of every generation with parts), so a part of it found now landed after its fence: it does not count.

Writers (`check_fence`: the shard writer right before each index part; compaction before deleting
the parts it replaced and the older generations' parts no reader uses, `fenced_out_parts`) raise `JobLeaseLost` when a newer generation exists, when theirs was
released, or when theirs went unrenewed for longer than the safe window in store time. A part that
passes the check and still lands after its fence is only lost work: readers skip it, a rerun renders
its lines again.

Not protected: a store whose clock jumps backwards, or object times written by a client rather than
the server; S3 times are whole seconds, so a ttl under a few seconds judges coarsely.
"""
from __future__ import annotations

from voicefleet.tasks.store.storage import Store

from .job_lease import DEFAULT_TTL_S, SAFE_FRACTION, JobLeaseLost, lease_times, own_fence, read_record, store_now
from .job_paths import job_prefix, part_generation


def fence_of(store: Store, job_id: str, generation: int, times: dict[int, float]) -> float | None:
    """The store time up to which `generation`'s writes count; None when nothing can vouch for them.

    `times`: `lease_times(store, job_id)`, read once by the caller.
    """
    if generation + 1 in times:
        previous = (read_record(store, job_id, generation + 1) or {}).get("previous") or {}
        if previous.get("generation") == generation and previous.get("fence") is not None:
            return float(previous["fence"])
    if generation in times:  # the newest generation, or a successor written before fences were recorded
        return own_fence(read_record(store, job_id, generation), times[generation])
    return None


def trusted_parts(store: Store, job_id: str, part_times: dict[str, float]) -> list[str]:
    """The index parts (key -> store time) a reader may use, sorted; see the module docstring."""
    generations = {key: part_generation(key) for key in part_times}
    tagged = {g for g in generations.values() if g is not None}
    if not tagged:
        return sorted(part_times)
    times = lease_times(store, job_id)
    if not times:  # the lease records were removed by hand: nothing to judge by, as before fencing
        return sorted(part_times)
    newest = max(times)
    fences = {g: fence_of(store, job_id, g, times) for g in tagged}
    keep = []
    for key in sorted(part_times):
        g = generations[key]
        fence = None if g is None else fences[g]
        if g is None or (fence is None and g > newest) or (fence is not None and part_times[key] <= fence):
            keep.append(key)
    return keep


def fenced_out_parts(store: Store, job_id: str, generation: int) -> list[str]:
    """Index parts of generations older than `generation` that no reader uses (written after their
    fence): for the holder of `generation` to delete, so that a plain glob of `index/` (the output
    contract's readers) does not meet them. Their fences are fixed, so they can never count again."""
    listed = store.glob_times(f"{job_prefix(job_id)}/index/*.parquet")
    trusted = set(trusted_parts(store, job_id, listed))
    return sorted(k for k in listed if k not in trusted and (part_generation(k) or generation) < generation)


def check_fence(store: Store, job_id: str, generation: int) -> None:
    """Raise `JobLeaseLost` unless `generation` still holds the job's lease and renewed it within the
    safe window, on the store's clock. One probe write, two listings and one read."""
    now = store_now(store, job_id)
    times = lease_times(store, job_id)  # after the probe: a renewal since then counts
    newest = max(times, default=0)
    where = f"render job {job_id}: lease generation {generation}"
    if newest != generation:
        raise JobLeaseLost(f"{where} lost the job to generation {newest}; this run stops, and what it wrote "
                           "after that is not read")
    record = read_record(store, job_id, generation) or {}
    if record.get("released"):
        raise JobLeaseLost(f"{where} was released; this run stops writing")
    safe = float(record.get("ttl_s", DEFAULT_TTL_S)) * SAFE_FRACTION
    if now - times[generation] > safe:
        raise JobLeaseLost(f"{where} was last renewed {now - times[generation]:.0f} s ago in store time, over "
                           f"its safe window of {safe:.0f} s; this run stops writing")
