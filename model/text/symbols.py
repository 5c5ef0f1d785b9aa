"""The GPT-SoVITS v2 phone inventory.

Official v2 checkpoints index their phone embeddings by position in this table, so the order in
``symbols_v2.json`` (732 entries: pad, pinyin initials/finals with tones, Japanese, punctuation and
pause marks, ARPAbet, pitch marks, Korean jamo, Cantonese) must never change.
"""

from __future__ import annotations

import json
from pathlib import Path

SYMBOLS_V2: tuple[str, ...] = tuple(json.loads((Path(__file__).with_name("symbols_v2.json")).read_text("utf-8")))
symbol_to_id: dict[str, int] = {s: i for i, s in enumerate(SYMBOLS_V2)}

# Punctuation that survives as phones (pauses / intonation) in every language.
PUNCTUATION: tuple[str, ...] = ("!", "?", "…", ",", ".", "-")
UNK = "UNK"


def cleaned_text_to_sequence(phones: list[str]) -> list[int]:
    """Map phones to v2 ids; raises KeyError on a phone outside the table."""
    return [symbol_to_id[p] for p in phones]
