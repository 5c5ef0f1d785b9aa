"""The audit log's key: without it, no one can write a record (or a head) that verifies.

Where it comes from, in this order:

1. ``VOICEFLEET_AUDIT_KEY``: base64 or hex of at least 32 random bytes (tasks/safety/secret_key.py;
   ``openssl rand -base64 32``), the same on every machine that appends to or verifies a store's log
   (the CLI, the flows' drivers). Keep it apart from the store's credentials: whoever can write the
   store but not read this key cannot rewrite the log unseen.
2. In a deployment -- ``VOICEFLEET_PRINCIPAL_KEY`` is configured (principals are signed tokens) or
   ``VOICEFLEET_LOCAL_MODE=0`` -- there is no other source: `audit_key` raises `AuditKeyMissing`, so
   nothing that needs a record happens (a voice change exits 2).
3. Otherwise (a local, single-user machine: the demo, a laptop) a random key made on first use in a
   file, ``VOICEFLEET_AUDIT_KEY_FILE`` (default ``~/.config/voicefleet/audit.key``, mode 0600). The
   log then shows a rewrite by anyone who can write the store but not read that file; the user who
   owns the file can rewrite it (as they can everything on their machine).

Every record carries the key's id (`key_id`: a MAC of a fixed label, not the key), so a log verified
with another key says so instead of calling every record edited.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .principal import KEY_ENV as PRINCIPAL_KEY_ENV
from .principal import LOCAL_ENV
from .secret_key import MIN_KEY_BYTES, decode_key, key_from_env

__all__ = ["KEY_ENV", "KEY_FILE_ENV", "AuditKey", "AuditKeyMissing", "audit_key"]

KEY_ENV = "VOICEFLEET_AUDIT_KEY"
KEY_FILE_ENV = "VOICEFLEET_AUDIT_KEY_FILE"
_ID_LABEL = b"voicefleet audit key id v1"


class AuditKeyMissing(RuntimeError):
    """A deployment without ``VOICEFLEET_AUDIT_KEY``: the audit log can neither record nor verify."""


@dataclass(frozen=True, repr=False)
class AuditKey:
    """The key's bytes and where they came from ("env" or the key file's path); never printed."""

    secret: bytes
    source: str

    @property
    def key_id(self) -> str:
        return hmac.new(self.secret, _ID_LABEL, hashlib.sha256).hexdigest()[:16]

    def mac(self, body: bytes) -> str:
        return hmac.new(self.secret, body, hashlib.sha256).hexdigest()

    def __repr__(self) -> str:
        return f"AuditKey(id={self.key_id}, source={self.source})"


def deployment() -> str | None:
    """Why this process is a deployment (a sentence), or None on a local machine."""
    if os.environ.get(PRINCIPAL_KEY_ENV, "").strip():
        return f"{PRINCIPAL_KEY_ENV} is configured"
    if os.environ.get(LOCAL_ENV, "") == "0":
        return f"{LOCAL_ENV}=0"
    return None


def audit_key() -> AuditKey:
    """This process's audit key (see the module docstring); `AuditKeyMissing` in a deployment without one."""
    secret = key_from_env(KEY_ENV)
    if secret is not None:
        return AuditKey(secret, "env")
    why = deployment()
    if why is not None:
        raise AuditKeyMissing(f"{KEY_ENV} is unset and this is a deployment ({why}): the audit log refuses to "
                              f"record or verify without its key; set {KEY_ENV} to {MIN_KEY_BYTES} random bytes "
                              f"(`openssl rand -base64 {MIN_KEY_BYTES}`), the same wherever the store's log is "
                              "written or checked")
    return AuditKey(_local_key(_key_file()), str(_key_file()))


def _key_file() -> Path:
    named = os.environ.get(KEY_FILE_ENV, "").strip()
    return Path(named).expanduser() if named else Path.home() / ".config" / "voicefleet" / "audit.key"


def _local_key(path: Path) -> bytes:
    """The key in `path`, created with 32 random bytes (mode 0600) when absent: written to a temp file and
    linked into place, so a concurrent first use finds either no file or the whole key."""
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".audit-key-", dir=path.parent)  # mode 0600
            try:
                with os.fdopen(fd, "w") as out:
                    out.write(base64.b64encode(os.urandom(MIN_KEY_BYTES)).decode() + "\n")
                    out.flush()
                    os.fsync(out.fileno())
                with contextlib.suppress(FileExistsError):
                    os.link(tmp, path)
            finally:
                os.unlink(tmp)
        except OSError as e:
            raise AuditKeyMissing(f"cannot create the local audit key {path} ({e.strerror or e}); set {KEY_ENV} "
                                  f"or {KEY_FILE_ENV}") from None
    return decode_key(path.read_text(), str(path))
