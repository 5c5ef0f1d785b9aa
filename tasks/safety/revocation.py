"""Revoked principal tokens: one object per token id under ``principals/revoked/`` in the store.

Every use of a token (the CLI, the render flow) asks `revoked` before trusting it, so a revocation
applies to every command and run started after it. Records are never removed: a token id is random
and a revoked token stays revoked (it expires anyway within the maximum lifetime).
"""
from __future__ import annotations

import re
from datetime import datetime, timezone

from voicefleet.tasks.store.storage import Store

__all__ = ["REVOKED_PREFIX", "InvalidTokenId", "check_token_id", "revoke", "revoked"]

REVOKED_PREFIX = "principals/revoked"
TOKEN_ID = re.compile(r"[0-9a-f]{32}")


class InvalidTokenId(ValueError):
    """A token id that is not 32 lower-case hex digits (what `mint_token` writes)."""


def check_token_id(token_id: str) -> str:
    if not isinstance(token_id, str) or not TOKEN_ID.fullmatch(token_id):
        raise InvalidTokenId(f"token id {token_id!r} is not 32 lower-case hex digits (the id "
                             "`voicefleet principal token` printed)")
    return token_id


def _key(token_id: str) -> str:
    return f"{REVOKED_PREFIX}/{check_token_id(token_id)}.json"


def revoked(store: Store, token_id: str) -> dict | None:
    """The revocation record of `token_id`, or None while it is not revoked."""
    key = _key(token_id)
    return store.read_json(key) if store.exists(key) else None


def revoke(store: Store, token_id: str, by: str, reason: str | None = None) -> tuple[dict, bool]:
    """Revoke `token_id` (idempotent): its record, and whether this call wrote it."""
    earlier = revoked(store, token_id)
    if earlier is not None:
        return earlier, False
    record = {"token_id": token_id, "revoked_at": datetime.now(timezone.utc).isoformat(), "by": by, "reason": reason}
    store.write_json(_key(token_id), record)
    return record, True
