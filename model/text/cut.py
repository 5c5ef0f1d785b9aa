"""Cutting long text into the sentences that are synthesised one at a time (upstream's cut0..cut5).

- cut0: no cut;  cut1: every four sentences (the last piece keeps up to seven);  cut2: pieces of just over 50 characters;
- cut3: at the Chinese full stop "。";  cut4: at the English full stop "." (not inside numbers);
- cut5: at every punctuation mark (not the "." inside a number).

``split_text`` is upstream's pre-processing around a cut: a very short first sentence gets a leading
full stop (so the model does not swallow it), pieces shorter than 5 characters are merged into the
previous one, pieces of pure punctuation are dropped, every piece ends with punctuation and pieces
longer than 510 characters are broken at punctuation (BERT's input limit), or hard if there is none.
"""

from __future__ import annotations

import re
from typing import Callable

SPLITS = frozenset("，。？！,.?!~:：—…")
_PAUSES = frozenset("!?…,.- ")  # a piece made only of these is dropped
_CUT5_MARKS = frozenset(",.;?!、，。？！;：…")


def _is_punct_only(piece: str) -> bool:
    return set(piece) <= _PAUSES


def _sentences(text: str) -> list[str]:
    """Sentences, each ending in the mark that closed it (a "。" is added at the end if missing)."""
    text = text.replace("……", "。").replace("——", "，")
    if text[-1] not in SPLITS:
        text += "。"
    out, start = [], 0
    for i, ch in enumerate(text):
        if ch in SPLITS:
            out.append(text[start : i + 1])
            start = i + 1
    return out


def cut0(text: str) -> str:
    return text if not _is_punct_only(text) else "\n"


def cut1(text: str) -> str:
    text = text.strip("\n")
    sentences = _sentences(text)
    starts = list(range(0, len(sentences), 4))
    if len(starts) > 1:  # the last group also takes the remainder (upstream: 8 sentences stay one piece)
        starts[-1] = len(sentences)
        pieces = ["".join(sentences[a:b]) for a, b in zip(starts, starts[1:])]
    else:
        pieces = [text]
    return "\n".join(p for p in pieces if not _is_punct_only(p))


def cut2(text: str, limit: int = 50) -> str:
    text = text.strip("\n")
    sentences = _sentences(text)
    if len(sentences) < 2:
        return text
    pieces, current = [], ""
    for sentence in sentences:
        current += sentence
        if len(current) > limit:
            pieces.append(current)
            current = ""
    if current:
        pieces.append(current)
    if len(pieces) > 1 and len(pieces[-1]) < limit:  # a short tail joins the piece before
        pieces[-2:] = [pieces[-2] + pieces[-1]]
    return "\n".join(p for p in pieces if not _is_punct_only(p))


def cut3(text: str) -> str:
    text = text.strip("\n")
    return "\n".join(p for p in text.strip("。").split("。") if not _is_punct_only(p))


def cut4(text: str) -> str:
    text = text.strip("\n")
    return "\n".join(p for p in re.split(r"(?<!\d)\.(?!\d)", text.strip(".")) if not _is_punct_only(p))


def cut5(text: str) -> str:
    text = text.strip("\n")
    pieces, current = [], ""
    for i, ch in enumerate(text):
        current += ch
        inside_number = ch == "." and 0 < i < len(text) - 1 and text[i - 1].isdigit() and text[i + 1].isdigit()
        if ch in _CUT5_MARKS and not inside_number:
            pieces.append(current)
            current = ""
    if current:
        pieces.append(current)
    return "\n".join(p for p in pieces if not set(p) <= _CUT5_MARKS)


METHODS: dict[str, Callable[[str], str]] = {"cut0": cut0, "cut1": cut1, "cut2": cut2, "cut3": cut3, "cut4": cut4, "cut5": cut5}


def merge_short(pieces: list[str], threshold: int = 5) -> list[str]:
    """Glue pieces together until each is at least ``threshold`` characters; a short tail joins the last."""
    if len(pieces) < 2:
        return pieces
    out, current = [], ""
    for piece in pieces:
        current += piece
        if len(current) >= threshold:
            out.append(current)
            current = ""
    if current:
        if out:
            out[-1] += current
        else:
            out.append(current)
    return out


def split_long(text: str, max_len: int = 510) -> list[str]:
    """Break text longer than ``max_len`` at punctuation marks; a run without any is cut every
    ``max_len`` characters (upstream let it through whole, and emitted an empty piece before it)."""
    out, current = [], ""
    for part in re.split("([" + re.escape("".join(SPLITS)) + "])", text):
        if len(current + part) > max_len:
            if current:
                out.append(current)
            while len(part) > max_len:
                out.append(part[:max_len])
                part = part[max_len:]
            current = part
        else:
            current += part
    if current:
        out.append(current)
    return out


def split_text(text: str, method: str = "cut5", language: str = "zh") -> list[str]:
    """Cut ``text`` with ``method`` and tidy the pieces as upstream does before synthesis."""
    if method not in METHODS:
        raise ValueError(f"unknown cut method {method!r}; use one of {', '.join(METHODS)}")
    full_stop = "." if language == "en" else "。"
    text = re.sub(r"([!?…,.\-])[!?…,.\-]+", r"\1", text).strip("\n")
    if not text:
        return []
    first = re.split("[" + re.escape("".join(SPLITS)) + "]", text)[0].strip()
    if text[0] not in SPLITS and len(first) < 4:
        text = full_stop + text
    text = METHODS[method](text)
    pieces = [p for p in text.split("\n") if p not in ("", " ")]
    pieces = merge_short(pieces, 5)
    out = []
    for piece in pieces:
        if not piece.strip() or not re.sub(r"\W+", "", piece):
            continue
        if piece[-1] not in SPLITS:
            piece += full_stop
        out.extend(split_long(piece) if len(piece) > 510 else [piece])
    return out
