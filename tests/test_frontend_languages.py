"""Every language code of the frontend is usable end to end of the text side: the render plan accepts it,
and a new voice's evaluation sentences exist and phonemize in its language."""

from __future__ import annotations

import pytest

from voicefleet.model.text import LANGUAGES, TextFrontend
from voicefleet.model.text.language import segment
from voicefleet.tasks.train.evaluate import EVAL_SENTENCES, eval_language


@pytest.fixture(scope="module")
def frontend() -> TextFrontend:
    return TextFrontend()


@pytest.mark.parametrize("language", ["ja", "ko", "yue", "zh", "en"])
def test_evaluation_sentences_phonemize_in_their_language(frontend, language):
    for text in EVAL_SENTENCES[language]:
        seq = frontend.phonemize(text, language)
        assert {s.lang for s in seq.segments} == {language}
        assert "停" not in seq.phones  # Korean's mark for a character outside the table
        if language != "ja":  # Japanese accent-phrase boundaries are UNK, as upstream
            assert "UNK" not in seq.phones


def test_evaluation_language_of_every_code():
    assert {code: eval_language(code) for code in LANGUAGES} == {
        "en": "en", "zh": "zh", "all_zh": "zh", "ja": "ja", "all_ja": "ja", "ko": "ko", "all_ko": "ko",
        "yue": "yue", "all_yue": "yue", "auto": "en", "auto_yue": "yue",
    }


def test_auto_detects_each_script():
    text = "今天天气很好。今日はいい天気です。오늘 날씨가 좋아요. Nice day."
    assert [(s.text, s.lang) for s in segment(text, "auto")] == [
        ("今天天气很好。", "zh"), ("今日はいい天気です。", "ja"), ("오늘 날씨가 좋아요. ", "ko"), ("Nice day.", "en"),
    ]
    assert [s.lang for s in segment("今日天氣好好。Nice day.", "auto_yue")] == ["yue", "en"]
