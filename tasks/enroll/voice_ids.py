"""Voice ids from real folder names: `José García-Ñúñez` -> `jose-garcia-nunez`.

People name upload folders after themselves, with accents, spaces and scripts other than Latin.
The voice id (a path part in the store, a registry key, a column in render scripts) must be a
safe id (tasks/store/storage.py: ASCII letters, digits, `_`, `-`), so it is derived from the name:
a name that is already a safe id is kept as it is; any other is Unicode NFC, transliterated to ASCII with `unidecode`, lower-cased, every run of other characters
turned into one `-`. The folder name stays the display name.

A folder name that could address another place (`..`, `.`, a `/` or `\\` inside, a URL scheme,
control characters) is refused, never "cleaned": it is not a name a person gave themselves.
"""
from __future__ import annotations

import re
import unicodedata
from collections import defaultdict

from voicefleet.tasks.store.ids import MAX_ID_LENGTH, InvalidId, safe_id

_NOT_ID = re.compile(r"[^a-z0-9]+")
_TRAVERSAL = re.compile(r"(^|[/\\])\.\.?($|[/\\])|[/\\:]")


def voice_id_for(name: str) -> str:
    """A safe voice id derived from a speaker folder's name.

    Raises:
        InvalidId: the name addresses another place (`..`, `/`, `\\`, `:`, control characters)
            or has no letter or digit that transliterates to ASCII.
    """
    if not isinstance(name, str) or not name.strip():
        raise InvalidId(f"speaker folder name {name!r} is empty")
    if _TRAVERSAL.search(name) or name.strip() in (".", "..") or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidId(f"speaker folder name {name!r} is not a name: it contains a path or URL part "
                        "('..', '/', '\\', ':') or control characters")
    try:
        return safe_id(name, "voice id")  # already safe: kept as it is (ids of existing voices never change)
    except InvalidId:
        pass
    from unidecode import unidecode

    ascii_name = unidecode(unicodedata.normalize("NFC", name)).lower()
    slug = _NOT_ID.sub("-", ascii_name).strip("-")[:MAX_ID_LENGTH].rstrip("-")
    if not slug:
        raise InvalidId(f"speaker folder name {name!r} has no letter or digit to make a voice id from")
    return safe_id(slug, "voice id")


def assign_voice_ids(names: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Voice ids for many folders at once.

    Returns:
        (ids, problems): `ids[name]` is the voice id of each usable folder; `problems[name]` says why
        a folder got none -- an unsafe name, or a voice id that two or more folders map to (all of
        them are reported: which upload is the real one is for a person to decide).
    """
    ids: dict[str, str] = {}
    problems: dict[str, str] = {}
    by_id: dict[str, list[str]] = defaultdict(list)
    for name in names:
        try:
            by_id[voice_id_for(name)].append(name)
        except InvalidId as e:
            problems[name] = str(e)
    for vid, folders in by_id.items():
        if len(folders) == 1:
            ids[folders[0]] = vid
            continue
        listed = ", ".join(repr(f) for f in sorted(folders))
        for f in folders:
            problems[f] = f"folders {listed} all map to voice id {vid!r}: rename all but one"
    return ids, problems
