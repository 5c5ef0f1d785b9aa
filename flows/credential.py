"""The credential reference a flow run is started with: never the token itself.

A flow's parameters are stored in Prefect's database and shown in its UI, so who acts is passed by
reference, and each reference is good for one run:

* a Prefect **Secret block** name (what a deployment run gets, `-p credential=NAME`): the caller
  stores their principal token in a new Secret block (`voicefleet principal handoff`; Prefect keeps
  block values encrypted); the run reads it once, deletes the block, and verifies the token against
  the store's revocation list;
* an **in-process handoff** (``in-process:<random>``; the CLI, the demo and tests, which run the
  flow in their own process): the caller has already established the `Principal` (a verified
  token, or local mode) and hands it over, with the plan it read the script into, through memory.
  The reference means nothing in any other process (a worker started from a deployment holds no
  handoffs), and is removed when redeemed.

Either way the run records the principal and the token's id, never the token.
"""
from __future__ import annotations

import re
import secrets
import threading
from typing import Any

from voicefleet.tasks.safety.principal import InvalidToken, Principal, authenticate
from voicefleet.tasks.store.storage import Store

__all__ = ["HANDOFF_PREFIX", "SECRET_PREFIX", "discard", "hand_over", "hand_over_secret", "redeem"]

HANDOFF_PREFIX = "in-process:"
SECRET_PREFIX = "voicefleet-credential-"
_BLOCK_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,98}")
_handoffs: dict[str, tuple[Principal, Any]] = {}
_lock = threading.Lock()


def hand_over(who: Principal, payload: Any = None) -> str:
    """A single-use in-process reference to `who` (and `payload`, e.g. the render plan)."""
    ref = HANDOFF_PREFIX + secrets.token_hex(16)
    with _lock:
        _handoffs[ref] = (who, payload)
    return ref


def discard(ref: str) -> Any:
    """Forget an in-process reference; the payload it still held (the run never redeemed it), else None."""
    with _lock:
        entry = _handoffs.pop(ref, None)
    return None if entry is None else entry[1]


def hand_over_secret(token: str) -> str:
    """Store `token` in a new Prefect Secret block for one run; returns the block's name."""
    from prefect.blocks.system import Secret

    name = SECRET_PREFIX + secrets.token_hex(12)
    Secret(value=token).save(name)
    return name


def redeem(credential: str, store: Store | str) -> tuple[Principal, Any]:
    """Who a run acts as (and the handed-over payload, None for a Secret block), consuming the reference."""
    if not isinstance(credential, str) or not credential:
        raise InvalidToken("no credential: start the run with a Secret block's name (`voicefleet principal handoff`)")
    if credential.startswith(HANDOFF_PREFIX):
        with _lock:
            entry = _handoffs.pop(credential, None)
        if entry is None:
            raise InvalidToken("the in-process credential reference is unknown or already used: it is single-use "
                               "and exists only in the process that made it; a deployment run takes a Secret block")
        return entry
    return authenticate(_take_secret(credential), store), None


def _take_secret(name: str) -> str:
    """The token in Secret block `name`, deleting the block (a reference is good for one run)."""
    from prefect.blocks.system import Secret

    if not _BLOCK_NAME.fullmatch(name):
        raise InvalidToken(f"credential {name[:40]!r} is not a Secret block name (lower-case letters, digits, "
                           "hyphens): pass the name `voicefleet principal handoff` printed, never the token")
    from prefect.exceptions import ObjectNotFound

    gone = InvalidToken(f"no Secret block {name!r}: it was never made, or a run already used it (each is good "
                        "for one run; `voicefleet principal handoff` makes another)")
    try:
        block = Secret.load(name)
        Secret.delete(name)  # the run whose delete succeeds is the one that uses it
    except (ValueError, ObjectNotFound):
        raise gone from None
    value = block.get()
    if not isinstance(value, str):
        raise InvalidToken(f"Secret block {name!r} does not hold a principal token")
    return value
