"""A job lease: at most one run of a render job writes at a time.

The lease is a sequence of objects in the store, `renders/<job>/lease/<generation>.json`, each
{owner, host, pid, acquired_at, expires_at, released}. The newest generation is the lease.

- acquire: read the newest generation G. If it is held (not released, not expired, and not left
  by a dead process on this host), refuse with `JobLeaseHeld` naming the owner and the expiry.
  Otherwise create G+1 with an exclusive create (local: `os.link`; S3: `If-None-Match: *`, the
  same primitives as the voice registry): of two runs racing for the lease exactly one wins,
  the other gets `JobLeaseHeld`.
- heartbeat: a daemon thread rewrites our generation with a later expiry every `ttl_s / 3`;
  if a newer generation appeared (our lease expired and another run took it), `lost` is set and
  `check()` raises `JobLeaseLost`, so the run stops before writing more.
- release: our generation is rewritten with `released: true`.

A killed run's lease expires after `ttl_s` (default 60 s); on the same host a rerun takes it
over at once when the holder's process is gone.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import socket
import threading
import uuid

from voicefleet.tasks.store.storage import Store

from .job_paths import job_prefix

DEFAULT_TTL_S = 60.0


class JobLeaseHeld(RuntimeError):
    """Another run of this job holds its lease."""


class JobLeaseLost(RuntimeError):
    """This run's lease expired and another run took the job over."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class JobLease:
    def __init__(self, store: Store, job_id: str, owner: str = "", ttl_s: float = DEFAULT_TTL_S):
        self.store, self.job_id, self.ttl_s = store, job_id, ttl_s
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.generation: int | None = None
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _key(self, generation: int) -> str:
        return f"{job_prefix(self.job_id)}/lease/{generation:08d}.json"

    def _newest(self) -> tuple[int, dict | None]:
        gens = [int(k.rsplit("/", 1)[-1].split(".")[0]) for k in self.store.glob(f"{job_prefix(self.job_id)}/lease/*.json")]
        if not gens:
            return 0, None
        g = max(gens)
        try:
            return g, self.store.read_json(self._key(g))
        except (FileNotFoundError, ValueError):
            return g, None

    def _body(self, released: bool = False) -> bytes:
        now = _now()
        return json.dumps({"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(),
                           "acquired_at": now.isoformat(), "released": released,
                           "expires_at": (now + dt.timedelta(seconds=self.ttl_s)).isoformat()}).encode()

    @staticmethod
    def holds(lease: dict | None) -> bool:
        """Is this lease object still in force?"""
        if lease is None or lease.get("released"):
            return False
        if dt.datetime.fromisoformat(lease["expires_at"]) <= _now():
            return False
        if lease.get("host") == socket.gethostname() and not _pid_alive(int(lease.get("pid", 0))):
            return False  # its process is gone (killed): nobody heartbeats it any more
        return True

    def acquire(self) -> "JobLease":
        g, lease = self._newest()
        if self.holds(lease):
            raise JobLeaseHeld(f"render job {self.job_id} is being written by another run ({lease['owner']}, "
                               f"lease expires {lease['expires_at']} unless renewed); wait for it to finish, "
                               "or rerun after it stopped")
        if not self._create(self._key(g + 1), self._body()):
            raise JobLeaseHeld(f"render job {self.job_id}: another run took the lease at the same moment")
        self.generation = g + 1
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease-{self.job_id}", daemon=True)
        self._thread.start()
        return self

    def _create(self, key: str, data: bytes) -> bool:
        # exclusive create (Store.create_bytes); a store that cannot refuse a second create is
        # accepted here: the lease's generation number still orders the runs
        return self.store.create_bytes(key, data, allow_unsafe=True)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            self.renew()

    def renew(self) -> None:
        g, _ = self._newest()
        if g != self.generation:
            self.lost = True
            self._stop.set()
            return
        self.store.write_bytes(self._key(self.generation), self._body())

    def check(self) -> None:
        if self.lost:
            raise JobLeaseLost(f"render job {self.job_id}: this run's lease expired and another run took over; "
                               "this run stopped writing")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.generation is not None and not self.lost:
            g, _ = self._newest()
            if g == self.generation:
                self.store.write_bytes(self._key(self.generation), self._body(released=True))
        self.generation = None

    def __enter__(self) -> "JobLease":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
