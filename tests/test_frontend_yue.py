"""The Cantonese frontend (voicefleet.model.text.cantonese) against the official v2 frontend.

Every sentence of the official table (upstream's ``clean_text(text, "yue", "v2")`` with ToJyutping 3.2.0
and upstream's Mandarin normaliser) must give the same normalised text, phones, word2ph and ids; the
extra cases are upstream's output for what the table does not cover, quirks included (unit letters,
time ranges, "1,299", repeated marks kept, "～", 嗯/呣, quotes dropped).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from voicefleet.model.text import TextFrontend, clean_text, cleaned_text_to_sequence
from voicefleet.model.text.cantonese import g2p, syllable_phones
from voicefleet.model.text.language import segment

OFFICIAL_YUE = Path(__file__).parents[2] / "shared/reference/frontend/yue_official.json"
OFFICIAL = json.loads(OFFICIAL_YUE.read_text("utf-8"))["cases"] if OFFICIAL_YUE.exists() else []

# Upstream's output (text -> (normalised text, phones)) for inputs the table does not cover.
UPSTREAM_EXTRA = {
    "開會時間係9:00-10:30。": (
        "开会时间系九点至十点三十分.",
        "Yh Yoi1 Yw Yui2 Ys Yi4 Yg Yaan3 Yh Yai6 Yg Yau2 Yd Yim2 Yz Yi3 Ys Yap6 Yd Yim2 Ys Yaam1 Ys Yap6 Yf Yan1 .",
    ),
    "買咗3kg米同2mm嘅線": (
        "买咗三千克米同两米米嘅线",
        "Ym Yaai5 Yz Yo2 Ys Yaam1 Yc Yin1 Yh Yak1 Ym Yai5 Yt Yung4 Yl Yoeng5 Ym Yai5 Ym Yai5 Yg Ye3 Ys Yin3",
    ),
    "價錢係1,299蚊。": ("价钱系一,二九九蚊.", "Yg Yaa3 Yc Yin4 Yh Yai6 Yj Yat1 , Yj Yi6 Yg Yau2 Yg Yau2 Ym Yan1 ."),
    "你好嗎？我好好！多謝。。。": (
        "你好吗?我好好!多谢...",
        "Yn Yei5 Yh You2 Ym Yaa1 ? Yng Yo5 Yh You2 Yh You2 ! Yd Yo1 Yz Ye6 . . .",
    ),
    "唔該曬～～": ("唔该晒--", "Ym Ym4 Yg Yoi1 Ys Yaai3 - -"),
    "嗯嗯，呣": ("嗯嗯,呣", "Yng Yg6 Yng Yg6 , Ym Ym2"),
    "「你好」佢話。": ("你好佢话.", "Yn Yei5 Yh You2 Yk Yeoi5 Yw Yaa6 ."),
}


def test_official_table_is_there():
    assert len(OFFICIAL) >= 10, f"missing {OFFICIAL_YUE}"


@pytest.mark.parametrize("case", OFFICIAL, ids=[c["text"][:20] for c in OFFICIAL])
def test_cantonese_official_table(case):
    phones, word2ph, norm = clean_text(case["text"], "yue")
    assert norm == case["normalized"]
    assert phones == case["phones"]
    assert word2ph == case["word2ph"]
    assert cleaned_text_to_sequence(phones) == case["ids"]


@pytest.mark.parametrize("text", list(UPSTREAM_EXTRA))
def test_cantonese_matches_upstream_beyond_the_table(text):
    phones, word2ph, norm = clean_text(text, "yue")
    assert (norm, " ".join(phones)) == UPSTREAM_EXTRA[text]
    assert len(word2ph) == len(norm) and sum(word2ph) == len(phones)


def test_syllables_are_cut_at_upstreams_first_onset():
    assert syllable_phones("gam1") == ["Yg", "Yam1"]
    assert syllable_phones("aa3") == ["Yaa", "Ya3"]  # no initial: cut after a vowel "onset"
    assert syllable_phones("aai3") == ["Yaa", "Yi3"]  # "aa" is tried before "aai"
    assert syllable_phones("ng5") == ["Yng", "Yg5"] and syllable_phones("m4") == ["Ym", "Ym4"]
    with pytest.raises(ValueError, match="not a Jyutping syllable"):
        syllable_phones("gam")


def test_mandarin_normaliser_keeps_its_own_fixes():
    """Only Cantonese reproduces upstream's unit and time-range quirks; Mandarin keeps ours."""
    assert clean_text("買咗2mm嘅線", "zh")[2] != clean_text("買咗2mm嘅線", "yue")[2]
    assert clean_text("2mm", "zh")[2] == "两毫米"


def test_cantonese_with_english_and_features():
    assert [(s.text, s.lang) for s in segment("我鍾意用iPhone 15，好正。", "yue")] == [
        ("我鍾意用", "yue"), ("iPhone 15，", "en"), ("好正。", "yue"),
    ]
    assert [s.lang for s in segment("今日係2024年", "all_yue")] == ["yue"]
    assert [s.lang for s in segment("今日好熱 so hot", "auto_yue")] == ["yue", "en"]
    fe = TextFrontend()
    seq = fe.phonemize("你好，今日天氣幾好。", "yue")
    assert seq.word2ph == [2, 2, 1, 2, 2, 2, 2, 2, 2, 1]
    feats = fe.features("你好，今日天氣幾好。", "yue")
    assert feats.bert.shape == (1024, len(seq.phones)) and not feats.bert.any() and not feats.bert_missing
    phones, word2ph = g2p("你好")
    assert phones == ["Yn", "Yei5", "Yh", "You2"] and word2ph == [2, 2]
