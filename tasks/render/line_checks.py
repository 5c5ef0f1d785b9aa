"""Per-line validation of a render script, before any compute.

`check_line(row, limits)` takes one script row (values as read: strings from CSV/JSONL, typed
values from Parquet) and returns the line's clean settings plus every reason it cannot be rendered
("speed 'fast' is not a number; use 0.5–2.0"). A line with reasons is refused with them, alone;
the rest of the script goes on.

Choices where a value could be read two ways:
- an empty cell means "use the job's default";
- `temperature` 0 is honoured as greedy decoding (top_k 1), not replaced by the default;
- `top_k` 0 and `speed` 0 are refused (0 candidates / a zero-length line cannot be rendered);
- `noise_scale` 0 is honoured (a deterministic SoVITS decoder);
- text: tab, newline and carriage return are whitespace; every other control character is refused.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

# The text frontend's languages (voicefleet.model.text.language.LANGUAGES; a test keeps the two
# equal). Not imported from there: that package loads torch and transformers (~8 s, ~600 MB),
# and the plan runs on the driver.
LANGUAGES = ("en", "zh", "all_zh", "ja", "all_ja", "ko", "all_ko", "yue", "all_yue", "auto", "auto_yue")
DEFAULT_MAX_CHARS = 2000  # one line's text; the Synthesizer splits it at sentence boundaries


@dataclass(frozen=True)
class Rule:
    kind: type  # float or int
    low: float
    high: float
    unit: str = ""

    def describe(self) -> str:
        fmt = (lambda v: f"{v:.1f}") if self.kind is float else (lambda v: f"{int(v):,}")
        return f"{fmt(self.low)}–{fmt(self.high)}{self.unit}"


RULES: dict[str, Rule] = {
    "speed": Rule(float, 0.5, 2.0),
    "temperature": Rule(float, 0.0, 2.0),
    "noise_scale": Rule(float, 0.0, 2.0),
    "target_seconds": Rule(float, 0.1, 600.0, " s"),
    "top_k": Rule(int, 1, 1025),  # the GPT's audio vocabulary (1024 codes + EOS)
    "seed": Rule(int, 0, 2**63 - 1),
}


@dataclass(frozen=True)
class LineLimits:
    max_chars: int = DEFAULT_MAX_CHARS

    def __post_init__(self) -> None:
        if self.max_chars < 1:
            raise ValueError(f"max_chars must be at least 1, got {self.max_chars}")


CONTROL_CLASS = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]"   # all but tab, newline, carriage return
_CONTROL = re.compile(CONTROL_CLASS)
_SPEAKABLE = re.compile(r"[^\W_]")  # a letter or digit in any script


def check_option(name: str, value: Any) -> tuple[float | int | None, str | None]:
    """(parsed value or None for "use the default", reason or None)."""
    rule = RULES[name]
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, None
    use = f"use {rule.describe()}"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None, f"{name} {value!r} is not a number; {use}"
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None, f"{name} {value!r} is not a number; {use}"
    else:
        number = float(value) if not isinstance(value, int) else value
    if isinstance(number, float) and not math.isfinite(number):
        return None, f"{name} {value!r} is not a finite number; {use}"
    if rule.kind is int:
        if isinstance(number, float) and not number.is_integer():
            return None, f"{name} {value!r} is not a whole number; {use}"
        number = int(number)
    if not rule.low <= number <= rule.high:
        return None, f"{name} {value!r} is out of range; {use}"
    return number, None


def check_text(text: Any, limits: LineLimits) -> str | None:
    if text is None or (isinstance(text, str) and not text.strip()):
        return "text is empty; give the words to speak"
    if not isinstance(text, str):
        return f"text must be a string, got {type(text).__name__} {text!r}"
    bad = _CONTROL.search(text)
    if bad:
        return (f"text contains control character U+{ord(bad.group()):04X} at character {bad.start() + 1}; "
                "remove it")
    if not _SPEAKABLE.search(text):
        return f"text {text[:40]!r} has no letters or digits to speak"
    if len(text) > limits.max_chars:
        return (f"text is {len(text):,} characters, over the {limits.max_chars:,}-character cap; "
                "split it into several lines (or raise the cap with --max-chars)")
    return None


def check_line(row: dict[str, Any], limits: LineLimits) -> tuple[dict[str, Any], list[str]]:
    """Clean values of one line (`voice_id`, `text`, `language` and every option) and its problems."""
    reasons: list[str] = []
    clean: dict[str, Any] = {}
    voice = row.get("voice_id")
    clean["voice_id"] = "" if voice is None else str(voice).strip()
    if not clean["voice_id"]:
        reasons.append("voice_id is empty; name the voice to render with")
    text = row.get("text")
    clean["text"] = text if isinstance(text, str) else ("" if text is None else str(text))
    problem = check_text(text, limits)
    if problem:
        reasons.append(problem)
    language = row.get("language")
    clean["language"] = "" if language is None else str(language).strip()
    if clean["language"] not in LANGUAGES:
        shown = repr(clean["language"]) if clean["language"] else "(empty)"
        reasons.append(f"unsupported language {shown}; use one of {', '.join(LANGUAGES)}")
    for name in RULES:
        clean[name], problem = check_option(name, row.get(name))
        if problem:
            reasons.append(problem)
    return clean, reasons
