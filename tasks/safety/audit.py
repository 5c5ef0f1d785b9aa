"""The audit log: an append-only, keyed, hash-chained record of who did what with which voice.

Every enrollment, consent verdict, grant, revoke, withdrawal, rollback and render job appends one
record at ``audit/<sequence, 12 ASCII digits>.json``, written with create-if-absent
(`Store.create_bytes`): of two writers racing for a number exactly one wins; the loser re-reads the
tail and takes the next. A record carries the previous record's ``hash`` (``prev_hash``), the id of
the audit key (``key_id``) and its own ``hash``: an HMAC-SHA256 under the audit key
(tasks/safety/audit_key.py) of its canonical JSON without ``hash``. Without the key, an edited record
cannot be given a hash that verifies, so an edit shows even when the attacker recomputes every hash.

The head, ``audit-head.json`` (beside ``audit/``, not in it), holds the sequence number and hash of the
last record an append completed, with a MAC under the same key. A new log starts with a head at 0,
created only-if-absent before its first record; an append finds the tail from the head and moves it
forward with a compare-and-swap (`Store.swap_bytes`), never back. `verify` wants records 1..head's
sequence present and the head's record to be the one it signed, so deleting the last records, or
``audit/`` entirely, is reported, naming the first missing record. Records after the head are
accepted when they chain (an append that stopped between its record and the head). An append refuses (`AuditUnavailable`) while
the head or the last record does not verify, the head is ahead of the records, or records are kept
without a head: the log fails closed, and nothing is appended on top of a cut or edited tail (which
would otherwise hide the cut under a fresh head).

What the key does not stop (the README's threat model): whoever holds it can rewrite the whole log
and head at will; whoever can write the store without it can still delete the log and its head
together (it then reads as empty), or put back an older head with the records after it deleted (a
head and its records copied earlier verify). A checkpoint kept off the store catches those: the
``<seq>:<hash>`` that ``voicefleet audit`` prints, passed back as ``--checkpoint`` next time (or S3
object lock / versioning on ``audit/`` and the head).

A record: ``{"seq", "at", "event", "actor", "voice", "version", "job", "lines", "detail", "prev_hash",
"key_id", "hash"}`` -- fields that do not apply are null.
"""
from __future__ import annotations

import hmac
import json
import logging
import random
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from voicefleet.tasks.store.storage import Store, UnsafeStore

from .audit_key import AuditKey, AuditKeyMissing, audit_key

__all__ = [
    "EVENTS",
    "HEAD",
    "AuditBroken",
    "AuditKeyMissing",
    "AuditUnavailable",
    "Query",
    "append",
    "checkpoint_of",
    "parse_checkpoint",
    "read",
    "verify",
]

PREFIX = "audit"
HEAD = "audit-head.json"
EVENTS = (  # one event per line
    "enrollment",
    "version_registered",
    "consent_verdict",
    "grant",
    "revoke",
    "withdraw",
    "rollback",
    "render_started",
    "render_finished",
    "render_job_takeover",
    "token_revoke",
    "consent_approve",
    "consent_reinstate",
)
GENESIS = "0" * 64
log = logging.getLogger(__name__)
_KEY = re.compile(r"audit/([0-9]{12})\.json")  # [0-9], not \d: a key of Unicode digits is no record


class AuditBroken(RuntimeError):
    """The log does not verify; `seq` is the first bad (edited, missing, foreign) record, 0 for the head."""

    def __init__(self, seq: int, message: str):
        super().__init__(message)
        self.seq = seq


class AuditUnavailable(RuntimeError):
    """The log cannot take a record now (no key, a broken tail, the store refused): the change it was to
    record must not happen."""


def _key(seq: int) -> str:
    return f"{PREFIX}/{seq:012d}.json"


def _canonical(record: dict[str, Any], without: str) -> bytes:
    body = {k: v for k, v in record.items() if k != without}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _sequences(store: Store) -> list[int]:
    return sorted(int(m.group(1)) for k in store.list(PREFIX) if (m := _KEY.fullmatch(k)))


def _check_record(record: Any, seq: int, key: AuditKey) -> dict[str, Any]:
    """`record` if it is record `seq`, keyed with `key`; else `AuditBroken` naming it."""
    if not isinstance(record, dict):
        raise AuditBroken(seq, f"audit record {seq} is not a JSON object")
    if record.get("seq") != seq:
        raise AuditBroken(seq, f"audit record {seq} is missing or out of place (found seq {record.get('seq')} "
                               "in its slot)")
    if record.get("key_id") != key.key_id:
        raise AuditBroken(seq, f"audit record {seq} was not written with this audit key (its key id "
                               f"{record.get('key_id')}, this key's {key.key_id}): forged, or written by a "
                               "deployment with another key")
    if key.mac(_canonical(record, "hash")) != record.get("hash"):
        raise AuditBroken(seq, f"audit record {seq} ({record.get('event')} at {record.get('at')}) was edited: "
                               "its content no longer matches its keyed hash")
    return record


def _read_record(store: Store, seq: int, key: AuditKey) -> dict[str, Any]:
    try:
        return _check_record(store.read_json(_key(seq)), seq, key)
    except FileNotFoundError:
        raise AuditBroken(seq, f"audit record {seq} is missing") from None
    except (ValueError, UnicodeDecodeError):
        raise AuditBroken(seq, f"audit record {seq} is not readable JSON") from None


def _head_mac(key: AuditKey, seq: int, digest: str) -> str:
    return key.mac(f"audit-head|{seq}|{digest}".encode())


def _read_head(store: Store, key: AuditKey) -> tuple[dict[str, Any] | None, bytes | None]:
    """The verified head and its bytes, (None, None) when there is none; `AuditBroken` when it is forged."""
    try:
        data = store.read_bytes(HEAD)
    except FileNotFoundError:
        return None, None
    try:
        head = json.loads(data)
        seq, digest = head["seq"], head["hash"]
        good = isinstance(seq, int) and seq >= 0 and isinstance(head.get("mac"), str) \
            and hmac.compare_digest(head["mac"], _head_mac(key, seq, digest))
    except (ValueError, UnicodeDecodeError, TypeError, KeyError):
        good = False
    if not good:
        raise AuditBroken(0, f"the audit head ({HEAD}) was edited or forged, or written with another audit key: "
                             "no record can be shown complete")
    return head, data


def append(store: Store, event: str, actor: str, *, voice: str | None = None, version: int | str | None = None,
           job: str | None = None, lines: int | None = None, detail: dict[str, Any] | None = None,
           max_attempts: int = 50) -> dict[str, Any]:
    """Append one record and move the head to it; returns the record (with its `seq` and `hash`).

    Raises `AuditUnavailable` (and writes nothing) when there is no audit key in a deployment, when the
    head or the last record does not verify or the head is ahead of the records, or when the store
    refuses the write: whatever the record was for must then not happen. Once the record is written,
    a head that cannot be moved is only logged (`_advance_head`).
    """
    if event not in EVENTS:
        raise ValueError(f"unknown audit event {event!r} (one of {', '.join(EVENTS)})")
    fields = {"voice": voice, "version": version, "job": job, "lines": lines, "detail": detail}
    try:
        key = audit_key()
        for attempt in range(max_attempts):
            record = _next_record(store, key, event, actor, **fields)
            if store.create_bytes(_key(record["seq"]), json.dumps(record, indent=1, ensure_ascii=False).encode()):
                _advance_head(store, key, record, max_attempts)
                return record
            time.sleep(random.uniform(0.005, 0.02) * min(attempt + 1, 10))
        failure: Exception = RuntimeError(f"gave up after {max_attempts} concurrent appends")
    except (AuditBroken, AuditKeyMissing, ValueError, OSError, UnsafeStore) as e:
        failure = e
    raise AuditUnavailable(f"cannot record {event} in the audit log of {store.uri}: {failure}") from failure


def _next_record(store: Store, key: AuditKey, event: str, actor: str, **fields: Any) -> dict[str, Any]:
    last_seq = _last_sequence(store, key)
    last = _read_record(store, last_seq, key) if last_seq else None
    version, detail = fields.pop("version"), fields.pop("detail")
    record = {"seq": last_seq + 1, "at": datetime.now(UTC).isoformat(), "event": event, "actor": actor,
              **fields, "version": None if version is None else str(version), "detail": detail or {},
              "prev_hash": last["hash"] if last else GENESIS, "key_id": key.key_id}
    record["hash"] = key.mac(_canonical(record, "hash"))
    return record


def _last_sequence(store: Store, key: AuditKey) -> int:
    """The number of the log's last record, found from the head (then a few probes: an append may have
    stopped before moving it); `AuditBroken` on a log that was cut or lost its head.

    A new log starts with a head at record 0, created only-if-absent before its first record, so a log
    with records and no head has lost it. The head is read before anything else: a head moved after
    that cannot be ahead of what is found.
    """
    head, _ = _read_head(store, key)
    if head is None:
        if seqs := _sequences(store):
            raise AuditBroken(seqs[-1], f"the audit head ({HEAD}) is missing while {len(seqs)} records are kept: "
                                        "records after them may have been deleted with it; nothing is appended")
        store.create_bytes(HEAD, _head_bytes(key, 0, GENESIS, datetime.now(UTC).isoformat()))  # lost race: fine
        head, _ = _read_head(store, key)
        if head is None:
            raise AuditBroken(0, f"the audit head ({HEAD}) vanished while a new log was being started")
    last = head["seq"]
    if last and not store.exists(_key(last)):
        first = last
        while first > 1 and not store.exists(_key(first - 1)):
            first -= 1
        raise AuditBroken(first, f"audit record {first} is missing: the head says the log has {last} records (the "
                                 "last records were deleted); nothing is appended on a cut log")
    while store.exists(_key(last + 1)):
        last += 1
    return last


def _head_bytes(key: AuditKey, seq: int, digest: str, at: str) -> bytes:
    return json.dumps({"seq": seq, "hash": digest, "at": at, "key_id": key.key_id,
                       "mac": _head_mac(key, seq, digest)}).encode()


def _advance_head(store: Store, key: AuditKey, record: dict[str, Any], max_attempts: int) -> None:
    """Move the head to `record` unless it is already there or further (compare-and-swap, never back).

    The record is written by then, so whatever it records goes ahead: a head that cannot be moved is
    logged, not raised. It stays behind (records past it still verify); the next append moves it on.
    """
    seq = record["seq"]
    data = _head_bytes(key, seq, record["hash"], record["at"])
    try:
        for _ in range(max_attempts):
            head, current = _read_head(store, key)
            if (head is not None and head["seq"] >= seq) or store.swap_bytes(HEAD, data, current):
                return
        problem = f"{max_attempts} concurrent moves"
    except (AuditBroken, OSError, UnsafeStore) as e:
        problem = str(e)
    log.warning("audit record %d of %s is written, but the head could not be moved to it (%s); until an append "
                "moves it, a cut after the head's record goes unseen", seq, store.uri, problem)


def read(store: Store) -> list[dict[str, Any]]:
    """Every record, in sequence order (unverified; see `verify`)."""
    return [store.read_json(_key(s)) for s in _sequences(store)]


def verify(store: Store, checkpoint: tuple[int, str] | None = None) -> int:
    """Check the log against its key and head; returns the number of records, or raises `AuditBroken`
    naming the first bad record (edited, missing, out of place, foreign, or cut off after it).

    `checkpoint`: (seq, hash) of a record an earlier check saw (`parse_checkpoint`), kept off the store:
    the log must still hold that record with that hash, which catches a log rolled back to an older head
    that was copied before (what the head alone cannot).
    """
    key = audit_key()
    head, _ = _read_head(store, key)
    seqs = _sequences(store)
    hashes: list[str] = []
    for n, seq in enumerate(seqs, 1):
        if seq != n:
            raise AuditBroken(n, f"audit record {n} is missing (the next one kept is {seq})")
        record = _read_record(store, n, key)
        if record.get("prev_hash") != (hashes[-1] if hashes else GENESIS):
            raise AuditBroken(n, f"audit record {n} does not follow record {n - 1}: prev_hash differs "
                                 "(a record before it was replaced)")
        hashes.append(record["hash"])
    count = len(seqs)
    if head is None and count:
        raise AuditBroken(count, f"the audit head ({HEAD}) is missing: the {count} records cannot be shown "
                                 "complete (records after them may have been deleted with it)")
    if head is not None and head["seq"] > count:
        raise AuditBroken(count + 1, f"audit record {count + 1} is missing: the head says the log has {head['seq']} "
                                     f"records and the store holds {count} (the last records, or all of "
                                     f"{PREFIX}/, were deleted)")
    if head is not None and head["seq"] and hashes[head["seq"] - 1] != head["hash"]:
        raise AuditBroken(head["seq"], f"audit record {head['seq']} is not the one the head signed (replaced)")
    if checkpoint is not None:
        seq, digest = checkpoint
        if seq > count:
            raise AuditBroken(count + 1, f"audit record {count + 1} is missing: an earlier check saw {seq} records "
                                         "(its checkpoint); the log and its head were rolled back")
        if hashes[seq - 1] != digest:
            raise AuditBroken(seq, f"audit record {seq} is not the one an earlier check saw (the checkpoint's hash "
                                   "differs): the log was rewritten")
    return count


def checkpoint_of(record: dict[str, Any]) -> str:
    """What to keep off the store after a check, for the next: ``<seq>:<hash>`` of the last record."""
    return f"{record['seq']}:{record['hash']}"


def parse_checkpoint(text: str) -> tuple[int, str]:
    """``<seq>:<hash>`` (from `checkpoint_of`) as (seq, hash); ValueError when it is not one."""
    m = re.fullmatch(r"([0-9]{1,12}):([0-9a-f]{64})", text.strip())
    if m is None or int(m.group(1)) < 1:
        raise ValueError(f"checkpoint {text!r} is not <record number>:<its 64-hex hash> (as `voicefleet audit` "
                         "prints it)")
    return int(m.group(1)), m.group(2)


@dataclass(frozen=True)
class Query:
    voice: str | None = None
    since: datetime | None = None

    def __call__(self, record: dict[str, Any]) -> bool:
        if self.voice is not None and record.get("voice") != self.voice \
                and self.voice not in (record.get("detail") or {}).get("voices", {}):
            return False
        return self.since is None or datetime.fromisoformat(record["at"]) >= self.since
