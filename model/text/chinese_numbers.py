"""Chinese number reading: "1203" -> "一千二百零三", "3.20" -> "三点二零", "110" -> "幺幺零" as digits."""

from __future__ import annotations

DIGITS = "零一二三四五六七八九"
UNITS = ((8, "亿"), (4, "万"), (3, "千"), (2, "百"), (1, "十"))


def _grouped(s: str, zero_pad: bool = True) -> list[str]:
    """Spell a digit string with units; a gap of zeros inside a number reads one "零"."""
    core = s.lstrip("0")
    if not core:
        return []
    if len(core) == 1:
        return [DIGITS[0], DIGITS[int(core)]] if zero_pad and len(core) < len(s) else [DIGITS[int(core)]]
    power, unit = next((p, u) for p, u in UNITS if p < len(core))
    return _grouped(s[:-power]) + [unit] + _grouped(s[-power:])


def cardinal(s: str) -> str:
    """Integer digits as a quantity: "10" -> "十", "0" -> "零", "1000" -> "一千"."""
    if not s:
        return ""
    s = s.lstrip("0")
    if not s:
        return DIGITS[0]
    parts = _grouped(s)
    if len(parts) >= 2 and parts[0] == "一" and parts[1] == "十":
        parts = parts[1:]
    return "".join(parts)


def digits(s: str, alt_one: bool = False) -> str:
    """Digit by digit: "2021" -> "二零二一"; ``alt_one`` reads 1 as "幺" (phone numbers, codes)."""
    out = "".join(DIGITS[int(d)] for d in s)
    return out.replace("一", "幺") if alt_one else out


def number(s: str) -> str:
    """A decimal number: "3.20" -> "三点二零" (one trailing zero kept), ".5" -> "零点五"."""
    whole, dot, frac = s.partition(".")
    if "." in frac:
        raise ValueError(f"not a number: {s!r}")
    words = cardinal(whole)
    frac = frac.rstrip("0") + "0" if frac.endswith("0") else frac
    if frac:
        words = (words or DIGITS[0]) + "点" + digits(frac)
    return words
