"""Cantonese grapheme-to-phoneme for GPT-SoVITS v2: text -> Jyutping initials/finals + ``word2ph``.

What the official v2 frontend does, with the same packages:

- normalisation is the Mandarin one (``chinese_normalize``: traditional -> simplified characters,
  numbers, dates, units as Chinese words) as upstream has it (``strict``: unit letters replaced
  anywhere, "2mm" read 两米米, a time range's "半" decided by its first time), then Cantonese's own punctuation map: quotes and brackets
  are dropped, ``—`` ``～`` ``~`` become ``-``, ``$`` a full stop; everything that is neither a CJK
  character nor ``! ? … , . -`` is removed. Runs of punctuation are kept (unlike Mandarin).
- readings come from ToJyutping 3.2.0 (its dictionary is inside the package), one Jyutping syllable
  per character. Each syllable is cut at the first of upstream's "initials" it starts with, in
  upstream's order: a real initial (``g`` + ``am1``), or for a syllable without one a vowel prefix
  (``aa3`` -> ``aa`` + ``a3``, ``uk1`` -> ``uk`` + ``k1``); an empty final repeats the initial's last
  letter (``ng5`` -> ``ng`` + ``g5``, ``m4`` -> ``m`` + ``m4``). Both get a ``Y`` in front (the v2
  table's Cantonese phones): ``Yg`` ``Yam1``. Punctuation is one phone of its own.

``word2ph`` has one entry per character of the normalised text (2 per character, 1 per mark); the
BERT features of Cantonese are zeros, as upstream.
"""

from __future__ import annotations

import re
from functools import lru_cache

from .chinese_normalize import normalize_sentence, split_sentences

PUNCT = "!?…,.-"
_PUNCT_MAP = {
    "：": ",", "；": ",", "，": ",", "。": ".", "！": "!", "？": "?", "\n": ".", "·": ",", "、": ",", "...": "…",
    "$": ".", "“": "'", "”": "'", '"': "'", "‘": "'", "’": "'", "（": "'", "）": "'", "(": "'", ")": "'",
    "《": "'", "》": "'", "【": "'", "】": "'", "[": "'", "]": "'", "—": "-", "～": "-", "~": "-", "「": "'",
    "」": "'",
}
_RE_PUNCT_MAP = re.compile("|".join(map(re.escape, _PUNCT_MAP)))
_RE_NOT_KEPT = re.compile(r"[^\u4e00-\u9fa5" + re.escape(PUNCT) + r"]+")
# Upstream's list of syllable onsets, tried in this order (first prefix wins): vowel onsets of syllables
# without a consonant, then the consonants.
ONSETS = ["aa", "aai", "aak", "aap", "aat", "aau", "ai", "au", "ap", "at", "ak", "a", "p", "b", "e", "ts", "t", "dz", "d", "kw", "k", "gw", "g", "f", "h", "l", "m", "ng", "n", "s", "y", "w", "c", "z", "j", "ong", "on", "ou", "oi", "ok", "o", "uk", "ung", "sp", "spl", "spn", "sil"]
_RE_SYLLABLE = re.compile(r"([a-z]+)([1-6])")


def text_normalize(text: str) -> str:
    """Normalised text: only CJK characters and ``! ? … , . -``."""
    out = []
    for sentence in split_sentences(text):
        s = _RE_PUNCT_MAP.sub(lambda m: _PUNCT_MAP[m.group(0)], normalize_sentence(sentence, strict=True))
        out.append(_RE_NOT_KEPT.sub("", s))
    return "".join(out)


@lru_cache(maxsize=1)
def _jyutping():
    import ToJyutping  # ships its dictionary (trie.txt) in the package

    return ToJyutping


def syllable_phones(syllable: str) -> list[str]:
    """``"gam1"`` -> ``["Yg", "Yam1"]`` (upstream's split, see the module docstring)."""
    m = _RE_SYLLABLE.fullmatch(syllable)
    if m is None:
        raise ValueError(f"not a Jyutping syllable: {syllable!r}")
    base, tone = m.groups()
    onset = next((o for o in ONSETS if base.startswith(o)), None)
    if onset is None:
        raise ValueError(f"Jyutping syllable {syllable!r} starts with none of upstream's onsets")
    return ["Y" + onset, "Y" + (base[len(onset):] or onset[-1]) + tone]


def g2p(norm_text: str) -> tuple[list[str], list[int]]:
    """(phones, word2ph) of normalised Cantonese text; ``ValueError`` for a character without a reading."""
    phones: list[str] = []
    word2ph: list[int] = []
    for char, reading in _jyutping().get_jyutping_list(norm_text):
        if char in PUNCT:
            phones.append(char)
            word2ph.append(1)
        elif reading is None:
            raise ValueError(f"no Cantonese reading for {char!r} (U+{ord(char):04X}) in {norm_text!r}")
        else:
            phones.extend(syllable_phones(reading))
            word2ph.append(2)
    return phones, word2ph


__all__ = ["g2p", "syllable_phones", "text_normalize"]
