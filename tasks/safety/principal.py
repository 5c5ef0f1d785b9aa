"""Who is acting: a signed principal token in production, a plain name only in local mode.

A token is ``vf2.<principal, base64url>.<token id>.<issued>.<expiry>.<HMAC-SHA256, hex>`` (times in
unix seconds); the MAC covers everything before it, keyed with ``VOICEFLEET_PRINCIPAL_KEY``: at
least 32 random bytes written as hex or base64 (``openssl rand -hex 32``), the same key on every
machine that mints or verifies. An admin mints one with ``voicefleet principal token NAME``; it
lives at most ``VOICEFLEET_TOKEN_MAX_DAYS`` (default 30) days, and ``voicefleet principal revoke
ID`` ends it early: every use checks the store's revocation list (tasks/safety/revocation.py).
Callers record the principal and the token's id, never the token.

A plain ``--as NAME`` is trusted only in local mode: ``VOICEFLEET_LOCAL_MODE=1`` and no principal
key configured (a single-user machine where whoever runs the command owns the store). A key
means the deployment verifies who acts, so a plain name is refused there whatever else is set.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from voicefleet.tasks.store.storage import Store

from .access import check_principal
from .revocation import revoked
from .secret_key import MIN_KEY_BYTES, WeakKey, key_from_env

__all__ = ["InvalidToken", "LocalModeRequired", "Principal", "authenticate", "check_local_mode", "local_principal",
           "max_lifetime", "mint_token", "principal_key", "resolve_principal", "token_id_of", "verify_token"]

KEY_ENV = "VOICEFLEET_PRINCIPAL_KEY"
TOKEN_ENV = "VOICEFLEET_TOKEN"
LOCAL_ENV = "VOICEFLEET_LOCAL_MODE"
MAX_DAYS_ENV = "VOICEFLEET_TOKEN_MAX_DAYS"
DEFAULT_MAX_DAYS = 30.0
CLOCK_SKEW = timedelta(minutes=5)
_VERSION = "vf2"


class InvalidToken(ValueError):
    """A principal token that is malformed, expired, revoked, or not signed with this deployment's key
    (or the key itself is missing or weak)."""


class LocalModeRequired(ValueError):
    """A plain principal name was given outside local mode (or no principal at all)."""


@dataclass(frozen=True)
class Principal:
    """A principal the caller may act as, how it was established ("token", "local" or "demo"), and
    for a token its id and expiry (what job records and audit records keep; the token is never kept)."""

    name: str
    via: str
    expires_at: datetime | None = None
    token_id: str | None = None


def principal_key() -> bytes:
    """``VOICEFLEET_PRINCIPAL_KEY`` decoded: hex or base64 of at least 32 random bytes (tasks/safety/secret_key.py)."""
    try:
        key = key_from_env(KEY_ENV)
    except WeakKey as e:
        raise InvalidToken(str(e)) from None
    if key is None:
        raise InvalidToken(f"{KEY_ENV} is unset; principal tokens need a key of at least {MIN_KEY_BYTES} random "
                           "bytes, hex or base64 (e.g. `openssl rand -hex 32`)")
    return key


def max_lifetime() -> timedelta:
    """The longest a token may live: ``VOICEFLEET_TOKEN_MAX_DAYS`` (default 30, at most 365)."""
    raw = os.environ.get(MAX_DAYS_ENV, "").strip()
    try:
        days = float(raw) if raw else DEFAULT_MAX_DAYS
    except ValueError:
        raise InvalidToken(f"{MAX_DAYS_ENV}={raw!r} is not a number of days") from None
    if not 0 < days <= 365:
        raise InvalidToken(f"{MAX_DAYS_ENV}={raw!r}: a token's maximum lifetime must be more than 0 and at most "
                           "365 days")
    return timedelta(days=days)


def _days(span: timedelta) -> str:
    return f"{span.total_seconds() / 86400:g}"


def check_local_mode() -> None:
    """Raise `LocalModeRequired` unless this machine is in local mode: ``VOICEFLEET_LOCAL_MODE=1`` and no
    principal key configured."""
    if os.environ.get(KEY_ENV, "").strip():
        raise LocalModeRequired(f"local mode is refused: a principal key is configured ({KEY_ENV}), so who acts is "
                                f"proven by a signed --token (or {TOKEN_ENV}), not named with --as")
    if os.environ.get(LOCAL_ENV, "") != "1":
        raise LocalModeRequired(f"a plain principal name is accepted only in local mode ({LOCAL_ENV}=1 and no "
                                f"{KEY_ENV}); otherwise pass a signed --token")


def local_principal(name: str) -> Principal:
    """`name` as the acting principal, in local mode only (see `check_local_mode`)."""
    check_local_mode()
    return Principal(check_principal(name), "local")


def _mac(key: bytes, body: str) -> str:
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


def mint_token(principal: str, expires_at: datetime, now: datetime | None = None) -> str:
    """A token for `principal`, valid until `expires_at` (aware, within `max_lifetime`), with a new id."""
    principal = check_principal(principal)
    if expires_at.tzinfo is None:
        raise ValueError(f"expires_at must carry a time zone, got {expires_at.isoformat()}")
    now = now or datetime.now(timezone.utc)
    if expires_at <= now:
        raise ValueError(f"a token expiring at {expires_at.isoformat()} is already expired")
    longest = max_lifetime()
    if expires_at - now > longest:
        raise ValueError(f"a token expiring at {expires_at.isoformat()} would live longer than the maximum "
                         f"{_days(longest)} days ({MAX_DAYS_ENV})")
    name = base64.urlsafe_b64encode(principal.encode()).decode().rstrip("=")
    body = f"{_VERSION}.{name}.{uuid.uuid4().hex}.{int(now.timestamp())}.{int(expires_at.timestamp())}"
    return f"{body}.{_mac(principal_key(), body)}"


def token_id_of(token: str) -> str:
    """The id a token carries (unverified: for naming it in a revocation, never for trusting it)."""
    parts = token.strip().split(".")
    if len(parts) != 6 or parts[0] != _VERSION:
        raise InvalidToken("principal token is malformed "
                           f"(expected {_VERSION}.<principal>.<id>.<issued>.<expiry>.<mac>)")
    return parts[2]


def verify_token(token: str, store: Store, now: datetime | None = None) -> Principal:
    """The principal a token names, if its MAC verifies with this deployment's key, it is unexpired,
    it lives no longer than `max_lifetime`, and `store`'s revocation list does not hold its id."""
    token_id_of(token)
    parts = token.strip().split(".")
    body = ".".join(parts[:5])
    if not hmac.compare_digest(_mac(principal_key(), body), parts[5]):
        raise InvalidToken("principal token signature does not verify: it was forged, altered, or "
                           f"signed with another {KEY_ENV}")
    try:
        name = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)).decode()
        issued_at = datetime.fromtimestamp(int(parts[3]), timezone.utc)
        expires_at = datetime.fromtimestamp(int(parts[4]), timezone.utc)
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError):
        raise InvalidToken("principal token is malformed (principal or times unreadable)") from None
    now = now or datetime.now(timezone.utc)
    if expires_at <= now:
        raise InvalidToken(f"principal token for {name} expired at {expires_at.isoformat()}")
    if issued_at > now + CLOCK_SKEW:
        raise InvalidToken(f"principal token for {name} claims to be issued at {issued_at.isoformat()}, in the future")
    longest = max_lifetime()
    if expires_at - issued_at > longest:
        raise InvalidToken(f"principal token for {name} lives from {issued_at.isoformat()} to "
                           f"{expires_at.isoformat()}, longer than the maximum {_days(longest)} days ({MAX_DAYS_ENV})")
    token_id = parts[2]
    gone = revoked(store, token_id)
    if gone is not None:
        raise InvalidToken(f"principal token {token_id} for {name} was revoked at {gone['revoked_at']} by {gone['by']}")
    return Principal(check_principal(name), "token", expires_at, token_id)


def authenticate(token: str, store: Store | str) -> Principal:
    """A verified token's principal (`verify_token` against `store`'s revocation list)."""
    return verify_token(token, store if isinstance(store, Store) else Store(store))


def resolve_principal(token: str | None = None, name: str | None = None, *, store: Store | str,
                      local: bool = False) -> Principal:
    """Who acts: a verified `token` (or ``VOICEFLEET_TOKEN``), else `name` in local mode only.

    `local` (the CLI's ``--local``) asks for local mode: refused with the reason when it is off."""
    if token is None and name is None:
        token = os.environ.get(TOKEN_ENV) or None
    if token and name:
        raise LocalModeRequired("give either a principal token or --as NAME, not both")
    if token:
        if local:
            raise LocalModeRequired("--local goes with --as NAME, not with a principal token")
        return authenticate(token, store)
    if local:
        check_local_mode()
    if name is None:
        raise LocalModeRequired(f"no principal: pass --token (or set {TOKEN_ENV}) with a token from "
                                "`voicefleet principal token NAME`, or --as NAME in local mode")
    try:
        return local_principal(name)
    except LocalModeRequired as e:
        raise LocalModeRequired(f"a plain principal name ({name.strip()!r}) is not accepted here: {e}") from None
