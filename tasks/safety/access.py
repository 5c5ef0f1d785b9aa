"""Who may render with a voice: principals, the consent's sharing scope, grants, and the decision.

One sharing model for the whole project (consent.json's ``scope.sharing`` and the registry's
record use these definitions):

* the speaker's consent scope is a *ceiling*: ``"private"`` (no one but the owner), ``"org"``
  (principals of the owner's organisation), ``"public"`` (anyone), or a list of named principals;
* within that ceiling the owner (or an admin) *grants* access, one principal at a time
  (``"*"`` = everyone, only under ``"public"``), optionally until a date, and may revoke it;
* a render is allowed when the consent is neither withdrawn nor expired, and the principal is the
  owner or holds an active grant that the current scope still admits, and a version exists.

The decision is taken once per render job, before any compute, on the record as it is when the
job starts: a revoke or withdrawal applies to every job started after it.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol, Union

__all__ = [
    "EVERYONE",
    "SHARING_LEVELS",
    "Decision",
    "InvalidPrincipal",
    "NotPermitted",
    "Sharing",
    "admins",
    "check_principal",
    "check_sharing",
    "decide",
    "email_domain",
    "grant_refusal",
    "may_manage",
]

SHARING_LEVELS = ("private", "org", "public")
MAX_PRINCIPAL_LENGTH = 256
EVERYONE = "*"
"""A grant to every principal; the consent scope must be "public"."""
ADMINS_ENV = "VOICEFLEET_ADMINS"
_ADDRESS = re.compile(r"(?:[a-z][a-z0-9-]*:)?(?P<local>[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+)@(?P<domain>[A-Za-z0-9.-]+)")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")

Sharing = Union[Literal["private", "org", "public"], list[str]]
"""The most the speaker's consent allows beyond the owner: a level or named principals."""
OrgResolver = Callable[[str], "str | None"]


class GrantTerms(Protocol):
    """What the rule reads of a grant (tasks/voices/records.py's `Grant`)."""

    expires_at: datetime | None

    def active(self, at: datetime) -> bool: ...


class VoiceTerms(Protocol):
    """What the rule reads of a voice's record (tasks/voices/records.py's `VoiceRecord`): who owns it,
    the consent's terms and scope, its grants, and whether a version can be rendered."""

    voice_id: str
    owner: str
    status: str
    status_reason: str | None
    current_version: int | None
    sharing: Sharing
    consent_expires_at: datetime | None
    withdrawn_at: datetime | None

    def grant_for(self, principal: str) -> GrantTerms | None: ...


class InvalidPrincipal(ValueError):
    """A principal that is empty, too long, or contains control characters."""


class NotPermitted(PermissionError):
    """The acting principal may not manage this voice, or the consent does not allow the change."""


def check_principal(value: object) -> str:
    """Return `value` stripped if it is a usable principal name, else raise `InvalidPrincipal`.

    Principals are names like ``user:ada@example.com`` or ``svc:render-bot``; unlike ids they are
    never used as path parts, so only emptiness, length and control characters are refused.
    """
    if not isinstance(value, str):
        raise InvalidPrincipal(f"principal must be a string, got {type(value).__name__} {value!r}")
    name = value.strip()
    if not name:
        raise InvalidPrincipal(f"principal is empty ({value!r})")
    if len(name) > MAX_PRINCIPAL_LENGTH:
        raise InvalidPrincipal(f"principal {name[:40]!r}... is {len(name)} characters long (max {MAX_PRINCIPAL_LENGTH})")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise InvalidPrincipal(f"principal {name!r} contains a control character")
    return name


def check_sharing(value: Any) -> Sharing:
    """A valid sharing scope (a level, or a non-empty list of principals), else ValueError."""
    if isinstance(value, str):
        if value not in SHARING_LEVELS:
            raise ValueError(f"sharing must be one of {', '.join(SHARING_LEVELS)} or a list of principals, got {value!r}")
        return value  # type: ignore[return-value]
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("an empty list of principals shares with no one: use 'private'")
        return [check_principal(p) for p in value]
    raise ValueError(f"sharing must be one of {', '.join(SHARING_LEVELS)} or a list of principals, got {value!r}")


def email_domain(principal: str) -> str | None:
    """An `org_of` resolver: the domain of an e-mail principal (``user:ada@example.com`` -> example.com).

    Only a plain ASCII address names an organisation: ``[kind:]local@domain`` with exactly one ``@``,
    an RFC 5322 local part and a host name of letter-digit-hyphen labels (internationalised domains
    in their IDNA A-label form, ``xn--...``, which must decode to a valid IDNA 2008 name). The domain
    is compared lower-cased in that ASCII form. Anything else (non-ASCII characters: a Kelvin sign
    ``\u212a`` lower-cases to ``k``; a second ``@`` as in ``x@evil.io#@example.com``) names no
    organisation (None), so "org" sharing admits it no one.
    """
    if not principal.isascii():
        return None
    m = _ADDRESS.fullmatch(principal.strip())
    if m is None:
        return None
    domain = m.group("domain").lower()
    labels = domain.split(".")
    if len(domain) > 253 or len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        return None
    return domain if all(_valid_a_label(label) for label in labels if label.startswith("xn--")) else None


def _valid_a_label(label: str) -> bool:
    import idna

    try:
        idna.decode(label)
    except (idna.IDNAError, UnicodeError):
        return False
    return True


def admins() -> frozenset[str]:
    """Principals who may manage every voice: ``VOICEFLEET_ADMINS``, comma-separated."""
    return frozenset(p.strip() for p in os.environ.get(ADMINS_ENV, "").split(",") if p.strip())


def grant_refusal(sharing: Sharing, owner: str, grantee: str, org_of: OrgResolver | None) -> str | None:
    """Why the consent scope `sharing` does not admit `grantee` (None when it does)."""
    if grantee == owner:
        return None
    if sharing == "public":
        return None
    if grantee == EVERYONE:
        return f"a grant to everyone ('*') needs a public consent scope, and it is {_scope(sharing)}"
    if isinstance(sharing, list):
        return None if grantee in sharing else f"the consent scope names only {', '.join(sharing)}, not {grantee}"
    if sharing == "org":
        org = org_of(owner) if org_of else None
        if org is None:
            return f"the consent scope is the owner's organisation, and no organisation is known for {owner}"
        return None if org_of(grantee) == org else f"the consent scope is organisation {org}, and {grantee} is not in it"
    return "the consent scope is private: the speaker allowed no one but the owner"


def may_manage(record: VoiceTerms, actor: str) -> None:
    """Raise `NotPermitted` unless `actor` owns the voice or is an admin."""
    if actor != record.owner and actor not in admins():
        raise NotPermitted(f"principal {actor} may not manage voice {record.voice_id}: only its owner "
                           f"{record.owner} or an admin ({ADMINS_ENV}) may")


@dataclass(frozen=True)
class Decision:
    """Whether a principal may render with a voice, and why (a sentence a person can act on)."""

    allowed: bool
    reason: str


def decide(record: VoiceTerms, principal: str, at: datetime, org_of: OrgResolver | None = None) -> Decision:
    """The authorization rule, on a record already read (see `VoiceRegistry.authorize`)."""
    voice, owner = record.voice_id, record.owner
    if record.withdrawn_at is not None and record.withdrawn_at <= at:
        return Decision(False, f"the speaker's consent for voice {voice} was withdrawn at "
                               f"{record.withdrawn_at.isoformat()}")
    if record.consent_expires_at is not None and record.consent_expires_at <= at:
        return Decision(False, f"the speaker's consent for voice {voice} expired at "
                               f"{record.consent_expires_at.isoformat()}")
    grant = record.grant_for(principal) or record.grant_for(EVERYONE)
    if principal == owner:
        why = f"principal {principal} owns voice {voice}"
    elif grant is None:
        return Decision(False, f"principal {principal} has no grant for voice {voice} (owner {owner})")
    elif not grant.active(at):
        assert grant.expires_at is not None
        return Decision(False, f"principal {principal}'s grant for voice {voice} expired at "
                               f"{grant.expires_at.isoformat()} (owner {owner})")
    elif (outside := grant_refusal(record.sharing, owner, principal, org_of)) is not None:
        return Decision(False, f"principal {principal}'s grant for voice {voice} is outside the consent: {outside}")
    else:
        until = f" until {grant.expires_at.isoformat()}" if grant.expires_at else ""
        why = f"principal {principal} has a grant for voice {voice}{until}"

    if record.current_version is None:
        detail = f"{record.status}: {record.status_reason}" if record.status_reason else record.status
        return Decision(False, f"voice {voice} is not ready (status {detail})")
    return Decision(True, f"{why}; renders version {record.current_version}")


def _scope(sharing: Sharing) -> str:
    return sharing if isinstance(sharing, str) else "[" + ", ".join(sharing) + "]"
