"""Who is acting: a signed principal token in production, a plain name only in local mode.

A token is ``vf1.<principal, base64url>.<expiry, unix seconds>.<HMAC-SHA256, hex>``; the MAC covers
``vf1``, the principal and the expiry, keyed with ``VOICEFLEET_PRINCIPAL_KEY`` (at least 32
bytes; the same key on every machine that mints or verifies). An admin mints one with
``voicefleet principal token NAME --expires 2026-12-31``; the render and voices commands take it
as ``--token`` (or ``VOICEFLEET_TOKEN``) and the flow verifies it.

A plain ``--as NAME`` is trusted only in an explicit local mode (``--local`` or
``VOICEFLEET_LOCAL_MODE=1``): a single-user machine where whoever runs the command owns the store.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from dataclasses import dataclass
from datetime import datetime, timezone

from .access import check_principal

__all__ = ["InvalidToken", "LocalModeRequired", "Principal", "flow_claim", "local_mode", "mint_token",
           "resolve_claim", "resolve_principal", "verify_token"]

KEY_ENV = "VOICEFLEET_PRINCIPAL_KEY"
TOKEN_ENV = "VOICEFLEET_TOKEN"
LOCAL_ENV = "VOICEFLEET_LOCAL_MODE"
MIN_KEY_BYTES = 32
_VERSION = "vf1"


class InvalidToken(ValueError):
    """A principal token that is malformed, expired, or not signed with this deployment's key."""


class LocalModeRequired(ValueError):
    """A plain principal name was given outside local mode (or no principal at all)."""


@dataclass(frozen=True)
class Principal:
    """A principal the flow may act as, and how it was established ("token" or "local")."""

    name: str
    via: str
    expires_at: datetime | None = None


def local_mode(flag: bool = False) -> bool:
    """True when `flag` is set or ``VOICEFLEET_LOCAL_MODE=1``."""
    return flag or os.environ.get(LOCAL_ENV, "") == "1"


def _key() -> bytes:
    raw = os.environ.get(KEY_ENV, "")
    if len(raw.encode()) < MIN_KEY_BYTES:
        raise InvalidToken(f"{KEY_ENV} is {'unset' if not raw else f'{len(raw.encode())} bytes'}; principal tokens "
                           f"need a key of at least {MIN_KEY_BYTES} bytes (e.g. `openssl rand -hex 32`)")
    return raw.encode()


def _mac(key: bytes, body: str) -> str:
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


def mint_token(principal: str, expires_at: datetime) -> str:
    """A token for `principal`, valid until `expires_at` (aware), signed with ``VOICEFLEET_PRINCIPAL_KEY``."""
    principal = check_principal(principal)
    if expires_at.tzinfo is None:
        raise ValueError(f"expires_at must carry a time zone, got {expires_at.isoformat()}")
    if expires_at <= datetime.now(timezone.utc):
        raise ValueError(f"a token expiring at {expires_at.isoformat()} is already expired")
    name = base64.urlsafe_b64encode(principal.encode()).decode().rstrip("=")
    body = f"{_VERSION}.{name}.{int(expires_at.timestamp())}"
    return f"{body}.{_mac(_key(), body)}"


def verify_token(token: str, now: datetime | None = None) -> Principal:
    """The principal a token names, if its MAC verifies with this deployment's key and it is unexpired."""
    parts = token.strip().split(".")
    if len(parts) != 4 or parts[0] != _VERSION:
        raise InvalidToken("principal token is malformed (expected vf1.<principal>.<expiry>.<mac>)")
    body = ".".join(parts[:3])
    if not hmac.compare_digest(_mac(_key(), body), parts[3]):
        raise InvalidToken("principal token signature does not verify: it was forged, altered, or "
                           f"signed with another {KEY_ENV}")
    try:
        name = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)).decode()
        expires_at = datetime.fromtimestamp(int(parts[2]), timezone.utc)
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError):
        raise InvalidToken("principal token is malformed (principal or expiry unreadable)") from None
    now = now or datetime.now(timezone.utc)
    if expires_at <= now:
        raise InvalidToken(f"principal token for {name} expired at {expires_at.isoformat()}")
    return Principal(check_principal(name), "token", expires_at)


def resolve_principal(token: str | None = None, name: str | None = None, *, local: bool = False) -> Principal:
    """Who acts: a verified `token` (or ``VOICEFLEET_TOKEN``), else `name` in local mode only."""
    if token is None and name is None:
        token = os.environ.get(TOKEN_ENV) or None
    if token and name:
        raise LocalModeRequired("give either a principal token or --as NAME, not both")
    if token:
        return verify_token(token)
    if name is None:
        raise LocalModeRequired(f"no principal: pass --token (or set {TOKEN_ENV}) with a token from "
                                "`voicefleet principal token NAME`, or --as NAME with --local")
    if not local_mode(local):
        raise LocalModeRequired(f"a plain principal name ({name.strip()!r}) is accepted only in local mode "
                                f"(--local or {LOCAL_ENV}=1); otherwise pass a signed --token")
    return Principal(check_principal(name), "local")


def flow_claim(who: Principal, token: str | None) -> str:
    """What a caller hands a flow as its `principal` to act as `who`: the token it was verified from,
    else (local mode) the plain name. The flow verifies it again with `resolve_claim`."""
    return token if who.via == "token" else who.name


def resolve_claim(claim: str, *, local: bool = False) -> Principal:
    """A flow's `principal` parameter: a ``vf1.`` token is verified, anything else is a name (local mode only)."""
    if claim.startswith(f"{_VERSION}."):
        return resolve_principal(token=claim, local=local)
    return resolve_principal(name=claim, local=local)
