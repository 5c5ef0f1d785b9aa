"""A voice's record as a chain of revision files, changed under optimistic concurrency.

    registry/<voice_id>/rev-0000000007.json   one revision of the voice's record (`VoiceRecord`)

Each change is a new, complete record written as `rev-<R+1>.json` with an exclusive create
(`Store.create_bytes`), where R is the revision it was derived from; the newest revision is the
record and older ones are its history. Two writers that both read R race for `rev-<R+1>.json`:
exactly one create succeeds, the other re-reads, re-applies its change to the winner's revision
and tries the next number (short random back-off, up to `max_attempts` times, then
`RegistryConflict`). No update is lost and no lock is held, so a crashed writer blocks no one.
`VoiceRegistry` (tasks/voices/registry.py) says what each change is.
"""
from __future__ import annotations

import random
import re
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel

from voicefleet.tasks.store.ids import safe_id
from voicefleet.tasks.store.storage import Store

from .errors import RegistryConflict, UnknownVoice
from .records import VoiceRecord

REGISTRY_PREFIX = "registry"
_REVISION_FILE = re.compile(r"rev-(\d+)\.json")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def newest_revisions(store: Store) -> dict[str, int]:
    """Every registered voice and its newest revision number (one listing of `registry/`)."""
    newest: dict[str, int] = {}
    for key in store.list(REGISTRY_PREFIX):
        parsed = parse_record_key(key)
        if parsed is not None:
            voice_id, rev = parsed
            newest[voice_id] = max(rev, newest.get(voice_id, 0))
    return newest


def update(store: Store, voice_id: str, change: Callable[[Any], VoiceRecord | None], *, create: bool = False,
           max_attempts: int = 50, allow_unsafe: bool = False) -> VoiceRecord:
    """Apply `change` to the newest revision and write it as the next one; retry on conflict.

    `change` gets the current record (or None, only when `create`), returns the new record,
    or None for "nothing to change". It may run several times, so it must not have effects
    beyond its return value.
    """
    voice_id = safe_id(voice_id, "voice id")
    store.check_exclusive_create(allow_unsafe=allow_unsafe)
    for attempt in range(max_attempts):
        current = load(store, voice_id)
        if current is None and not create:
            raise UnknownVoice(voice_id)
        updated = change(current)
        if updated is None:
            assert current is not None
            return current
        revision = (current.revision if current else 0) + 1
        updated = updated.replace(revision=revision, write_id=uuid.uuid4().hex,
                                  updated_at=max(_now(), updated.created_at))
        if store.create_bytes(record_key(voice_id, revision), to_json(updated), allow_unsafe=allow_unsafe):
            return updated
        time.sleep(random.uniform(0.005, 0.02) * min(attempt + 1, 10))
    raise RegistryConflict(f"voice {voice_id}: gave up after {max_attempts} concurrent-update conflicts")


def load(store: Store, voice_id: str) -> VoiceRecord | None:
    """The newest revision of the voice's record; None when it has none."""
    revisions = [rev for key in store.list(f"{REGISTRY_PREFIX}/{voice_id}")
                 if (parsed := parse_record_key(key)) is not None and parsed[0] == voice_id
                 for rev in (parsed[1],)]
    return read_revision(store, voice_id, max(revisions)) if revisions else None


def read_revision(store: Store, voice_id: str, revision: int) -> VoiceRecord:
    """Revision `revision` of the voice's record (its number is the file's, whatever the file says)."""
    record = VoiceRecord.model_validate_json(store.read_bytes(record_key(voice_id, revision)))
    if record.revision != revision:  # a copied or hand-edited file: trust its name
        record = record.replace(revision=revision)
    return record


def record_key(voice_id: str, revision: int) -> str:
    return f"{REGISTRY_PREFIX}/{voice_id}/rev-{revision:010d}.json"


def parse_record_key(key: str) -> tuple[str, int] | None:
    """`registry/<voice>/rev-<N>.json` -> (voice, N); None for anything else under the prefix."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != REGISTRY_PREFIX:
        return None
    match = _REVISION_FILE.fullmatch(parts[2])
    if match is None:
        return None
    try:
        return safe_id(parts[1]), int(match.group(1))
    except ValueError:
        return None


def to_json(model: BaseModel) -> bytes:
    return model.model_dump_json(indent=2).encode("utf-8")
