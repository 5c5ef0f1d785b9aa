"""Language codes of the public API and splitting mixed Chinese/English text into runs.

Upstream splits with the ``split_lang`` + fastText detector pair, which needs a downloaded model. For
the two languages we support the script decides: Latin letters are English, Han characters Chinese.
Everything else (spaces, punctuation, symbols) joins the run before it (the one after it at the start),
and a unit right after a number ("5km") goes with the number, so Chinese reads "五千米" and English
"five kilometers" instead of spelling "K M".
Digits follow upstream's rules for its "digit" runs: between two runs of one language they take that
language; otherwise after a sentence-final mark they go with the next run, before one with the
previous run, and else with the longer neighbour; alone they are Chinese.

Codes: "en" (all English), "zh" (Chinese with embedded English), "all_zh" (the same, digits always
Chinese), "auto" (detect; Japanese kana is refused since Japanese is not supported). Japanese needs
pyopenjtalk with its dictionary, which the environment does not have.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .chinese_normalize import UNITS
from .english_normalize import UNITS as EN_UNITS

LANGUAGES = ("en", "zh", "all_zh", "auto")
_UNSUPPORTED = {"ja", "all_ja", "ko", "all_ko", "yue", "all_yue", "auto_yue"}
_SENTENCE_MARKS = ",.!?，。！？"
_KANA = re.compile(r"[\u3041-\u3096\u30a1-\u30fa\u30fc]")
# A unit written right after a number ("5km", "25°C") belongs to the number's run, whatever its language.
_UNIT_NAMES = sorted({*UNITS, *EN_UNITS, "°C", "°F"}, key=len, reverse=True)
_RE_UNIT = re.compile(r"(?<=\d)\s?(" + "|".join(map(re.escape, _UNIT_NAMES)) + r")(?![A-Za-z])")
_FULL_WIDTH_ALNUM = {c + 0xFEE0: c for c in range(0x21, 0x7F) if chr(c).isalnum()}


class UnsupportedLanguage(ValueError):
    """A language code (or a script in "auto" text) this frontend cannot read."""


@dataclass(frozen=True)
class Segment:
    text: str
    lang: str  # "zh" or "en"


def check_language(language: str) -> str:
    if language in LANGUAGES:
        return language
    hint = " (Japanese/Korean/Cantonese need frontends that are not installed)" if language in _UNSUPPORTED else ""
    raise UnsupportedLanguage(f"unsupported language {language!r}{hint}; use one of {', '.join(LANGUAGES)}")


def _script(ch: str) -> str:
    if (ch.isascii() and ch.isalpha()) or ch in "ÀÁÂÃÄÅÇÈÉÊËÌÍÎÏÑÒÓÔÕÖÙÚÛÜÝàáâãäåçèéêëìíîïñòóôõöùúûüýÿ":
        return "en"
    if "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf" or "\uf900" <= ch <= "\ufaff":
        return "zh"
    if _KANA.match(ch):
        return "ja"
    if "0" <= ch <= "9":
        return "digit"
    return ""  # neutral


def _runs(text: str) -> list[list[str]]:
    """[[text, script], ...] with neutral characters attached to the previous run."""
    unit_chars = {i for m in _RE_UNIT.finditer(text) for i in range(*m.span(1))}
    runs: list[list[str]] = []
    for i, ch in enumerate(text):
        script = "" if i in unit_chars else _script(ch)
        if runs and (script == runs[-1][1] or not script):
            runs[-1][0] += ch
        elif not runs and not script:
            runs.append([ch, ""])
        elif runs and not runs[-1][1]:  # leading neutral text joins the first real run
            runs[-1] = [runs[-1][0] + ch, script]
        else:
            runs.append([ch, script])
    return runs


def _place_digits(runs: list[list[str]]) -> None:
    for i, run in enumerate(runs):
        if run[1] != "digit":
            continue
        prev = runs[i - 1] if i > 0 else None
        nxt = next((r for r in runs[i + 1 :] if r[1] != "digit"), None)
        if prev is None and nxt is None:
            run[1] = "zh"
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
    runs = _runs(text)
    if language == "auto" and any(r[1] == "ja" for r in runs):
        raise UnsupportedLanguage(f"Japanese text is not supported: {text!r}")
    for run in runs:
        if run[1] in ("", "ja") or (run[1] == "digit" and language == "all_zh"):
            run[1] = "zh"
    _place_digits(runs)
    segments: list[Segment] = []
    for chunk, lang in runs:
        if segments and segments[-1].lang == lang:
            segments[-1] = Segment(segments[-1].text + chunk, lang)
        else:
            segments.append(Segment(chunk, lang))
    return segments
