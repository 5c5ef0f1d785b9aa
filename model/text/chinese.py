"""Chinese grapheme-to-phoneme for GPT-SoVITS v2: normalised text -> initials/finals + ``word2ph``.

Each character becomes two phones, an initial (``sh``, or ``AA``/``EE``/``OO``/``y``/``w`` for syllables
without one) and a final with its tone digit (``ir4``), via the opencpop-strict table; punctuation is one
phone. ``word2ph[i]`` is the number of phones of character ``i`` of the normalised text (what the BERT
features are repeated by).

Pinyin: upstream v2 runs g2pw (a BERT polyphone classifier) which is not available offline. We use
pypinyin's phrase dictionary on jieba words (upstream's own non-g2pw path), corrected by the phrases of
upstream's polyphone table where pypinyin disagrees (``polyphones.txt``). Tone sandhi and erhua follow
upstream (see ``tone_sandhi``; 儿 after a word keeps its syllable and copies the previous tone).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from pypinyin import Style, lazy_pinyin
from pypinyin.contrib.tone_convert import to_finals_tone3, to_initials

from . import tone_sandhi
from .chinese_normalize import PUNCT, collapse_punctuation, normalize

HERE = Path(__file__).parent
_SENTENCE_END = re.compile(rf"(?<=[{re.escape(PUNCT)}])\s*")
_FINAL_FIXES = {"uei": "ui", "iou": "iu", "uen": "un"}  # after an initial
_BARE_SYLLABLES = {"ing": "ying", "i": "yi", "in": "yin", "u": "wu"}  # no initial
_BARE_GLIDES = {"v": "yu", "e": "e", "i": "y", "u": "w"}


@lru_cache(maxsize=1)
def _tables() -> tuple[dict[str, tuple[str, str]], dict[str, list[str]]]:
    syllables = {}
    for line in (HERE / "opencpop-strict.txt").read_text("utf-8").splitlines():
        pinyin, phones = line.split("\t")
        initial, final = phones.split(" ")
        syllables[pinyin] = (initial, final)
    polyphones = {}
    for line in (HERE / "polyphones.txt").read_text("utf-8").splitlines():
        if line.strip():
            word, *pys = line.split()
            polyphones[word] = pys
    return syllables, polyphones


def _word_pinyin(word: str) -> tuple[list[str], list[str]]:
    """Initials and tone-3 finals of one word ("5" = neutral); punctuation maps to itself."""
    initials, finals = _cached_pinyin(word)
    return list(initials), list(finals)


@lru_cache(maxsize=65536)
def _cached_pinyin(word: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    _, polyphones = _tables()
    fixed = polyphones.get(word)
    if fixed is None and any(ch in polyphones for ch in word):
        fixed = lazy_pinyin(word, neutral_tone_with_five=True, style=Style.TONE3)
        fixed = [polyphones[ch][0] if ch in polyphones else py for ch, py in zip(word, fixed)]
    if fixed is not None and len(fixed) == len(word):
        initials = [to_initials(p) for p in fixed]
        finals = [to_finals_tone3(p, neutral_tone_with_five=True) for p in fixed]
    else:
        initials = lazy_pinyin(word, neutral_tone_with_five=True, style=Style.INITIALS)
        finals = lazy_pinyin(word, neutral_tone_with_five=True, style=Style.FINALS_TONE3)
    return tuple(initials), tuple(finals)


def _erhua(initials: list[str], finals: list[str], word: str, pos: str) -> tuple[list[str], list[str]]:
    """儿 at the end of a word: er2, and (for real erhua words) the tone of the syllable before it."""
    lex = tone_sandhi.lexicon()
    finals = list(finals)
    if finals and word[len(finals) - 1 : len(finals)] == "儿" and finals[-1] == "er1":
        finals[-1] = "er2"
    if word not in lex["must_erhua"] and (word in lex["not_erhua"] or pos in ("a", "j", "nr")):
        return initials, finals
    if len(finals) != len(word):
        return initials, finals
    if len(word) > 1 and word[-1] == "儿" and finals[-1] in ("er2", "er5") and word[-2:] not in lex["not_erhua"]:
        finals[-1] = "er" + finals[-2][-1]
    return initials, finals


def _syllable_phones(initial: str, final: str) -> list[str]:
    syllables, _ = _tables()
    bare, tone = final[:-1], final[-1]
    if tone not in "12345":
        raise ValueError(f"no tone in pinyin final {final!r}")
    if initial:
        pinyin = initial + _FINAL_FIXES.get(bare, bare)
    else:
        pinyin = _BARE_SYLLABLES.get(bare) or (_BARE_GLIDES[bare[0]] + bare[1:] if bare[0] in _BARE_GLIDES else bare)
    new_initial, new_final = syllables[pinyin]
    return [new_initial, new_final + tone]


@lru_cache(maxsize=None)
def _readable(ch: str) -> bool:
    """Whether a character's pinyin fits the v2 phone set (not e.g. 噷 "hm" or 覅 "fiao")."""
    initials, finals = _word_pinyin(ch)
    try:
        return initials[0] != finals[0] and len(_syllable_phones(initials[0], finals[0])) == 2
    except (KeyError, IndexError, ValueError):
        return False


def text_normalize(text: str) -> str:
    """Chinese normalisation; characters the phone set cannot express are dropped (upstream crashed)."""
    norm = normalize(text)
    kept = "".join(c for c in norm if c in PUNCT or _readable(c))
    return norm if kept == norm else collapse_punctuation(kept)


def g2p(norm_text: str) -> tuple[list[str], list[int]]:
    """Phones and phones-per-character of normalised Chinese text."""
    phones: list[str] = []
    word2ph: list[int] = []
    for sentence in _SENTENCE_END.split(norm_text):
        sentence = re.sub("[a-zA-Z]+", "", sentence)
        if not sentence.strip():
            continue
        words = tone_sandhi.premerge([(w, p) for w, p in tone_sandhi.jieba().posseg.lcut(sentence)])
        for word, pos in words:
            if pos == "eng":
                continue
            initials, finals = _word_pinyin(word)
            finals = tone_sandhi.apply(word, pos, finals)
            initials, finals = _erhua(initials, finals, word, pos)
            for initial, final in zip(initials, finals):
                if initial == final:  # punctuation
                    if initial not in PUNCT:
                        raise ValueError(f"cannot read {initial!r} in {sentence!r}")
                    phones.append(initial)
                    word2ph.append(1)
                else:
                    phones.extend(_syllable_phones(initial, final))
                    word2ph.append(2)
    return phones, word2ph
