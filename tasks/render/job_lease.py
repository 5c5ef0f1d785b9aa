"""A job lease: at most one run of a render job writes at a time, and a run that lost it stops.

The lease is a sequence of records in the store, `renders/<job>/lease/<generation, 8 digits>.json`,
one per run that took the job: {owner, host, process, ttl_s, acquired_at, acquired_store_time,
previous: {generation, fence}, released}. The newest generation is the lease. A record's store
modification time (S3 LastModified, a local file's mtime) is its last renewal: every age here is
measured on the store's clock, never by comparing two hosts' clocks.

- acquire: write a probe object and read its store time (`store_now`), then read the newest
  record G. G is free when released, expired (its store time + ttl before the probe's), or left
  by a process of this kernel and pid namespace that provably no longer runs
  (tasks/render/process_identity.py; a shared hostname and pid prove nothing). Otherwise
  `JobLeaseHeld`. A free lease is taken by creating G+1 exclusively (local `os.link`, S3
  `If-None-Match: *`): of two racing runs one wins, the other gets `JobLeaseHeld`. G+1's record
  fixes G's fence, the store time after which nothing G writes is read (tasks/render/job_fence.py):
  G's release write, G's last renewal + ttl when it expired, or the probe's time when its process
  was dead. Records no fence needs any more are deleted.
- heartbeat: a daemon thread rewrites our record every ttl/4. Any failure (the store raising, a
  newer generation) marks the lease lost for good; so does a heartbeat that stalled: the holder
  counts itself lost once its last successful renewal, on its own monotonic clock, is older than
  the safe window (ttl/2), well before the store would call it expired. `check()` then raises
  `JobLeaseLost`; the render driver calls it for every batch, the workers check the fence in the
  store before every index part (`job_fence.check_fence`).
- release: our record is rewritten with `released: true` (unless lost: then it is not ours).

A store that cannot refuse a second create (`Store.check_exclusive_create`) is refused with
`UnsafeStore`: two runs could both "create" the same generation. `unsafe_single_writer=True` (the
CLI's `--unsafe-single-writer`) accepts it, when the user guarantees one run at a time.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Self

from voicefleet.tasks.store.storage import Store

from . import process_identity
from .job_paths import job_prefix, part_generation

DEFAULT_TTL_S = 60.0
SAFE_FRACTION = 0.5  # a holder, and a writer checking the fence, stop once the last renewal is older than ttl * this
_RENEW_FRACTION = 0.25  # the heartbeat renews every ttl * this: one slow renewal still fits the safe window
log = logging.getLogger(__name__)


class JobLeaseHeld(RuntimeError):
    """Another run of this job holds its lease."""


class JobLeaseLost(RuntimeError):
    """This run's lease expired, could not be renewed, or another run took the job over."""


def lease_key(job_id: str, generation: int) -> str:
    return f"{job_prefix(job_id)}/lease/{int(generation):08d}.json"


def lease_times(store: Store, job_id: str) -> dict[int, float]:
    """Generation -> store time of its record's last write (its last renewal or its release)."""
    out = {}
    for key, mtime in store.glob_times(f"{job_prefix(job_id)}/lease/*.json").items():
        stem = key.rsplit("/", 1)[-1].removesuffix(".json")
        if stem.isdigit():
            out[int(stem)] = mtime
    return out


def read_record(store: Store, job_id: str, generation: int) -> dict[str, Any] | None:
    """A generation's lease record; None when it is gone or unreadable."""
    try:
        record = store.read_json(lease_key(job_id, generation))
    except (FileNotFoundError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def own_fence(record: dict[str, Any] | None, mtime: float) -> float:
    """The store time after which a generation's writes do not count, judged from its own record:
    its release write, else its last renewal + its ttl."""
    record = record or {}
    return mtime if record.get("released") else mtime + float(record.get("ttl_s", DEFAULT_TTL_S))


def store_now(store: Store, job_id: str) -> float:
    """The store's clock now: the store time of a probe object written and deleted for the purpose.

    Probes live beside `lease/`, not in it: s3fs's `glob` of `lease/*.json` raises FileNotFoundError
    when a folder it saw vanishes before it reads it, as one holding only a deleted probe would."""
    key = f"{job_prefix(job_id)}/lease-probes/{uuid.uuid4().hex}"
    store.write_bytes(key, b"")
    try:
        return store.glob_times(key)[key]
    finally:
        store.delete(key)


class JobLease:
    """The lease of one render job for this run; use as a context manager around the run's writes.

    After `acquire`: `generation` (the fencing token every index part is written under) and
    `acquired_store_time` (epoch seconds on the store's clock: orphan removal under this lease keeps
    younger files, which a run that took the job after us may still be indexing).
    """

    def __init__(self, store: Store, job_id: str, owner: str = "", ttl_s: float = DEFAULT_TTL_S,
                 unsafe_single_writer: bool = False):
        if not ttl_s > 0:
            raise ValueError(f"lease ttl_s must be positive, got {ttl_s}")
        self.store, self.job_id, self.ttl_s = store, job_id, float(ttl_s)
        self.unsafe_single_writer = unsafe_single_writer
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.generation: int | None = None
        self.acquired_store_time: float | None = None
        self.safe_s = self.ttl_s * SAFE_FRACTION
        self._record: dict[str, Any] = {}
        self._lost: str | None = None  # why, once lost; never cleared
        self._renewed = 0.0  # monotonic time the last successful renewal was sent
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- taking the lease ----------------------------------------------------------------------

    def acquire(self) -> Self:
        if self.generation is not None:
            raise RuntimeError(f"render job {self.job_id}: this JobLease already holds generation {self.generation}")
        self.store.check_exclusive_create(allow_unsafe=self.unsafe_single_writer)  # UnsafeStore
        sent = time.monotonic()
        now = store_now(self.store, self.job_id)
        times = lease_times(self.store, self.job_id)  # read after the probe: a renewal since then is seen
        newest = max(times, default=0)
        previous = None
        if newest:
            previous = {"generation": newest, "fence": self._free_since(newest, times[newest], now)}
        self._record = {"owner": self.owner, "host": socket.gethostname(), "process": process_identity.current(),
                        "ttl_s": self.ttl_s, "acquired_at": dt.datetime.now(dt.UTC).isoformat(),
                        "acquired_store_time": now, "previous": previous, "released": False}
        if not self.store.create_bytes(lease_key(self.job_id, newest + 1), self._body(),
                                       allow_unsafe=self.unsafe_single_writer):
            raise JobLeaseHeld(f"render job {self.job_id} is being written by another run: it took the lease "
                               "at the same moment; wait for it to finish, or rerun after it stopped")
        self.generation, self.acquired_store_time, self._renewed = newest + 1, now, sent
        try:
            self._remove_stale_records(times)
        except BaseException:
            self.release()
            raise
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease-{self.job_id}", daemon=True)
        self._thread.start()
        return self

    def _free_since(self, generation: int, mtime: float, now: float) -> float:
        """The fence of the newest generation when it is free to take (see the module docstring);
        `JobLeaseHeld` when it is not."""
        record = read_record(self.store, self.job_id, generation)
        fence = own_fence(record, mtime)
        if (record or {}).get("released") or now > fence:
            return fence
        if process_identity.is_dead((record or {}).get("process")):
            return now  # its process is gone: what its workers still write from now on does not count
        owner = (record or {}).get("owner", "unknown")
        raise JobLeaseHeld(f"render job {self.job_id} is being written by another run ({owner}, generation "
                           f"{generation}; its lease expires {fence - now:.0f} s from now unless renewed); "
                           "wait for it to finish, or rerun after it stopped")

    def _remove_stale_records(self, times: dict[int, float]) -> None:
        """Delete records no fence needs: a generation's fence lives in its successor's record (and its
        own, for older records), so keep g and g+1 for every g that still has index parts, the previous
        generation and ours. Compaction rewrites parts under its own generation, so old ones go."""
        with_parts = {part_generation(k) for k in self.store.glob(f"{job_prefix(self.job_id)}/index/*.parquet")}
        keep = {self.generation, self.generation - 1}
        for g in with_parts - {None}:
            keep.update((g, g + 1))
        for g in sorted(set(times) - keep):
            self.store.delete(lease_key(self.job_id, g))

    # -- holding it ----------------------------------------------------------------------------

    def _body(self, released: bool = False) -> bytes:
        return json.dumps({**self._record, "released": released}).encode()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s * _RENEW_FRACTION):
            self.renew()
            if self._lost:
                return

    def _lose(self, why: str) -> None:
        if self._lost is None:
            self._lost = why
            log.warning("render job %s: lease generation %s lost: %s", self.job_id, self.generation, why)
        self._stop.set()

    def renew(self) -> None:
        """Rewrite our record (a later store time) if the lease is still ours; any failure loses it."""
        if self.generation is None or self._lost:
            return
        sent = time.monotonic()
        if self.lost:  # the safe window passed without a renewal: never extend a lease that may be gone
            self._lose(self._stalled())
            return
        try:
            newest = max(lease_times(self.store, self.job_id), default=0)
            if newest != self.generation:
                self._lose(f"generation {newest} took the job over")
                return
            self.store.write_bytes(lease_key(self.job_id, self.generation), self._body())
        except Exception as e:  # noqa: BLE001 — any failure: we can no longer show the store we hold it
            self._lose(f"renewing the lease failed: {type(e).__name__}: {e}")
            return
        self._renewed = sent

    def _stalled(self) -> str:
        return (f"no renewal for {time.monotonic() - self._renewed:.1f} s, over the safe window of "
                f"{self.safe_s:.1f} s (ttl {self.ttl_s:g} s)")

    @property
    def lost(self) -> bool:
        """Lost for good: a failed renewal, a newer generation, or a heartbeat that stalled."""
        if self._lost is not None:
            return True
        return self.generation is not None and time.monotonic() - self._renewed > self.safe_s

    def check(self) -> None:
        """Raise `JobLeaseLost` when this run may no longer write the job."""
        if self.lost:
            why = self._lost or self._stalled()
            raise JobLeaseLost(f"render job {self.job_id}: this run lost its lease (generation {self.generation}: "
                               f"{why}); it stopped writing, and nothing it wrote after that is read")

    # -- giving it back ------------------------------------------------------------------------

    def release(self) -> None:
        """Stop the heartbeat and mark our record released (not when lost: it is not ours to mark)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, self.ttl_s))
        if self.generation is not None and not self.lost:
            try:
                if max(lease_times(self.store, self.job_id), default=0) == self.generation:
                    self.store.write_bytes(lease_key(self.job_id, self.generation), self._body(released=True))
            except Exception as e:  # noqa: BLE001 — the lease then expires after ttl_s instead
                log.warning("render job %s: could not release lease generation %s (%s: %s); it expires in %g s",
                            self.job_id, self.generation, type(e).__name__, e, self.ttl_s)
        self.generation = None

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
