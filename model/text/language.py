"""Language codes of the public API and splitting mixed-script text into runs of one language.

Upstream splits with the ``split_lang`` + fastText detector pair, which needs a downloaded model, and
then, for a language code other than "auto", sends every run that is not English to that language's
frontend ("zh", "ja", "ko", "yue": the language with embedded English). Here the script decides: Latin
letters are English, and everything else belongs to the code's language. Spaces, punctuation and
symbols join the run before them (the one after them at the start), and a unit right after a number
("5km") goes with the number, so Chinese reads "五千米", Japanese "キロメートル" and English "five
kilometers" instead of spelling "K M" (not for Korean, whose frontend would spell the letters).
Digits follow upstream's rules for its "digit" runs: between two runs of one language they take that
language; otherwise after a sentence-final mark they go with the next run, before one with the
previous run, and else with the longer neighbour; alone they take the code's language (Chinese for
"auto"). The "all_" codes keep digits in their language (upstream's ``default_lang``) but still read
Latin words in English, as upstream does.

Codes: "en" (all English); "zh", "ja", "ko", "yue" (that language with embedded English); "all_zh",
"all_ja", "all_ko", "all_yue" (the same, digits always in the language); "auto" (detect by script:
Hangul is Korean, kana Japanese, Han characters Japanese in a sentence that has kana and Chinese
otherwise) and "auto_yue" (the same with Cantonese for Chinese). Upstream's fastText also tells
Chinese from Japanese kanji in a sentence without kana, which a script cannot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .chinese_normalize import UNITS
from .english_normalize import UNITS as EN_UNITS

# Code -> the language its non-English runs are read in (None: detected per run).
_READS = {"zh": "zh", "all_zh": "zh", "ja": "ja", "all_ja": "ja", "ko": "ko", "all_ko": "ko", "yue": "yue",
          "all_yue": "yue", "auto": None, "auto_yue": None}
LANGUAGES = ("en", "zh", "all_zh", "ja", "all_ja", "ko", "all_ko", "yue", "all_yue", "auto", "auto_yue")
_SENTENCE_MARKS = ",.!?，。！？"
_SENTENCE_END = re.compile(r"[.!?。！？\n][^\w]*$")  # a run that closes a sentence
_KANA = re.compile(r"[\u3041-\u3096\u3099\u309a\u30a1-\u30fa\u30fc]")
_HANGUL = re.compile(r"[\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]")
# A unit written right after a number ("5km", "25°C") belongs to the number's run, whatever its language.
_UNIT_NAMES = sorted({*UNITS, *EN_UNITS, "°C", "°F"}, key=len, reverse=True)
_RE_UNIT = re.compile(r"(?<=\d)\s?(" + "|".join(map(re.escape, _UNIT_NAMES)) + r")(?![A-Za-z])")
_FULL_WIDTH_ALNUM = {c + 0xFEE0: c for c in range(0x21, 0x7F) if chr(c).isalnum()}


class UnsupportedLanguage(ValueError):
    """A language code this frontend cannot read."""


@dataclass(frozen=True)
class Segment:
    text: str
    lang: str  # "zh", "en", "ja", "ko" or "yue"


def check_language(language: str) -> str:
    if language in LANGUAGES:
        return language
    raise UnsupportedLanguage(f"unsupported language {language!r}; use one of {', '.join(LANGUAGES)}")


def _script(ch: str) -> str:
    if (ch.isascii() and ch.isalpha()) or ch in "ÀÁÂÃÄÅÇÈÉÊËÌÍÎÏÑÒÓÔÕÖÙÚÛÜÝàáâãäåçèéêëìíîïñòóôõöùúûüýÿ":
        return "en"
    if "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf" or "\uf900" <= ch <= "\ufaff" or ch == "々":
        return "zh"
    if _KANA.match(ch):
        return "ja"
    if _HANGUL.match(ch):
        return "ko"
    if "0" <= ch <= "9":
        return "digit"
    return ""  # neutral


def _runs(text: str, units: bool, by_sentence: bool = False) -> list[list[str]]:
    """[[text, script], ...] with neutral characters attached to the previous run; ``by_sentence``: a run
    also ends with its sentence."""
    unit_chars = {i for m in _RE_UNIT.finditer(text) for i in range(*m.span(1))} if units else set()
    runs: list[list[str]] = []
    for i, ch in enumerate(text):
        script = "" if i in unit_chars else _script(ch)
        if by_sentence and script and runs and _SENTENCE_END.search(runs[-1][0]):
            runs.append([ch, script])
        elif runs and (script == runs[-1][1] or not script):
            runs[-1][0] += ch
        elif not runs and not script:
            runs.append([ch, ""])
        elif runs and not runs[-1][1]:  # leading neutral text joins the first real run
            runs[-1] = [runs[-1][0] + ch, script]
        else:
            runs.append([ch, script])
    return runs


def _detect(runs: list[list[str]]) -> None:
    """"auto": Han runs of a sentence that has kana are Japanese (sentences end at . ! ? 。！？ or a line break)."""
    sentence: list[list[str]] = []
    for i, run in enumerate(runs):
        sentence.append(run)
        if i == len(runs) - 1 or _SENTENCE_END.search(run[0]):
            if any(r[1] == "ja" for r in sentence):
                for r in sentence:
                    if r[1] == "zh":
                        r[1] = "ja"
            sentence = []


def _place_digits(runs: list[list[str]], alone: str) -> None:
    for i, run in enumerate(runs):
        if run[1] != "digit":
            continue
        prev = runs[i - 1] if i > 0 else None
        nxt = next((r for r in runs[i + 1 :] if r[1] != "digit"), None)
        if prev is None and nxt is None:
            run[1] = alone
        elif prev is None:
            run[1] = nxt[1]
        elif nxt is None or prev[1] == nxt[1]:
            run[1] = prev[1]
        elif prev[0].rstrip()[-1:] in _SENTENCE_MARKS:
            run[1] = nxt[1]
        elif nxt[0][:1] in _SENTENCE_MARKS or run[0].rstrip()[-1:] in "。.":
            run[1] = prev[1]
        else:
            run[1] = prev[1] if len(prev[0]) >= len(nxt[0]) else nxt[1]


def segment(text: str, language: str) -> list[Segment]:
    """Split ``text`` into runs of one language for the given API language code."""
    language = check_language(language)
    text = text.translate(_FULL_WIDTH_ALNUM)  # "ＡＢＣ１２" reads as "ABC12"
    if language == "en":
        return [Segment(text, "en")] if text else []
    reads = _READS[language]
    runs = _runs(text, units=reads != "ko", by_sentence=reads is None)
    if reads is None:
        _detect(runs)
    for run in runs:
        if run[1] == "digit":
            if language.startswith("all_"):
                run[1] = reads
        elif run[1] != "en":
            run[1] = reads or run[1] or "zh"
    _place_digits(runs, reads or "zh")
    segments: list[Segment] = []
    for chunk, lang in runs:
        if lang == "zh" and language == "auto_yue":
            lang = "yue"
        if segments and segments[-1].lang == lang:
            segments[-1] = Segment(segments[-1].text + chunk, lang)
        else:
            segments.append(Segment(chunk, lang))
    return segments
