"""The text frontend facade: text + language code -> v2 phone ids and per-phone BERT features.

    fe = TextFrontend(bert_dir="/models/chinese-roberta-wwm-ext-large")   # or None: zero BERT features
    for sentence in fe.split_sentences(long_text, method="cut5", language="zh"):
        ids, bert, norm_text = fe.features(sentence, "zh")   # (T,) int64, (1024, T) float32, str

Like upstream's TTS pipeline, a text is split into language runs (``language.segment``), each run is
cleaned on its own (normalisation + G2P + the "<4 phones -> leading ','" English rule), BERT features
are computed for Chinese runs (zeros elsewhere, Cantonese included, as upstream) and everything is
concatenated; a result of fewer than 6 phones is redone once with a leading "." (upstream's guard for
very short inputs).

Run languages: "en" (english.py), "zh" (chinese.py), "ja" (japanese.py: pyopenjtalk),
"ko" (korean.py: g2pk2 + MeCab) and "yue" (cantonese.py: ToJyutping). The Japanese, Korean and
Cantonese modules are imported on first use.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from importlib import import_module

import torch

from . import chinese, english
from .bert import FEATURE_DIM, BertFeaturizer
from .cut import split_text
from .language import check_language, segment
from .symbols import PUNCTUATION, UNK, cleaned_text_to_sequence, symbol_to_id

log = logging.getLogger(__name__)
# Upstream's pause controls in Chinese text: every "," pause of such a line becomes this symbol.
SPECIAL_PAUSES = {"￥": "SP2", "^": "SP3"}
MIN_PHONES = 6
_MODULES = {"ja": ".japanese", "ko": ".korean", "yue": ".cantonese"}


class EmptyText(ValueError):
    """The text has nothing to speak (empty, or no phones besides punctuation)."""


@dataclass
class CleanSegment:
    text: str
    lang: str  # "zh" | "en" | "ja" | "ko" | "yue"
    norm_text: str
    phones: list[str]
    word2ph: list[int] | None  # phones per character of norm_text (Chinese and Cantonese only)


@dataclass
class PhoneSequence:
    phones: list[str]
    ids: list[int]
    word2ph: list[int] | None  # per character of norm_text; None unless every segment has one (zh, yue)
    norm_text: str
    segments: list[CleanSegment] = field(default_factory=list)


class Features(tuple):
    """``(ids, bert, norm_text)``; ``bert_missing`` is True when Chinese text got zero BERT features
    because no BERT model is configured (callers may want to log it)."""

    def __new__(cls, ids: torch.Tensor, bert: torch.Tensor, norm_text: str, bert_missing: bool):
        self = super().__new__(cls, (ids, bert, norm_text))
        self.bert_missing = bert_missing
        return self

    def __getnewargs__(self):  # keeps pickling (e.g. between Ray workers) working
        return (*self, self.bert_missing)

    ids = property(lambda self: self[0])
    bert = property(lambda self: self[1])
    norm_text = property(lambda self: self[2])


def clean_text(text: str, lang: str) -> tuple[list[str], list[int] | None, str]:
    """Upstream's ``clean_text`` for one language run: (phones, word2ph or None, normalised text)."""
    if lang == "zh":
        mark = next((m for m in SPECIAL_PAUSES if m in text), None)
        pause = SPECIAL_PAUSES.get(mark)
        if mark:
            text = text.replace(mark, ",")
        norm_text = chinese.text_normalize(text)
        phones, word2ph = chinese.g2p(norm_text)
        if pause:
            phones = [pause if p == "," else p for p in phones]
    elif lang == "en":
        norm_text = english.text_normalize(text)
        phones, word2ph = english.g2p(norm_text), None
    elif lang in _MODULES:
        module = import_module(_MODULES[lang], __package__)
        norm_text = module.text_normalize(text)
        phones, word2ph = module.g2p(norm_text) if lang == "yue" else (module.g2p(norm_text), None)
    else:
        raise ValueError(f"no cleaner for language run {lang!r}")
    return [p if p in symbol_to_id else UNK for p in phones], word2ph, norm_text


class TextFrontend:
    """Text -> phones, ids and BERT features for the v2 GPT/SoVITS models.

    ``bert_dir``: a local HuggingFace masked-LM directory (chinese-roberta-wwm-ext-large); ``None`` gives
    zero BERT features (``Features.bert_missing`` is then True for text with Chinese).
    """

    def __init__(self, bert_dir: str | None = None, device: str | torch.device = "cpu"):
        self.bert = BertFeaturizer(bert_dir, device) if bert_dir else None
        self._warned = False

    @staticmethod
    def split_sentences(text: str, method: str = "cut5", language: str = "zh") -> list[str]:
        """Cut long text into synthesis pieces (cut0..cut5, see ``cut``); "en" pieces end in "."."""
        return split_text(text, method, language)

    def _clean(self, text: str, language: str) -> list[CleanSegment]:
        text = re.sub(" {2,}", " ", text)
        out = []
        for seg in segment(text, language):
            phones, word2ph, norm_text = clean_text(seg.text, seg.lang)
            if phones:
                out.append(CleanSegment(seg.text, seg.lang, norm_text, phones, word2ph))
        return out

    def _segments(self, text: str, language: str) -> list[CleanSegment]:
        check_language(language)
        if not text or not text.strip():
            raise EmptyText(f"nothing to speak in {text!r}")
        segments = self._clean(text, language)
        if sum(len(s.phones) for s in segments) < MIN_PHONES:
            segments = self._clean("." + text, language)
        if not any(p not in PUNCTUATION for s in segments for p in s.phones):
            raise EmptyText(f"no phones to speak in {text!r}")
        return segments

    def phonemize(self, text: str, language: str) -> PhoneSequence:
        """Phones and ids of ``text`` read in ``language`` (a code of ``language.LANGUAGES``)."""
        segments = self._segments(text, language)
        phones = [p for s in segments for p in s.phones]
        per_char = all(s.word2ph is not None for s in segments)
        return PhoneSequence(
            phones=phones,
            ids=cleaned_text_to_sequence(phones),
            word2ph=[n for s in segments for n in s.word2ph] if per_char else None,
            norm_text="".join(s.norm_text for s in segments),
            segments=segments,
        )

    def features(self, text: str, language: str) -> Features:
        """``(ids (T,) int64, bert (1024, T) float32, norm_text)`` as the GPT stage consumes them."""
        segments = self._segments(text, language)
        ids, feats, missing = [], [], False
        dim = self.bert.hidden_size if self.bert is not None else FEATURE_DIM
        for s in segments:
            ids.extend(cleaned_text_to_sequence(s.phones))
            if s.lang == "zh" and self.bert is not None:
                feats.append(self.bert(s.norm_text, s.word2ph))
            else:
                missing |= s.lang == "zh"
                feats.append(torch.zeros(dim, len(s.phones), dtype=torch.float32))
        if missing and not self._warned:
            log.warning("no BERT model configured: Chinese text gets zero BERT features")
            self._warned = True
        return Features(torch.tensor(ids, dtype=torch.long), torch.cat(feats, dim=1), "".join(s.norm_text for s in segments), missing)


__all__ = ["CleanSegment", "EmptyText", "Features", "PhoneSequence", "TextFrontend", "clean_text"]
