"""Chinese text normalisation: traditional -> simplified, numbers, dates, times, units, phone numbers.

Same rules and order as the official v2 frontend (PaddleSpeech's normaliser): dates "2021年3月5日"
(year digit by digit), clock times "7:30" -> "七点半", ranges, temperatures, percentages, fractions,
arithmetic, phone numbers (1 read "幺"), numbers of three or more digits without a measure word read
digit by digit, "2个" -> "两个"; then punctuation is mapped to the v2 set ``! ? … , . -``, everything
that is not a Chinese character or such punctuation is removed and repeated punctuation collapsed.

Deliberate differences: unit abbreviations ("kg", "m", "s", ...) are only expanded right after a number
(upstream replaced them anywhere, turning "Tom" into "To米"), longest first (upstream read "mm" as
"米米"); a time range reads "半" from its own minutes. ``normalize_sentence(s, strict=True)`` keeps
upstream's behaviour in both (the Cantonese frontend, held to upstream's tables, uses it).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

from .chinese_numbers import cardinal, digits, number

HERE = Path(__file__).parent
PUNCT = "!?…,.-"

_SPLIT = re.compile(r"([：、，；。？！,;?!][”’]?)")
_DROP_BEFORE = re.compile(r"[——《》【】<>{}()（）#&@“”^_|\\]")
_DROP_AFTER = re.compile(r"[-——《》【】<=>{}()（）#&@“”^_|\\]")
_FULL_WIDTH = {c + 0xFEE0: c for c in range(0x21, 0x7F) if chr(c).isalnum()} | {0x3000: 0x20}

_HOUR, _MIN = r"([0-1]?[0-9]|2[0-3])", r"([0-5][0-9])"
RE_TIME_RANGE = re.compile(rf"{_HOUR}:{_MIN}(?::([0-5][0-9]))?(?:~|-){_HOUR}:{_MIN}(?::([0-5][0-9]))?")
RE_TIME = re.compile(rf"{_HOUR}:{_MIN}(?::([0-5][0-9]))?")
RE_DATE = re.compile(r"(\d{4}|\d{2})年((0?[1-9]|1[0-2])月)?(((0?[1-9])|((1|2)[0-9])|30|31)([日号]))?")
RE_DATE2 = re.compile(r"(\d{4})([- /.])(0[1-9]|1[012])\2(0[1-9]|[12][0-9]|3[01])")
_NUM = r"(-?)((\d+)(\.\d+)?)|(\.(\d+))"
_UNIT_WORDS = r"(%|°C|℃|度|摄氏度|cm2|cm²|cm3|cm³|cm|db|ds|kg|km|m2|m²|m³|m3|ml|m|mm|s)"
RE_TO_RANGE = re.compile(rf"({_NUM}){_UNIT_WORDS}~({_NUM}){_UNIT_WORDS}")
RE_TEMPERATURE = re.compile(r"(-?)(\d+(\.\d+)?)(°C|℃|度|摄氏度)")
_SUP = "⁰¹²³⁴⁵⁶⁷⁸⁹ˣʸⁿ"
_OPERAND = rf"((-?)((\d+)(\.\d+)?[{_SUP}]*)|(\.\d+[{_SUP}]*)|([A-Za-z][{_SUP}]*))"
RE_ARITHMETIC = re.compile(rf"{_OPERAND}([\+\-\×÷=]){_OPERAND}")
RE_POWER = re.compile(rf"[{_SUP}]+")
RE_FRACTION = re.compile(r"(-?)(\d+)/(\d+)")
RE_PERCENT = re.compile(r"(-?)(\d+(\.\d+)?)%")
RE_MOBILE = re.compile(r"(?<!\d)((\+?86 ?)?1([38]\d|5[0-35-9]|7[678]|9[89])\d{8})(?!\d)")
RE_TELEPHONE = re.compile(r"(?<!\d)((0(10|2[1-3]|[3-9]\d{2})-?)?[1-9]\d{6,7})(?!\d)")
RE_SERVICE_NUMBER = re.compile(r"(400)(-)?\d{3}(-)?\d{4}")
RE_RANGE = re.compile(r"(?<![\d\+\-\×÷=])((-?)((\d+)(\.\d+)?))[-~]((-?)((\d+)(\.\d+)?))(?![\d\+\-\×÷=])")
RE_NEGATIVE = re.compile(r"(-)(\d+)")
RE_VERSION = re.compile(r"((\d+)(\.\d+)(\.\d+)?(\.\d+)+)")
RE_DECIMAL = re.compile(r"(-?)((\d+)(\.\d+))|(\.(\d+))")
RE_NUMBER = re.compile(_NUM)
RE_LONG_NUMBER = re.compile(r"\d{3}\d*")

_ARITHMETIC = {"+": "加", "-": "减", "×": "乘", "÷": "除", "=": "等于"}
UNITS = {  # longest first
    "cm2": "平方厘米", "cm²": "平方厘米", "cm3": "立方厘米", "cm³": "立方厘米", "m2": "平方米", "m²": "平方米",
    "m3": "立方米", "m³": "立方米", "cm": "厘米", "mm": "毫米", "ml": "毫升", "db": "分贝", "ds": "毫秒",
    "kg": "千克", "km": "千米", "m": "米", "s": "秒",
}
RE_UNIT = re.compile(r"(?<=\d)\s?(" + "|".join(map(re.escape, UNITS)) + r")(?![A-Za-z])")
# strict: upstream's order of plain replacements anywhere in the sentence
_UPSTREAM_UNIT_ORDER = ("cm2", "cm²", "cm3", "cm³", "cm", "db", "ds", "kg", "km", "m2", "m²", "m³", "m3", "ml", "m",
                        "mm", "s")
_SYMBOLS = dict(zip("①②③④⑤⑥⑦⑧⑨⑩", "一二三四五六七八九十")) | {
    "/": "每", "+": "加", "-": "减", "×": "乘", "÷": "除", "=": "等",
    "α": "阿尔法", "β": "贝塔", "γ": "伽玛", "Γ": "伽玛", "δ": "德尔塔", "Δ": "德尔塔", "ε": "艾普西龙",
    "ζ": "捷塔", "η": "依塔", "θ": "西塔", "Θ": "西塔", "ι": "艾欧塔", "κ": "喀帕", "λ": "拉姆达",
    "Λ": "拉姆达", "μ": "缪", "ν": "拗", "ξ": "克西", "Ξ": "克西", "ο": "欧米克伦", "π": "派", "Π": "派",
    "ρ": "肉", "ς": "西格玛", "Σ": "西格玛", "σ": "西格玛", "τ": "套", "υ": "宇普西龙", "φ": "服艾",
    "Φ": "服艾", "χ": "器", "ψ": "普赛", "Ψ": "普赛", "ω": "欧米伽", "Ω": "欧米伽",
}
_PUNCT_MAP = {
    "：": ",", "；": ",", "，": ",", "。": ".", "！": "!", "？": "?", "\n": ".", "·": ",", "、": ",", "...": "…",
    "$": ".", "/": ",", "—": "-", "~": "…", "～": "…",
}
_RE_PUNCT_MAP = re.compile("|".join(map(re.escape, _PUNCT_MAP)))
_RE_NOT_KEPT = re.compile(r"[^\u4e00-\u9fa5" + re.escape(PUNCT) + r"]+")
_RE_REPEATED_PUNCT = re.compile(rf"([{re.escape(PUNCT)}])[{re.escape(PUNCT)}]+")


@lru_cache(maxsize=1)
def _tables() -> tuple[dict[int, str], re.Pattern]:
    t2s = {ord(line[0]): line[1] for line in (HERE / "t2s.txt").read_text("utf-8").splitlines() if len(line) == 2}
    quantifiers = json.loads((HERE / "zh_lexicon.json").read_text("utf-8"))["quantifiers"]
    return t2s, re.compile(r"(\d+)([多余几\+])?" + quantifiers)


def _minutes(s: str) -> str:
    """Minutes/seconds of a clock time: "05" -> "零五"."""
    return ("零" if s.startswith("0") else "") + number(s.lstrip("0"))


def _clock(hour: str, minute: str, second: str | None, half_if: str | None = None) -> str:
    """``half_if``: the minutes that decide "半" (upstream's time ranges test the first time's)."""
    out = number(hour) + "点"
    if minute.lstrip("0"):
        out += "半" if int(half_if or minute) == 30 else _minutes(minute) + "分"
    if second and second.lstrip("0"):
        out += _minutes(second) + "秒"
    return out


def _date(m: re.Match) -> str:
    out = digits(m.group(1)) + "年"
    if m.group(3):
        out += cardinal(m.group(3)) + "月"
    if m.group(5):
        out += cardinal(m.group(5)) + m.group(9)
    return out


def _number(m: re.Match) -> str:
    if m.group(5):
        return number(m.group(5))
    return ("负" if m.group(1) else "") + number(m.group(2))


def _phone(m: re.Match, sep: str) -> str:
    parts = m.group(0).strip("+").split() if sep == " " else m.group(0).split("-")
    return "，".join(digits(p, alt_one=True) for p in parts)


def _quantity(m: re.Match) -> str:
    n = number(m.group(1))
    more = "多" if m.group(2) == "+" else (m.group(2) or "")
    return ("两" if n == "二" else n) + more + m.group(3)


def _time_range(m: re.Match, strict: bool) -> str:
    return _clock(*m.group(1, 2, 3)) + "至" + _clock(*m.group(4, 5, 6), half_if=m.group(2) if strict else None)


def _units(s: str, strict: bool) -> str:
    if not strict:
        return RE_UNIT.sub(lambda m: UNITS[m.group(1)], s)
    for unit in _UPSTREAM_UNIT_ORDER:
        s = s.replace(unit, UNITS[unit])
    return s


def normalize_sentence(s: str, strict: bool = False) -> str:
    """One sentence normalised; ``strict``: upstream's unit replacement and time ranges (module docstring)."""
    t2s, re_quantity = _tables()
    s = s.translate(t2s).translate(_FULL_WIDTH)
    s = RE_DATE.sub(_date, s)
    s = RE_DATE2.sub(lambda m: f"{digits(m.group(1))}年{cardinal(m.group(3))}月{cardinal(m.group(4))}日", s)
    s = RE_TIME_RANGE.sub(lambda m: _time_range(m, strict), s)
    s = RE_TIME.sub(lambda m: _clock(*m.group(1, 2, 3)), s)
    s = RE_TO_RANGE.sub(lambda m: m.group(0).replace("~", "至"), s)
    s = RE_TEMPERATURE.sub(
        lambda m: ("零下" if m.group(1) else "") + number(m.group(2)) + ("摄氏度" if m.group(4) == "摄氏度" else "度"), s
    )
    s = _units(s, strict)
    while RE_ARITHMETIC.search(s):
        s = RE_ARITHMETIC.sub(lambda m: m.group(1) + _ARITHMETIC[m.group(8)] + m.group(9), s)
    s = RE_POWER.sub(lambda m: "的" + m.group(0).translate(str.maketrans(_SUP, "0123456789xyn")) + "次方", s)
    s = RE_FRACTION.sub(lambda m: ("负" if m.group(1) else "") + f"{number(m.group(3))}分之{number(m.group(2))}", s)
    s = RE_PERCENT.sub(lambda m: ("负" if m.group(1) else "") + "百分之" + number(m.group(2)), s)
    s = RE_MOBILE.sub(lambda m: _phone(m, " "), s)
    s = RE_TELEPHONE.sub(lambda m: _phone(m, "-"), s)
    s = RE_SERVICE_NUMBER.sub(lambda m: _phone(m, "-"), s)
    s = RE_RANGE.sub(lambda m: RE_NUMBER.sub(_number, m.group(1)) + "到" + RE_NUMBER.sub(_number, m.group(6)), s)
    s = RE_NEGATIVE.sub(lambda m: "负" + number(m.group(2)), s)
    s = RE_VERSION.sub(lambda m: "".join("点" if c == "." else number(c) for c in m.group(1)), s)
    s = RE_DECIMAL.sub(_number, s)
    s = re_quantity.sub(_quantity, s)
    s = RE_LONG_NUMBER.sub(lambda m: digits(m.group(0), alt_one=True), s)
    s = RE_NUMBER.sub(_number, s)
    s = "".join(_SYMBOLS.get(c, c) for c in s)
    return _DROP_AFTER.sub("", s)


def split_sentences(text: str) -> list[str]:
    text = _DROP_BEFORE.sub("", text.replace(" ", ""))
    text = _SPLIT.sub(r"\1\n", text).strip()
    return [s.strip() for s in re.split(r"\n+", text)]


def map_punctuation(s: str) -> str:
    """v2 punctuation, and nothing but Chinese characters besides it."""
    s = s.replace("嗯", "恩").replace("呣", "母")
    s = _RE_PUNCT_MAP.sub(lambda m: _PUNCT_MAP[m.group(0)], s)
    return _RE_NOT_KEPT.sub("", s)


def collapse_punctuation(text: str) -> str:
    return _RE_REPEATED_PUNCT.sub(r"\1", text)


def normalize(text: str) -> str:
    """Normalised Chinese text: only Chinese characters and ``! ? … , . -`` remain."""
    return collapse_punctuation("".join(map_punctuation(normalize_sentence(s)) for s in split_sentences(text)))
