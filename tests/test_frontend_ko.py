"""The Korean frontend (voicefleet.model.text.korean) against the official v2 frontend.

Every sentence of the official table (upstream's ``clean_text(text, "ko", "v2")`` with g2pk2 0.0.3,
python-mecab-ko 1.3.7 + mecab-ko-dic, jamo) must give the same normalised text, phones and ids; the
extra cases are upstream's output for what the table does not cover (Latin letters, dates, native
numerals before a counter, full-width marks, quotes, "%", bare jamo, upstream's "-을 ㄹ" fix).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from voicefleet.model.text import TextFrontend, clean_text, cleaned_text_to_sequence
from voicefleet.model.text.language import segment

OFFICIAL_KO = Path(__file__).parents[2] / "shared/reference/frontend/ko_official.json"
OFFICIAL = json.loads(OFFICIAL_KO.read_text("utf-8"))["cases"] if OFFICIAL_KO.exists() else []

# Upstream's phones for inputs the table does not cover (the normalised text is the input).
UPSTREAM_EXTRA = {
    "나는 KT에서 일해요.": "ㄴ ㅏ ㄴ ㅡ ㄴ 空 ㅋ ㅔ ㅇ ㅣ ㅌ ㅣ ㅇ ㅔ ㅅ ㅓ 空 ㅇ ㅣ ㄹ ㅎ ㅐ ㅇ ㅣ ㅗ .",
    "그는 2020년 3월 5일에 왔다.": "ㄱ ㅡ ㄴ ㅡ ㄴ 空 ㅇ ㅣ ㅊ ㅓ ㄴ ㅣ ㅅ ㅣ ㅁ ㄴ ㅣ ㅓ ㄴ 空 ㅅ ㅏ ㅁ ㅜ ㅓ ㄹ 空 ㅇ ㅗ ㅇ ㅣ ㄹ ㅔ 空 "
                                 "ㅇ ㅗ ㅏ ㄷ ㄸ ㅏ .",
    "사람 20명이 왔어요.": "ㅅ ㅏ ㄹ ㅏ ㅁ 空 ㅇ ㅣ ㅅ ㅣ ㅁ ㅁ ㅣ ㅓ ㅇ ㅇ ㅣ 空 ㅇ ㅗ ㅏ ㅆ ㅓ ㅇ ㅣ ㅗ .",
    "안녕하세요？ 반가워요！": "ㅇ ㅏ ㄴ ㄴ ㅣ ㅓ ㅇ ㅎ ㅏ ㅅ ㅔ ㅇ ㅣ ㅗ ? 空 ㅂ ㅏ ㄴ ㄱ ㅏ ㅇ ㅜ ㅓ ㅇ ㅣ ㅗ !",
    '"좋아요"라고 말했다.': "停 ㅈ ㅗ ㅇ ㅏ ㅇ ㅣ ㅗ 停 ㄹ ㅏ ㄱ ㅗ 空 ㅁ ㅏ ㄹ ㅎ ㅐ ㄷ ㄸ ㅏ .",
    "100% 확실해요.": "ㅂ ㅐ ㄱ ㅍ ㅓ ㅅ ㅔ ㄴ ㅌ ㅡ 空 ㅎ ㅗ ㅏ ㄱ ㅆ ㅣ ㄹ ㅎ ㅐ ㅇ ㅣ ㅗ .",
    "ㅋㅋㅋ 웃겨": "ㅋ ㅋ ㅋ 空 ㅇ ㅜ ㄷ ㄲ ㅣ ㅓ .",
    "줄을 려고": "ㅈ ㅜ ㄹ ㅡ ㄹ 空 ㄴ ㅣ ㅓ ㄱ ㅗ .",
}


def test_official_table_is_there():
    assert len(OFFICIAL) >= 10, f"missing {OFFICIAL_KO}"


@pytest.mark.parametrize("case", OFFICIAL, ids=[c["text"][:20] for c in OFFICIAL])
def test_korean_official_table(case):
    phones, word2ph, norm = clean_text(case["text"], "ko")
    assert norm == case["normalized"]
    assert phones == case["phones"]
    assert word2ph is None and case["word2ph"] is None
    assert cleaned_text_to_sequence(phones) == case["ids"]


@pytest.mark.parametrize("text", list(UPSTREAM_EXTRA))
def test_korean_matches_upstream_beyond_the_table(text):
    phones, _, norm = clean_text(text, "ko")
    assert norm == text and " ".join(phones) == UPSTREAM_EXTRA[text]


def test_korean_needs_no_download(monkeypatch):
    """g2pk2's NLTK cmudict is neither fetched nor needed (it is not installed); MeCab's dictionary is the
    wheel's own. g2pk2 is imported afresh with NLTK's downloader made to fail."""
    import nltk

    from voicefleet.model.text import korean

    def no_download(*args, **kwargs):
        raise AssertionError(f"download attempted: {args}")

    monkeypatch.setattr(nltk, "download", no_download)
    for name in [m for m in sys.modules if m == "g2pk2" or m.startswith("g2pk2.")]:
        monkeypatch.delitem(sys.modules, name)
    korean._g2pk2.cache_clear()
    try:
        assert "".join(korean.g2p("밖에 눈이 와요")) == "ㅂㅏㄲㅔ空ㄴㅜㄴㅣ空ㅇㅗㅏㅇㅣㅗ."
    finally:
        korean._g2pk2.cache_clear()


def test_korean_with_english_is_split_by_script():
    assert [(s.text, s.lang) for s in segment("저는 Apple 제품을 좋아해요.", "ko")] == [
        ("저는 ", "ko"), ("Apple ", "en"), ("제품을 좋아해요.", "ko"),
    ]
    assert [(s.text, s.lang) for s in segment("안녕 Hello", "auto")] == [("안녕 ", "ko"), ("Hello", "en")]
    seq = TextFrontend().phonemize("오늘 iPhone 샀어요.", "ko")
    assert [s.lang for s in seq.segments] == ["ko", "en", "ko"] and seq.word2ph is None
