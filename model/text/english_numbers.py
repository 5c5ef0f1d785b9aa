"""English number words, in the style of ``inflect`` (which the official frontend uses).

Why not inflect itself: importing it costs ~4 s. The output format is kept identical, because the
official checkpoints were trained on it: thousands groups are separated by ", " except before a final
group below one hundred ("three thousand, five hundred" but "three thousand one"), and 1001..2999 read
as years ("twelve ninety-nine", "nineteen oh five", "two thousand five").
"""

from __future__ import annotations

ONES = (
    "zero one two three four five six seven eight nine ten "
    "eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen"
).split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
SCALES = [""] + (
    "thousand million billion trillion quadrillion quintillion sextillion septillion octillion nonillion decillion"
).split()
_IRREGULAR_ORDINALS = {
    "one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth", "nine": "ninth",
    "twelve": "twelfth",
}


def _below_100(n: int) -> str:
    if n < 20:
        return ONES[n]
    return TENS[n // 10] + ("-" + ONES[n % 10] if n % 10 else "")


def _below_1000(n: int, andword: str) -> str:
    hundreds, rest = divmod(n, 100)
    if not hundreds:
        return _below_100(rest)
    head = ONES[hundreds] + " hundred"
    if not rest:
        return head
    return f"{head} {andword + ' ' if andword else ''}{_below_100(rest)}"


def cardinal(n: int, andword: str = "") -> str:
    """``cardinal(3500) == "three thousand, five hundred"``; negative numbers get "minus"."""
    if n < 0:
        return "minus " + cardinal(-n, andword)
    if n == 0:
        return "zero"
    groups = []
    while n:
        n, g = divmod(n, 1000)
        groups.append(g)
    if len(groups) > len(SCALES):  # beyond decillions: read the digits
        return " ".join(ONES[int(d)] for d in str(n))
    words = ""
    for scale in range(len(groups) - 1, -1, -1):
        g = groups[scale]
        if not g:
            continue
        part = _below_1000(g, andword) + (" " + SCALES[scale] if scale else "")
        if not words:
            words = part
        elif scale == 0 and g < 100:
            words += f" {andword + ' ' if andword else ''}{part}"
        else:
            words += ", " + part
    return words


def ordinal_words(words: str) -> str:
    """Turn the last word of a cardinal into its ordinal: "twenty-one" -> "twenty-first"."""
    cut = max(words.rfind(" "), words.rfind("-")) + 1
    head, last = words[:cut], words[cut:]
    if last in _IRREGULAR_ORDINALS:
        return head + _IRREGULAR_ORDINALS[last]
    if last.endswith("y"):
        return head + last[:-1] + "ieth"
    return head + last + "th"


def ordinal(n: int) -> str:
    """``ordinal(101) == "one hundred and first"`` (ordinals keep inflect's default "and")."""
    return ordinal_words(cardinal(n, andword="and"))


def year_or_cardinal(n: int) -> str:
    """A bare integer as the official frontend reads it: 1001..2999 as a year, anything else as a cardinal."""
    if not 1000 < n < 3000:
        return cardinal(n)
    if n == 2000:
        return "two thousand"
    if 2000 < n < 2010:
        return "two thousand " + cardinal(n % 100)
    if n % 100 == 0:
        return cardinal(n // 100) + " hundred"
    hi, lo = divmod(n, 100)
    return cardinal(hi) + " " + ("oh " + ONES[lo] if lo < 10 else _below_100(lo))


def digits(s: str) -> str:
    return " ".join(ONES[int(d)] for d in s)
