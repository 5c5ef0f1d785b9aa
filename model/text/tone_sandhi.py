"""Mandarin tone sandhi on jieba words, as the official v2 frontend applies it.

Finals carry their tone as the last character ("ao3"; "5" is the neutral tone). Before the rules run,
words are re-merged so each rule sees its whole context (``premerge``): "不" joins the following word,
"一" joins the following word or a reduplication "看一看", reduplications and short all-third-tone
neighbours are merged, "儿" joins the word before it. Then per word (``apply``):

- 不: neutral in the middle of "A不A"-like three-character words, bu2 before a fourth tone;
- 一: unchanged inside digit strings, neutral in "看一看", yi1 in "第一", yi2 before a fourth tone, yi4
  before other tones (not before punctuation);
- neutral tone: reduplicated nouns/verbs/adjectives, sentence particles, 的地得, aspect 了着过,
  plural/diminutive 们子, locatives 上下里, directional 来去, the measure word 个, and a word list;
- third tone: two third tones in a row make the first a second tone, split by sub-words for words of
  three and four characters.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path

from pypinyin import Style, lazy_pinyin

PARTICLES = "吧呢哈啊呐噻嘛吖嗨呐哦哒额滴哩哟喽啰耶喔诶"
PUNCT = "：，；。？！“”‘’':,;.?!"


@lru_cache(maxsize=1)
def lexicon() -> dict[str, frozenset[str]]:
    data = json.loads((Path(__file__).with_name("zh_lexicon.json")).read_text("utf-8"))
    return {k: frozenset(v) for k, v in data.items() if isinstance(v, list)}


@lru_cache(maxsize=1)
def jieba():
    """jieba with its bundled dictionary (works offline), start-up logging silenced."""
    import jieba as _jieba
    import jieba.posseg  # noqa: F401

    _jieba.setLogLevel(logging.CRITICAL)
    return _jieba


def _tone(final: str, tone: str) -> str:
    return final[:-1] + tone


def _all_third(finals) -> bool:
    return all(f[-1:] == "3" for f in finals)


@lru_cache(maxsize=65536)
def _finals(word: str) -> tuple[str, ...]:
    return tuple(lazy_pinyin(word, neutral_tone_with_five=True, style=Style.FINALS_TONE3))


def split_word(word: str) -> list[str]:
    """Two parts around the shortest search-mode sub-word (at the start if it begins the word)."""
    shortest = sorted(jieba().cut_for_search(word), key=len)[0]
    if word.find(shortest) == 0:
        return [shortest, word[len(shortest) :]]
    return [word[: -len(shortest)], shortest]


# -- rules on one word ---------------------------------------------------------------------------
def bu_sandhi(word: str, finals: list[str]) -> list[str]:
    finals = list(finals)
    if len(word) == 3 and word[1] == "不":
        finals[1] = _tone(finals[1], "5")
        return finals
    for i, ch in enumerate(word[:-1]):
        if ch == "不" and finals[i + 1][-1] == "4":
            finals[i] = _tone(finals[i], "2")
    return finals


def yi_sandhi(word: str, finals: list[str]) -> list[str]:
    finals = list(finals)
    if "一" in word and all(ch.isnumeric() for ch in word if ch != "一"):
        return finals
    if len(word) == 3 and word[1] == "一" and word[0] == word[-1]:
        finals[1] = _tone(finals[1], "5")
    elif word.startswith("第一"):
        finals[1] = _tone(finals[1], "1")
    else:
        for i, ch in enumerate(word[:-1]):
            if ch != "一":
                continue
            if finals[i + 1][-1] == "4":
                finals[i] = _tone(finals[i], "2")
            elif word[i + 1] not in PUNCT:
                finals[i] = _tone(finals[i], "4")
    return finals


def neutral_sandhi(word: str, pos: str, finals: list[str]) -> list[str]:
    lex = lexicon()
    must, must_not = lex["must_neutral"], lex["must_not_neutral"]
    finals = list(finals)
    for j in range(1, len(word)):
        if word[j] == word[j - 1] and pos[:1] in ("n", "v", "a") and word not in must_not:
            finals[j] = _tone(finals[j], "5")
    ge = word.find("个")
    last = word[-1:]
    if last and last in PARTICLES or last and last in "的地得":
        finals[-1] = _tone(finals[-1], "5")
    elif len(word) == 1 and word in "了着过" and pos in ("ul", "uz", "ug"):
        finals[-1] = _tone(finals[-1], "5")
    elif len(word) > 1 and last in "们子" and pos in ("r", "n") and word not in must_not:
        finals[-1] = _tone(finals[-1], "5")
    elif len(word) > 1 and last in "上下里" and pos in ("s", "l", "f"):
        finals[-1] = _tone(finals[-1], "5")
    elif len(word) > 1 and last in "来去" and word[-2] in "上下进出回过起开":
        finals[-1] = _tone(finals[-1], "5")
    elif (ge >= 1 and (word[ge - 1].isnumeric() or word[ge - 1] in "几有两半多各整每做是")) or word == "个":
        finals[ge] = _tone(finals[ge], "5")
    elif word in must or word[-2:] in must:
        finals[-1] = _tone(finals[-1], "5")
    parts = split_word(word)
    cut = len(parts[0])
    halves = [finals[:cut], finals[cut:]]
    for part, half in zip(parts, halves):
        if half and (part in must or part[-2:] in must):
            half[-1] = _tone(half[-1], "5")
    return halves[0] + halves[1]


def third_sandhi(word: str, finals: list[str]) -> list[str]:
    finals = list(finals)
    if len(word) == 2 and _all_third(finals):
        finals[0] = _tone(finals[0], "2")
    elif len(word) == 3:
        parts = split_word(word)
        if _all_third(finals):
            if len(parts[0]) == 2:  # 蒙古/包
                finals[0], finals[1] = _tone(finals[0], "2"), _tone(finals[1], "2")
            elif len(parts[0]) == 1:  # 纸/老虎
                finals[1] = _tone(finals[1], "2")
        else:
            head, tail = finals[: len(parts[0])], finals[len(parts[0]) :]
            if len(head) == 2 and _all_third(head):  # 所有/人
                head[0] = _tone(head[0], "2")
            if len(tail) == 2 and _all_third(tail):
                tail[0] = _tone(tail[0], "2")
            elif tail and not _all_third(tail) and tail[0][-1] == "3" and head[-1][-1] == "3":  # 好/喜欢
                head[-1] = _tone(head[-1], "2")
            finals = head + tail
    elif len(word) == 4:  # idioms: two halves of two
        for k in (0, 2):
            if _all_third(finals[k : k + 2]):
                finals[k] = _tone(finals[k], "2")
    return finals


def apply(word: str, pos: str, finals: list[str]) -> list[str]:
    """All tone rules for one (merged) jieba word."""
    finals = bu_sandhi(word, finals)
    finals = yi_sandhi(word, finals)
    finals = neutral_sandhi(word, pos, finals)
    return third_sandhi(word, finals)


# -- merging jieba words -------------------------------------------------------------------------
Seg = list[list[str]]  # [[word, pos], ...]


def _merge_bu(seg: Seg) -> Seg:
    out, prev = [], ""
    for word, pos in seg:
        if prev == "不":
            word = "不" + word
        if word != "不":
            out.append([word, pos])
        prev = word
    if prev == "不":
        out.append(["不", "d"])
    return out


def _merge_yi(seg: Seg) -> Seg:
    out, i = [], 0
    while i < len(seg):  # 听 一 听 -> 听一听
        word, pos = seg[i]
        if 0 < i < len(seg) - 1 and word == "一":
            left, right = out[-1], seg[i + 1]
            if left[0] == right[0] and left[1] == "v" and right[1] == "v":
                out[-1] = [left[0] + "一" + right[0], left[1]]
                i += 2
                continue
        out.append([word, pos])
        i += 1
    merged: Seg = []
    for word, pos in out:  # a lone 一 takes the next word
        if merged and merged[-1][0] == "一":
            merged[-1][0] += word
        else:
            merged.append([word, pos])
    return merged


def _is_reduplication(word: str) -> bool:
    return len(word) == 2 and word[0] == word[1]


def _merge_third_tones(seg: Seg, whole_words: bool) -> Seg:
    finals = [_finals(word) for word, _ in seg]
    out: Seg = []
    merged_prev = False
    for i, (word, pos) in enumerate(seg):
        if whole_words:
            both_third = i > 0 and _all_third(finals[i - 1]) and _all_third(finals[i])
        else:
            both_third = i > 0 and _all_third(finals[i - 1][-1:] or ("",)) and _all_third(finals[i][:1] or ("",))
        if both_third and not merged_prev and not _is_reduplication(seg[i - 1][0]) and len(seg[i - 1][0]) + len(word) <= 3:
            out[-1][0] += word
            merged_prev = True
        else:
            out.append([word, pos])
            merged_prev = False
    return out


def premerge(seg: list[tuple[str, str]]) -> Seg:
    """Re-merge jieba's (word, pos) list for the rules above."""
    out = _merge_bu([[w, p] for w, p in seg])
    out = _merge_yi(out)
    reduplicated: Seg = []
    for word, pos in out:
        if reduplicated and word == reduplicated[-1][0]:
            reduplicated[-1][0] += word
        else:
            reduplicated.append([word, pos])
    out = _merge_third_tones(reduplicated, whole_words=True)
    out = _merge_third_tones(out, whole_words=False)
    merged: Seg = []
    for word, pos in out:
        if merged and word == "儿" and merged[-1][0] != "#":
            merged[-1][0] += word
        else:
            merged.append([word, pos])
    return merged
