"""A secret key from the environment, checked for strength: decoded random bytes, not a long string.

A key is written as base64 (standard or URL-safe, padding optional) or hex of at least 32 bytes,
e.g. ``openssl rand -base64 32``. What counts is the decoded bytes: a value that decodes to fewer
than 32 bytes, or whose bytes take fewer than 16 distinct values (``'k' * 44`` decodes to three), is
refused -- 32 random bytes take about 30. The check cannot prove randomness; it refuses keys that a
person typed or repeated.
"""
from __future__ import annotations

import base64
import binascii
import os
import re

__all__ = ["MIN_DISTINCT_BYTES", "MIN_KEY_BYTES", "WeakKey", "decode_key", "key_from_env"]

MIN_KEY_BYTES = 32
MIN_DISTINCT_BYTES = 16
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
_BASE64 = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")


class WeakKey(ValueError):
    """A configured key that is not base64/hex of enough random bytes."""


def decode_key(value: str, name: str) -> bytes:
    """The bytes `value` (hex or base64) stands for, if they are strong enough to key an HMAC; else `WeakKey`.

    `name` (the environment variable) is only used in messages; the value itself is never shown.
    """
    text = value.strip()
    how = f"e.g. `openssl rand -base64 {MIN_KEY_BYTES}`"
    if _HEX.fullmatch(text) and len(text) >= 2 * MIN_KEY_BYTES:
        raw = bytes.fromhex(text)
    elif _BASE64.fullmatch(text):
        body = text.rstrip("=").replace("-", "+").replace("_", "/")
        try:
            raw = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise WeakKey(f"{name} is not valid base64 or hex; set it to {MIN_KEY_BYTES} random bytes, {how}") from None
    else:
        raise WeakKey(f"{name} is not base64 or hex; set it to {MIN_KEY_BYTES} random bytes, {how}")
    if len(raw) < MIN_KEY_BYTES:
        raise WeakKey(f"{name} decodes to {len(raw)} bytes; it needs at least {MIN_KEY_BYTES} random bytes, {how}")
    distinct = len(set(raw))
    if distinct < MIN_DISTINCT_BYTES:
        raise WeakKey(f"{name} decodes to {len(raw)} bytes with only {distinct} distinct values: not random "
                      f"(32 random bytes take about 30); set it to random bytes, {how}")
    return raw


def key_from_env(name: str) -> bytes | None:
    """The decoded key in environment variable `name`, None when it is unset or empty (`WeakKey` when weak)."""
    value = os.environ.get(name, "")
    return decode_key(value, name) if value.strip() else None
