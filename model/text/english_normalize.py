"""English text normalisation: numbers, money, times, units and symbols become words.

Follows the official v2 English normaliser (same outputs for ordinary text: cardinals as inflect writes
them, 1001..2999 read as years, "$12.50" -> "twelve dollars and fifty cents", "45%" -> "forty-five
percent", "5th" -> "fifth", "3/4" -> "three fourths", units after a number, upper-case runs spelled
"N A S A", only ``A-Z a-z ' . , ? ! -`` kept, repeated punctuation collapsed) with its known bugs fixed:

- a clock time gets "A M"/"P M" only when the text says so or the hour is 0 or 13..23 (upstream reads
  every time as "a.m."), and minutes below ten read "oh five"; "a.m." is pronounced "A M";
- "is -3" keeps its space ("is negative three"; upstream glues "isnegative");
- numbers written with thousands separators ("1,299") and money amounts are cardinals, never years;
- "Dr./Mr./Mrs./Ms./Prof./St." before a name are expanded (upstream reads "Dr." as "drive");
- ";" and ":" become "," pauses and curly apostrophes are apostrophes (upstream meant to but its
  replacement table never matched, so they were deleted: "don’t" became "dont");
- "1. " reads "first, " only at the start of a line (upstream did it after any number ending a sentence);
- decades ("1980s", "90s") are plural years, not seconds.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Callable

from .english_numbers import cardinal, digits, ordinal, ordinal_words, year_or_cardinal

PUNCT = "!?…,.-"
UNITS = {  # longest first so "km/h" wins over "km" and "min" over "m"
    "km/h": ("kilometer per hour", "kilometers per hour"),
    "tbsp": ("tablespoon", "tablespoons"),
    "tsp": ("teaspoon", "teaspoons"),
    "min": ("minute", "minutes"),
    "km": ("kilometer", "kilometers"),
    "ft": ("foot", "feet"),
    "°C": ("degree celsius", "degrees celsius"),
    "°F": ("degree fahrenheit", "degrees fahrenheit"),
    "m": ("meter", "meters"),
    "L": ("liter", "liters"),
    "h": ("hour", "hours"),
    "s": ("second", "seconds"),
}
_TITLES = {"Dr": "Doctor", "Mr": "Mister", "Mrs": "Missus", "Ms": "Miz", "Prof": "Professor", "St": "Saint"}
_ARITHMETIC = {"+": "plus", "-": "minus", "×": "times", "÷": "divided by", "=": "equals"}
_MONEY = {"$": ("dollar", "dollars", "cent", "cents"), "£": ("pound", "pounds", "penny", "pence")}

_NUM = r"\d+(?:\.\d+)?"
_RE_LIST_NUMBER = re.compile(r"(?m)^(\s*)(\d+)\. ")
_RE_TITLE = re.compile(r"\b(" + "|".join(_TITLES) + r")\.?(?=\s+[A-Z])")
_RE_ARITHMETIC = re.compile(rf"(-?{_NUM}|\b[A-Za-z]\b)\s+([+\-×÷=])\s+(-?{_NUM}|\b[A-Za-z]\b)")
_RE_NEGATIVE = re.compile(r"(^|\s)-(\d)")
_RE_MONEY = re.compile(r"([$£])\s?(\d[\d,]*(?:\.\d+)?)|(\d[\d,]*(?:\.\d+)?)([$£])")
_RE_GROUPED = re.compile(r"(?<![\d,])(\d{1,3}(?:,\d{3})+)(?:\.(\d+))?(?!\d|,\d)")
_MERIDIEM = r"\s*([AaPp])\.?\s?[Mm]\b\.?"
_RE_CLOCK = re.compile(rf"(?<![\d:])([01]?\d|2[0-3]):([0-5]\d)(?![\d:])(?:{_MERIDIEM})?")
_RE_HOUR_MERIDIEM = re.compile(rf"(?<![\d:.])(\d{{1,2}}){_MERIDIEM}")
_RE_DECADE = re.compile(r"(?<![\d.])(?:(\d{3})|([2-9]))0s\b")
_RE_UNIT = re.compile(rf"(?<![\w.])({_NUM})(" + "|".join(re.escape(u) for u in UNITS) + r")(?![A-Za-z])")
_RE_DECIMAL = re.compile(r"(\d+)\.(\d+)")
_RE_FRACTION = re.compile(r"(\d+)/(\d+)")
_RE_ORDINAL = re.compile(r"(\d+)(st|nd|rd|th)\b")
_RE_INTEGER = re.compile(r"\d+")
_RE_WORD = re.compile(r"[A-Za-z]+")
_RE_REPEATED_PUNCT = re.compile(rf"([{re.escape(PUNCT)}\s])[{re.escape(PUNCT)}]+")


def _money(m: re.Match) -> str:
    sign, amount = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
    unit, units, sub, subs = _MONEY[sign]
    whole, _, frac = amount.replace(",", "").partition(".")
    major, minor = int(whole or 0), int(frac[:2].ljust(2, "0")) if frac else 0
    parts = []
    if major:
        parts.append(f"{cardinal(major)} {unit if major == 1 else units}")
    if minor:
        parts.append(f"{cardinal(minor)} {sub if minor == 1 else subs}")
    return " and ".join(parts) or f"zero {units}"


def _meridiem(letter: str | None, m: re.Match) -> str:
    """Spoken "A M"/"P M"; keeps a sentence-final period that the written "a.m." swallowed."""
    if not letter:
        return ""
    ends_sentence = m.group(0).endswith(".") and re.match(r"\s*$|\s+[A-Z]", m.string[m.end() :])
    return f" {letter.upper()} M" + ("." if ends_sentence else "")


def _clock(m: re.Match) -> str:
    hour, minute, letter = int(m.group(1)), int(m.group(2)), m.group(3)
    if not letter and hour == 0:
        letter = "a"
    elif not letter and hour > 12:
        letter = "p"
    if letter:
        hour = hour % 12 or 12
    if minute == 0:
        spoken = cardinal(hour) + ("" if letter else " o'clock")
    elif minute < 10:
        spoken = f"{cardinal(hour)} oh {cardinal(minute)}"
    else:
        spoken = f"{cardinal(hour)} {cardinal(minute)}"
    return spoken + _meridiem(letter, m)


def _hour_meridiem(m: re.Match) -> str:
    return cardinal(int(m.group(1))) + _meridiem(m.group(2), m)


def _decade(m: re.Match) -> str:
    words = year_or_cardinal(int(m.group(1) + "0")) if m.group(1) else cardinal(int(m.group(2) + "0"))
    return words[:-1] + "ies" if words.endswith("y") else words + "s"


def _unit(m: re.Match) -> str:
    number, unit = m.group(1), m.group(2)
    singular, plural = UNITS[unit]
    return f"{number} {singular if number == '1' else plural}"


def _grouped(m: re.Match) -> str:
    words = cardinal(int(m.group(1).replace(",", "")))
    return f"{words} point {digits(m.group(2))}" if m.group(2) else words


def _fraction(m: re.Match) -> str:
    num, den = int(m.group(1)), int(m.group(2))
    if den == 1:
        return cardinal(num)
    if den == 2:
        return f"{cardinal(num)} {'half' if num == 1 else 'halves'}"
    return f"{cardinal(num)} {ordinal_words(cardinal(den, andword='and'))}{'s' if num > 1 else ''}"


def _split_capitals(known: Callable[[str], bool]) -> Callable[[re.Match], str]:
    """Upper-case letters inside a word start a new word ("NASA" -> "N A S A", "OpenAI" -> "Open A I"),
    except in mixed-case words the dictionary knows ("McDonald")."""

    def split(m: re.Match) -> str:
        word = m.group(0)
        if word[1:].islower() or (not word.isupper() and known(word.lower())):
            return word
        return re.sub(r"(?<=.)([A-Z])", r" \1", word)

    return split


def normalize(text: str, known: Callable[[str], bool] = lambda w: False) -> str:
    """Spell out ``text`` for the English G2P; ``known(word)`` says whether the dictionary has a word."""
    text = text.replace("。", ".").replace("！", "!").replace("？", "?").replace("，", ",").replace("、", ",")
    text = re.sub(r"[’‘`´]", "'", text)
    text = re.sub(r"[;；：]|:(?!\d)|(?<!\d):", ",", text)
    text = text.replace("&", " and ").replace("…", ".")
    text = re.sub(r"\s*[—–]+\s*", ", ", text)
    text = _RE_LIST_NUMBER.sub(lambda m: m.group(1) + ordinal(int(m.group(2))) + ", ", text)
    text = _RE_TITLE.sub(lambda m: _TITLES[m.group(1)], text)
    text = re.sub(r"\bvs\.", "versus", text)
    while _RE_ARITHMETIC.search(text):
        text = _RE_ARITHMETIC.sub(lambda m: f"{m.group(1)} {_ARITHMETIC[m.group(2)]} {m.group(3)}", text)
    text = _RE_NEGATIVE.sub(r"\1negative \2", text)
    text = _RE_MONEY.sub(_money, text)
    text = _RE_GROUPED.sub(_grouped, text)
    text = _RE_CLOCK.sub(_clock, text)
    text = _RE_HOUR_MERIDIEM.sub(_hour_meridiem, text)
    text = _RE_DECADE.sub(_decade, text)
    text = _RE_UNIT.sub(_unit, text)
    text = _RE_DECIMAL.sub(lambda m: f"{m.group(1)} point {digits(m.group(2))}", text)
    text = _RE_FRACTION.sub(_fraction, text)
    text = _RE_ORDINAL.sub(lambda m: ordinal(int(m.group(1))), text)
    text = _RE_INTEGER.sub(lambda m: year_or_cardinal(int(m.group(0))), text)
    text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
    text = re.sub(r"[\s/()\[\]{}<>|_]+", " ", text)  # separators: a space, not nothing
    text = text.replace("%", " percent")
    text = re.sub(r"[^ A-Za-z'.,?!\-]", "", text)
    text = re.sub(r"(?i)\bi\.e\.", "that is", text)
    text = re.sub(r"(?i)\be\.g\.", "for example", text)
    text = _RE_WORD.sub(_split_capitals(known), text)
    return re.sub(" {2,}", " ", _RE_REPEATED_PUNCT.sub(r"\1", text))
