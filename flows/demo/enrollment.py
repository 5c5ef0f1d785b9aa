"""The demo's enrollment set: takes, transcripts, consent clip and consent.json per demo voice.

Each speaker folder follows the enrollment contract (design.md, Contracts)::

    <root>/<speaker_id>/take01.wav, take02.flac, ...   2-6 s each, the voice's native rate
                        transcripts.jsonl             {"file", "text", "language"} per take
                        consent.json                  valid for tasks/safety/consent.py
                        consent.wav                   the speaker saying the consent phrase

The consent clip is not listed in transcripts.jsonl and is not training data; enrollment finds it
through consent.json.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from voicefleet.tasks.measure.audio import resample, write_audio
from voicefleet.tasks.safety.consent import CONSENT_FILE, Consent, ConsentScope

from .sentences import EN_ENROLL
from .voices import DemoVoice, Language, LanguageMode, demo_speakers, load_engine

__all__ = ["EN_ENROLL", "JA_ENROLL", "build_demo_enrollment", "consent_phrase"]

log = logging.getLogger(__name__)

MIN_CLIP_S = 2.0
MAX_CLIP_S = 6.0
_LEAD_S = 0.30  # silence before speech, as in a real take
_TAIL_S = 0.40
_MAX_SPEECH_S = MAX_CLIP_S - _LEAD_S - _TAIL_S


# ----------------------------------------------------------------------------------------------
# what the speakers say


# (text, kana reading as pronounced: particles は/を/へ as ワ/オ/エ, long vowels as ー)
JA_ENROLL = (
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
    return list(JA_ENROLL) if language == "ja" else [(t, None) for t in EN_ENROLL]


def consent_phrase(voice: DemoVoice, language: Language) -> tuple[str, str | None]:
    """The consent phrase as (text, kana reading or None)."""
    if language == "ja":
        return (
            f"私、{voice.name_ja}は、自分の声の録音から合成音声を作ることに同意します。",
            f"ワタシ、{voice.name_kana} ワ、ジブン ノ コエ ノ ロクオン カラ ゴーセー オンセー オ ツクル コト ニ ドーイ シマス。",
        )
    return f"I, {voice.full_name}, agree that voicefleet may train a synthetic voice from my recordings.", None



def _trim(audio: np.ndarray, rel_threshold: float = 0.02) -> np.ndarray:
    """Cut leading/trailing samples quieter than ``rel_threshold`` of the peak."""
    loud = np.flatnonzero(np.abs(audio) > rel_threshold * max(float(np.abs(audio).max()), 1e-9))
    return audio[loud[0] : loud[-1] + 1] if loud.size else audio


def _render_take(
    voice: DemoVoice, text: str, reading: str | None, language: Language, rng: np.random.Generator
) -> tuple[np.ndarray, int] | None:
    """Speak one line as a recorded take (padding, level, noise floor); None if it can't fit 2-6 s."""
    engine = load_engine(voice.engine)
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

    phrase, reading = consent_phrase(voice, language)
    engine = load_engine(voice.engine)
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


