"""Korean grapheme-to-phoneme for GPT-SoVITS v2: text -> Hangul compatibility jamo, one phone each.

What the official v2 frontend does, with the same packages: Latin letters are first spelled in Hangul
(``a`` -> 에이, case-insensitive); g2pk2 0.0.3 applies the standard pronunciation rules (idioms, numbers
in Sino-Korean or native numerals before counters, linking, tensing, nasalisation, palatalisation...)
using MeCab (``python-mecab-ko`` with the ``python-mecab-ko-dic`` dictionary inside its wheel) for the
parts of speech; the result is split into compatibility jamo with ``jamo``, compound vowels in two
(ㅘ -> ㅗ ㅏ, ㅕ -> ㅣ ㅓ, ...), and upstream's fix for g2pk2's "-을 ㄹ..." (the ㄹ after such a word is
read ㄴ) is applied. Each character is a phone: a space is ``空``, ``、 ， ： ； ·`` are ``,``, ``。``
and a line break ``.``, ``！ ？`` are ``! ?``, and anything else outside the v2 table is ``停``. A text
ending in a jamo gets a final ``.``. The normalised text is the input; there is no ``word2ph``.

g2pk2 asks NLTK for its ``cmudict`` corpus when imported (and downloads it if missing) to read English
words; here every Latin letter is spelled in Hangul before g2pk2 sees the text, so the corpus is
never consulted: the import is told the corpus is there and the English table is left empty, and
nothing is downloaded. (ko-pron, which upstream imports, is not used on this path.)
"""

from __future__ import annotations

import os
import re
import threading
from contextlib import contextmanager
from functools import lru_cache

from .symbols import symbol_to_id

_LETTERS = dict(zip(
    "abcdefghijklmnopqrstuvwxyz",
    ["에이", "비", "시", "디", "이", "에프", "지", "에이치", "아이", "제이", "케이", "엘", "엠", "엔", "오", "피", "큐", "아르", "에스", "티", "유", "브이", "더블유", "엑스", "와이", "제트"],
))
_RE_LATIN = re.compile("[A-Za-z]")
_COMPOUND_VOWELS = str.maketrans({
    "ㅘ": "ㅗㅏ", "ㅙ": "ㅗㅐ", "ㅚ": "ㅗㅣ", "ㅝ": "ㅜㅓ", "ㅞ": "ㅜㅔ", "ㅟ": "ㅜㅣ", "ㅢ": "ㅡㅣ",
    "ㅑ": "ㅣㅏ", "ㅒ": "ㅣㅐ", "ㅕ": "ㅣㅓ", "ㅖ": "ㅣㅔ", "ㅛ": "ㅣㅗ", "ㅠ": "ㅣㅜ",
})
# g2pk2 leaves "을 ㄹ..." / "를 ㄹ..." (a modifier before a word in ㄹ); upstream reads that ㄹ as ㄴ.
_RE_RIEUL_AFTER_EUL = re.compile(r"([ㅇㄹ]ㅡㄹ )ㄹ")
_MARKS = {"：": ",", "；": ",", "，": ",", "·": ",", "、": ",", "。": ".", "\n": ".", "！": "!", "？": "?", " ": "空"}
_RE_JAMO_END = re.compile(r"[\u3131-\u3163]$")
_lock = threading.Lock()


@contextmanager
def _no_corpus_download():
    """While g2pk2 is imported, NLTK reports its cmudict corpus present (so nothing is fetched)."""
    import nltk

    find = nltk.data.find

    def present(resource, *args, **kwargs):
        if resource == "corpora/cmudict.zip":
            return resource
        return find(resource, *args, **kwargs)

    nltk.data.find = present
    try:
        yield
    finally:
        nltk.data.find = find


@lru_cache(maxsize=1)
def _g2pk2():
    """g2pk2's converter over python-mecab-ko (built without g2pk2's installer and corpus checks)."""
    with _no_corpus_download():
        import g2pk2
        from g2pk2 import G2p
        from g2pk2.utils import get_rule_id2text, parse_table
    import mecab  # python-mecab-ko; finds the python-mecab-ko-dic dictionary by itself

    converter = G2p.__new__(G2p)
    converter.use_konlpy, converter.mecab_path = False, None
    converter.mecab = mecab.MeCab()
    converter.table = parse_table()
    converter.cmu = {}  # English words never reach g2pk2 (spelled in Hangul first)
    converter.rule2text = get_rule_id2text()
    converter.idioms_path = os.path.join(os.path.dirname(os.path.abspath(g2pk2.__file__)), "idioms.txt")
    return converter


def spell_latin(text: str) -> str:
    """Latin letters spelled in Hangul, one by one ("KT" -> "케이티")."""
    return _RE_LATIN.sub(lambda m: _LETTERS[m.group(0).lower()], text)


def pronounce(text: str) -> str:
    """``text`` as it is pronounced, in compatibility jamo (g2pk2's rules, compound vowels split)."""
    from jamo import h2j, j2hcj

    with _lock:
        spoken = _g2pk2()(spell_latin(text))
    jamo = j2hcj(h2j(spoken)).translate(_COMPOUND_VOWELS)
    return _RE_RIEUL_AFTER_EUL.sub(r"\1ㄴ", jamo)


def text_normalize(text: str) -> str:
    """Upstream normalises nothing for Korean."""
    return text


def g2p(norm_text: str) -> list[str]:
    """Phones of Korean text: one per jamo or mark (``空`` a space, ``停`` anything outside the v2 table)."""
    jamo = pronounce(norm_text)
    if _RE_JAMO_END.search(jamo):
        jamo += "."
    phones = [_MARKS.get(ch, ch) for ch in jamo]
    return [p if p in symbol_to_id else "停" for p in phones]


__all__ = ["g2p", "pronounce", "spell_latin", "text_normalize"]
