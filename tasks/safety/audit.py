"""The audit log: an append-only, hash-chained record of who did what with which voice.

Every enrollment, consent verdict, grant, revoke, withdrawal and render job appends one record to
the store, at ``audit/<sequence, 12 digits>.json``, written with create-if-absent
(`Store.create_bytes`): two writers racing for the same sequence number cannot both win; the loser
re-reads the tail and takes the next number. Each record carries the SHA-256 of the previous
record (``prev_hash``) and its own (``hash``, over its canonical JSON without ``hash``), so an
edited, removed or reordered record breaks the chain at a place `verify` names. (Tamper-evident,
not tamper-proof: whoever can rewrite the whole store can rewrite the whole chain; anchor the
latest hash elsewhere, e.g. object lock or a periodic copy, to close that.)

A record: ``{"seq", "at", "event", "actor", "voice", "version", "job", "lines", "detail",
"prev_hash", "hash"}`` -- fields that do not apply are null.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from voicefleet.tasks.store.storage import Store

__all__ = ["AuditBroken", "EVENTS", "append", "read", "verify"]

PREFIX = "audit"
EVENTS = ("enrollment", "consent_verdict", "grant", "revoke", "withdraw", "render_started", "render_finished")
GENESIS = "0" * 64
_KEY = re.compile(r"audit/(\d{12})\.json")


class AuditBroken(RuntimeError):
    """The chain does not verify: a record was edited, removed or inserted."""


def _key(seq: int) -> str:
    return f"{PREFIX}/{seq:012d}.json"


def _digest(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()


def _sequences(store: Store) -> list[int]:
    return sorted(int(m.group(1)) for k in store.list(PREFIX) if (m := _KEY.fullmatch(k)))


def append(store: Store, event: str, actor: str, *, voice: str | None = None, version: int | str | None = None,
           job: str | None = None, lines: int | None = None, detail: dict[str, Any] | None = None,
           max_attempts: int = 50) -> dict[str, Any]:
    """Append one record; returns it (with its `seq` and `hash`)."""
    if event not in EVENTS:
        raise ValueError(f"unknown audit event {event!r} (one of {', '.join(EVENTS)})")
    for attempt in range(max_attempts):
        seqs = _sequences(store)
        last = store.read_json(_key(seqs[-1])) if seqs else None
        record = {"seq": (last["seq"] + 1) if last else 1, "at": datetime.now(timezone.utc).isoformat(),
                  "event": event, "actor": actor, "voice": voice, "version": None if version is None else str(version),
                  "job": job, "lines": lines, "detail": detail or {},
                  "prev_hash": last["hash"] if last else GENESIS}
        record["hash"] = _digest(record)
        data = json.dumps(record, indent=1, ensure_ascii=False).encode()
        if store.create_bytes(_key(record["seq"]), data):
            return record
        time.sleep(random.uniform(0.005, 0.02) * min(attempt + 1, 10))
    raise RuntimeError(f"audit log in {store.uri}: gave up after {max_attempts} concurrent appends")


def read(store: Store) -> list[dict[str, Any]]:
    """Every record, in sequence order (unverified; see `verify`)."""
    return [store.read_json(_key(s)) for s in _sequences(store)]


def verify(records: Iterable[dict[str, Any]]) -> int:
    """Check the chain; returns the number of records, or raises `AuditBroken` naming the first break."""
    prev, n = GENESIS, 0
    for n, record in enumerate(records, 1):
        seq = record.get("seq")
        if seq != n:
            raise AuditBroken(f"audit record {n} is missing or out of place (found seq {seq} in its slot)")
        if _digest(record) != record.get("hash"):
            raise AuditBroken(f"audit record {n} ({record.get('event')} at {record.get('at')}) was edited: "
                              "its content no longer matches its hash")
        if record.get("prev_hash") != prev:
            raise AuditBroken(f"audit record {n} does not follow record {n - 1}: prev_hash differs "
                              "(a record before it was replaced)")
        prev = record["hash"]
    return n


@dataclass(frozen=True)
class Query:
    voice: str | None = None
    since: datetime | None = None

    def __call__(self, record: dict[str, Any]) -> bool:
        if self.voice is not None and record.get("voice") != self.voice \
                and self.voice not in (record.get("detail") or {}).get("voices", {}):
            return False
        return self.since is None or datetime.fromisoformat(record["at"]) >= self.since
