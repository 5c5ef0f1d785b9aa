"""The Japanese frontend (voicefleet.model.text.japanese) against the official v2 frontend.

Every sentence of the official table (upstream's ``clean_text(text, "ja", "v2")`` with pyopenjtalk 0.4.1
and the open_jtalk_dic_utf_8-1.11 dictionary) must give the same normalised text, phones and ids. The
extra cases below are upstream's output for inputs the table does not cover (comma-separated numbers,
ASCII "%", "!?" runs, full-width and half-width letters, "……", a line break).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from voicefleet.model.text import TextFrontend, clean_text, cleaned_text_to_sequence
from voicefleet.model.text.language import segment

OFFICIAL_JA = Path(__file__).parents[2] / "shared/reference/frontend/ja_official.json"
OFFICIAL = json.loads(OFFICIAL_JA.read_text("utf-8")) if OFFICIAL_JA.exists() else {"cases": [], "environment": {}}

# Upstream's output (text -> (normalised text, phones)) for inputs the table does not cover.
UPSTREAM_EXTRA = {
    "1,500円です。": ("1,500円です。", "i [ ch i , g o [ hy a k u ] e N d e s u ."),
    "価格は5%オフ！": ("価格は5%オフ！", "k a [ k a k u w a UNK g o UNK o ] f u !"),
    "えっ！？本当に？？": ("えっ！？本当に？？", "e ] cl ! ? h o [ N t o o n i ? ?"),
    "ＡＢＣ社の１０人が来た。": (
        "ＡＢＣ社の１０人が来た。",
        "e [ e b i i sh i i ] sh a n o UNK j u [ u ] n i N g a UNK k i ] t a .",
    ),
    "ｶﾀｶﾅの半角テスト。": ("ｶﾀｶﾅの半角テスト。", "k a [ t a k a ] n a n o UNK h a [ N k a k u t e ] s u t o ."),
    "今日は…疲れた……": ("今日は…疲れた…", "ky o ] o w a … ts u [ k a r e ] t a …"),
    "改行\n次の行": ("改行\n次の行", "k a [ i gy o o . ts u [ g i ] n o UNK k u [ d a r i"),
}


def test_official_table_is_there():
    assert len(OFFICIAL["cases"]) >= 10, f"missing {OFFICIAL_JA}"


def test_dictionary_ships_in_the_wheel():
    """The OpenJTalk dictionary is the package's own (no download), byte-identical to upstream's."""
    import pyopenjtalk

    sys_dic = Path(pyopenjtalk.OPEN_JTALK_DICT_DIR.decode()) / "sys.dic"
    assert sys_dic.parent.name == OFFICIAL["environment"]["openjtalk_dictionary"]["dir_name"]
    assert hashlib.md5(sys_dic.read_bytes()).hexdigest() == OFFICIAL["environment"]["openjtalk_dictionary"]["sys.dic_md5"]


@pytest.mark.parametrize("case", OFFICIAL["cases"], ids=[c["text"][:20] for c in OFFICIAL["cases"]])
def test_japanese_official_table(case):
    phones, word2ph, norm = clean_text(case["text"], "ja")
    assert norm == case["normalized"]
    assert phones == case["phones"]
    assert word2ph is None and case["word2ph"] is None
    assert cleaned_text_to_sequence(phones) == case["ids"]


@pytest.mark.parametrize("text", list(UPSTREAM_EXTRA))
def test_japanese_matches_upstream_beyond_the_table(text):
    phones, _, norm = clean_text(text, "ja")
    assert (norm, " ".join(phones)) == UPSTREAM_EXTRA[text]


def test_japanese_with_english_is_split_by_script():
    text = "Hello、こんにちは。今日もNiCe天気ですね！"
    assert [(s.text, s.lang) for s in segment(text, "ja")] == [
        ("Hello、", "en"), ("こんにちは。今日も", "ja"), ("NiCe", "en"), ("天気ですね！", "ja"),
    ]
    # digits go with their neighbours ("ja"), or always Japanese ("all_ja"); a unit stays with its number
    assert [s.lang for s in segment("会議は2024年に", "ja")] == ["ja"]
    assert [(s.text, s.lang) for s in segment("Version 2は", "all_ja")] == [("Version ", "en"), ("2は", "ja")]
    assert [(s.text, s.lang) for s in segment("100km走った。", "ja")] == [("100km走った。", "ja")]


def test_auto_reads_kanji_of_a_kana_sentence_as_japanese():
    segs = [(s.text, s.lang) for s in segment("ねえ、知ってる？最近、天文学を勉強してる。我喜欢你。", "auto")]
    assert segs == [("ねえ、知ってる？最近、天文学を勉強してる。", "ja"), ("我喜欢你。", "zh")]


def test_japanese_features_have_zero_bert_and_the_short_text_guard():
    fe = TextFrontend()
    ids, bert, norm = fe.features("はい", "ja")  # 4 phones: redone with a leading "." as upstream
    assert norm == ".はい" and ids.tolist() == cleaned_text_to_sequence([".", "h", "a", "]", "i"])
    assert bert.shape == (1024, 5) and not bert.any() and not fe.features("はい", "ja").bert_missing
    seq = fe.phonemize("Hello、こんにちは。", "ja")
    assert [s.lang for s in seq.segments] == ["en", "ja"] and seq.word2ph is None
    assert " ".join(seq.phones) == "HH AH0 L OW1 , k o [ N n i ch i w a ."
    assert isinstance(ids, torch.Tensor)
