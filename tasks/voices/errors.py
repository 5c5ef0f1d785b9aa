"""What can go wrong with the voice registry: one exception type per failure a caller can act on.

The CLI maps them to exit codes in one place (flows/commands/exits.py): an unknown voice or version
is "not found", a withdrawn consent is a refusal, a bad grant is bad input.
"""
from __future__ import annotations

__all__ = ["ConsentWithdrawn", "GateFailed", "InvalidGrant", "InvalidStatus", "MissingVersionFile", "OwnerMismatch",
           "RegistryConflict", "RegistryError", "UnknownVersion", "UnknownVoice"]


class RegistryError(Exception):
    """Base class of every registry failure."""


class UnknownVoice(RegistryError, KeyError):
    """No voice with this id is registered."""

    def __init__(self, voice_id: str) -> None:
        super().__init__(f"unknown voice {voice_id}")
        self.voice_id = voice_id

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class UnknownVersion(RegistryError, KeyError):
    """The voice exists but has no such version (or no current version yet)."""

    def __str__(self) -> str:
        return str(self.args[0])


class InvalidStatus(RegistryError, ValueError):
    """An unknown status, or "ready" for a voice that has no version."""


class OwnerMismatch(RegistryError, ValueError):
    """`ensure_voice` named a different owner than the registered one."""


class InvalidGrant(RegistryError, ValueError):
    """A grant that would already be expired when written, or that the consent scope does not admit."""


class ConsentWithdrawn(RegistryError, ValueError):
    """The speaker withdrew consent; it stands until an admin reinstates it for a new, verified consent clip."""


class GateFailed(RegistryError, ValueError):
    """A rollback named a version that failed its quality gate (and the caller did not insist)."""


class MissingVersionFile(RegistryError, FileNotFoundError):
    """A new version points at a store key that does not exist (or lacks a required file)."""


class RegistryConflict(RegistryError, RuntimeError):
    """Too many concurrent writers on one voice: the update was retried `max_attempts` times."""
