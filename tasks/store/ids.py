"""Safe ids: the names (voice, job, line, shard) that become one part of a storage key.

An id is 1-128 ASCII letters, digits, `_` and `-`, starting with a letter or digit; anything else
is refused with `InvalidId`, never cleaned (tasks/enroll/voice_ids.py derives ids from real names).
"""
from __future__ import annotations

import re

MAX_ID_LENGTH = 128
_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


class InvalidId(ValueError):
    """An id (voice, job, line, shard) that is not safe to use as a path part."""


def safe_id(value: object, kind: str = "id") -> str:
    """Return `value` if it is safe as one path part, else raise `InvalidId`.

    Allowed: 1-128 ASCII letters, digits, `_` and `-`, starting with a letter or digit. That
    refuses `..`, `/`, absolute paths, URL schemes (`:`), control characters and whitespace.
    Dots are refused too: WebDataset splits a sample key at its first dot, so `a.b` would
    break the `<line_id>.flac` / `<line_id>.json` pairing in a shard.
    """
    if not isinstance(value, str):
        raise InvalidId(f"{kind} must be a string, got {type(value).__name__} {value!r}")
    if not value:
        raise InvalidId(f"{kind} is empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidId(f"{kind} {value[:40]!r}... is {len(value)} characters long (max {MAX_ID_LENGTH})")
    if not _ID_PATTERN.fullmatch(value):
        raise InvalidId(
            f"{kind} {value!r} is not a safe id: use only ASCII letters, digits, '_' and '-', "
            "starting with a letter or digit (no '/', '..', ':', '.', spaces or control characters)"
        )
    return value
