"""Per-voice training locks: at most one enrollment run trains a voice at a time.

    voices/<voice_id>/training-lock.json   {"run", "owner", "ttl_s", "renewal", "released"[, "process"]}

A run claims a voice before it trains it and keeps the claim until the version is registered. The
record is a lease: its store modification time (S3 LastModified, a local file's mtime) is its last
renewal, so ages are measured on the store's clock, never by comparing two hosts' clocks.

- claim: absent -> exclusive create (`Store.create_bytes`); released, expired (last renewal +
  ttl before a probe object's store time), or held by a process proven gone (below) -> compare-and-swap
  over the exact bytes read (`Store.swap_bytes`): of two runs taking the same lock one wins. Otherwise
  `VoiceBusy` naming the run that holds it.
- a holder proven gone: with `process` (who this run's process is) and `holder_gone` (a test of another
  record's `process`), both given by the caller (the enrollment flow: tasks/render/process_identity.py, same
  boot and pid namespace, pid free or reused), a rerun after the flow process was killed takes its locks at
  once instead of waiting `ttl_s`. A holder that cannot be proven gone (another host or container) is busy
  until its lock expires.
- heartbeat: one daemon thread renews every held lock every ttl/4 by a swap over our own last
  bytes; a swap that fails means another run took the lock after ours expired: that voice is lost
  for good and `check` raises `VoiceLockLost`, so this run registers nothing for it.
- release: a swap to a record marked released (nothing when lost: it is not ours to mark).

Why not the render job lease (tasks/render/job_lease.py)? It fences index parts by generation and
cleans records by the parts that still need them; a training claim needs neither, only one holder
and an expiry. A crashed run's claim expires after `ttl_s` (default 10 minutes).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from typing import Any, Self

from voicefleet.tasks.store.storage import Store

DEFAULT_TTL_S = 600.0
_RENEW_FRACTION = 0.25
log = logging.getLogger(__name__)


class VoiceBusy(RuntimeError):
    """Another run holds the voice's training lock (the message names it and when it expires)."""


class VoiceLockLost(RuntimeError):
    """This run's claim on a voice expired and another run took it; it must not register the voice."""


def lock_key(voice_id: str) -> str:
    return f"voices/{voice_id}/training-lock.json"


def store_time(store: Store, key: str) -> float | None:
    """The store's modification time of `key` (epoch seconds on the store's clock); None when absent."""
    return store.glob_times(key).get(key)


def store_now(store: Store, voice_id: str) -> float:
    """The store's clock now: the time of a probe object written and removed for the purpose."""
    probe = f"voices/{voice_id}/training-lock-probes/{uuid.uuid4().hex}"
    store.write_bytes(probe, b"")
    try:
        return store_time(store, probe) or 0.0
    finally:
        store.delete(probe)


class TrainingLocks:
    """The training locks of one enrollment run; a context manager that releases all of them at exit."""

    def __init__(self, store: Store, run_id: str, ttl_s: float = DEFAULT_TTL_S, *, process: dict | None = None,
                 holder_gone: Callable[[Any], bool] | None = None):
        if not ttl_s > 0:
            raise ValueError(f"training lock ttl_s must be positive, got {ttl_s}")
        self.store, self.run_id, self.ttl_s = store, run_id, float(ttl_s)
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.process, self.holder_gone = process, holder_gone
        self._held: dict[str, bytes] = {}  # voice -> the bytes of our last write
        self._lost: dict[str, str] = {}  # voice -> why
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self, renewal: int, released: bool = False) -> bytes:
        record = {"run": self.run_id, "owner": self.owner, "ttl_s": self.ttl_s, "renewal": renewal,
                  "released": released}
        if self.process is not None:
            record["process"] = self.process
        return json.dumps(record).encode()

    def claim(self, voice_id: str) -> None:
        """Take the voice's lock for this run, or raise `VoiceBusy`."""
        key, mine = lock_key(voice_id), self._body(0)
        if self.store.create_bytes(key, mine):
            return self._hold(voice_id, mine)
        try:
            current = self.store.read_bytes(key)
        except FileNotFoundError:  # released and removed between the two calls: try once more
            if self.store.create_bytes(key, mine):
                return self._hold(voice_id, mine)
            raise VoiceBusy(f"voice {voice_id}: another run took its training lock at the same moment") from None
        record = _parse(current)
        if not record.get("released") and self._holder_gone(record):
            log.warning("voice %s: taking over the training lock of run %s: its process (%s) is gone", voice_id,
                        record.get("run", "?"), record.get("owner", "?"))
        elif not record.get("released"):
            renewed, now = store_time(self.store, key), store_now(self.store, voice_id)
            expires = (renewed or 0.0) + float(record.get("ttl_s", DEFAULT_TTL_S))
            if record.get("run") == self.run_id or now <= expires:
                raise VoiceBusy(f"voice {voice_id} is being trained by run {record.get('run', '?')} "
                                f"({record.get('owner', '?')}); its lock expires {max(expires - now, 0):.0f} s "
                                "from now unless renewed")
        if not self.store.swap_bytes(key, mine, current):
            raise VoiceBusy(f"voice {voice_id}: another run took its training lock at the same moment")
        self._hold(voice_id, mine)

    def _holder_gone(self, record: dict) -> bool:
        """Another run's lock whose process the caller's `holder_gone` proves gone (never our own run's)."""
        return record.get("run") != self.run_id and self.holder_gone is not None and bool(
            self.holder_gone(record.get("process")))

    def _hold(self, voice_id: str, body: bytes) -> None:
        with self._mutex:
            self._held[voice_id] = body
            if self._thread is None:
                self._stop.clear()
                self._thread = threading.Thread(target=self._heartbeat, name=f"training-locks-{self.run_id}",
                                                daemon=True)
                self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s * _RENEW_FRACTION):
            self.renew()

    def renew(self) -> None:
        """Rewrite every held lock (a later store time); a lock someone else took is lost for good."""
        with self._mutex:
            for voice_id, last in list(self._held.items()):
                body = self._body(_parse(last).get("renewal", 0) + 1)
                try:
                    ok = self.store.swap_bytes(lock_key(voice_id), body, last)
                except Exception as e:  # noqa: BLE001 — the store failing: try again next beat, expire if it lasts
                    log.warning("voice %s: renewing its training lock failed: %s: %s", voice_id, type(e).__name__, e)
                    continue
                if ok:
                    self._held[voice_id] = body
                else:
                    self._held.pop(voice_id)
                    self._lost[voice_id] = "another run took the lock after this run's claim expired"
                    log.warning("voice %s: training lock lost by run %s", voice_id, self.run_id)

    def check(self, voice_id: str) -> None:
        """Raise `VoiceLockLost` unless this run still holds the voice's lock (read from the store now)."""
        with self._mutex:
            why = self._lost.get(voice_id) or (None if voice_id in self._held else "it never claimed the voice")
            if why is None:
                try:
                    ours = self.store.read_bytes(lock_key(voice_id)) == self._held[voice_id]
                except FileNotFoundError:
                    ours = False
                if not ours:
                    why = self._lost[voice_id] = "another run took the lock after this run's claim expired"
                    self._held.pop(voice_id)
        if why:
            raise VoiceLockLost(f"voice {voice_id}: run {self.run_id} no longer holds its training lock ({why}); "
                                "nothing is registered for it")

    def release(self, voice_id: str) -> None:
        """Mark one voice's lock released (no-op when this run does not hold it)."""
        with self._mutex:
            last = self._held.pop(voice_id, None)
            if last is None:
                return
            try:
                self.store.swap_bytes(lock_key(voice_id), self._body(_parse(last).get("renewal", 0) + 1, True), last)
            except Exception as e:  # noqa: BLE001 — it then expires after ttl_s instead
                log.warning("voice %s: could not release its training lock (%s: %s); it expires in %g s",
                            voice_id, type(e).__name__, e, self.ttl_s)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        for voice_id in list(self._held):
            self.release(voice_id)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _parse(data: bytes) -> dict:
    try:
        record = json.loads(data)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}

