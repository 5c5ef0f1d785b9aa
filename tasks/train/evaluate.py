"""Evaluation of a new voice version, and the gate that decides whether it may become current.

The new voice renders a fixed set of sentences (`EVAL_SENTENCES`, seed 0); each clip is stored
with the run and measured:

- speaker similarity (tasks/measure/speaker.py, GE2E cosine) of the clip to the centroid of the speaker's
  enrollment clips; a clip with too little voiced audio to embed scores 0 and says why;
- for English, word error rate (tasks/measure/asr.py, Whisper tiny.en) of its transcript against the text.

The version's figures are the means over the sentences. `Gate` compares them with thresholds:
mode "enforce" keeps a version below the gate from becoming current (it is still registered,
with the reasons), "report" registers it as current and records the verdict, "off" skips the
evaluation. The default `min_similarity` is measured (benchmarks/speaker_checks_calibration.py --human,
section 2: a 2.5 s clip, about an evaluation sentence's length, against the centroid of the rest of a
voice's speech; the gate's figure is the mean of 3 such clips): real speech of the same woman (the
pyannote call) 0.856-0.918 per clip, 0.877-0.895 as a mean of 3; the other woman of the call 0.764-0.776
as a mean of 3 (per clip up to 0.819); pip TTS and flite voices 0.847-0.961 for the same voice, other
voices up to 0.861 (Kokoro's styles of one model) as a mean of 3. The old 0.75 passed the call's other
woman; 0.80 rejects her (margin 0.024) and leaves 0.077 under genuine speech for what a clone loses.
How close a clone fine-tuned from the pretrained base comes has not been measured here (no run on
the pretrained weights yet): recalibrate with real clones.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from voicefleet.tasks.measure.asr import ASR, wer
from voicefleet.tasks.measure.speaker import SpeakerEmbeddingError, embed, mean_embedding, similarity

EVAL_SENTENCES = {
    "en": ["This is my new voice, rendered by voicefleet.",
           "The quick brown fox jumps over the lazy dog.",
           "Please call me back when you have a minute."],
    "zh": ["这是我的新声音。", "今天天气很好，我们去公园散步吧。"],
    "ja": ["これは私の新しい声です。", "今日はいい天気なので、公園を散歩しましょう。"],
    "ko": ["이것은 저의 새로운 목소리입니다.", "오늘은 날씨가 좋아서 공원에 산책하러 가요."],
    "yue": ["呢個係我嘅新聲音。", "今日天氣好好，我哋去公園行下啦。"],
}


class Gate(BaseModel):
    """Quality bar a new version must pass to become current."""

    mode: Literal["enforce", "report", "off"] = "enforce"
    min_similarity: float = Field(0.80, ge=-1.0, le=1.0)  # measured: see the module docstring
    max_wer: float = Field(0.35, ge=0.0)  # English only (no ASR model for other languages)

    def judge(self, figures: dict) -> tuple[bool, list[str]]:
        """(passed, reasons it failed) for an evaluation's figures."""
        reasons = []
        sim = figures.get("similarity")
        if sim is None or sim < self.min_similarity:
            reasons.append(f"speaker similarity {sim if sim is None else round(sim, 3)} < {self.min_similarity:g}")
        w = figures.get("wer")
        if w is not None and w > self.max_wer:
            reasons.append(f"word error rate {w:.2f} > {self.max_wer:g}")
        return not reasons, reasons


def eval_language(language: str) -> str:
    """The sentences' language for a voice's reference language: "all_ja" -> "ja", "auto_yue" -> "yue",
    "auto" and anything without sentences -> "en"."""
    language = {"auto_yue": "yue"}.get(language, language.removeprefix("all_"))
    return language if language in EVAL_SENTENCES else "en"


def speaker_centroid(clips: list[np.ndarray], sample_rate: int) -> np.ndarray | None:
    """Centroid of the enrollment clips that can be embedded (None when none can)."""
    embs = []
    for wav in clips:
        try:
            embs.append(embed(wav, sample_rate))
        except SpeakerEmbeddingError:
            continue
    return mean_embedding(embs) if embs else None


def measure(clips: list[tuple[str, np.ndarray]], sample_rate: int, language: str,
            centroid: np.ndarray | None) -> dict:
    """Figures for rendered `clips` [(text, wav)]: per sentence and their means."""
    asr = ASR()
    rows = []
    for text, wav in clips:
        row: dict = {"text": text, "seconds": round(len(wav) / sample_rate, 2)}
        if centroid is None:
            row["similarity"], row["note"] = 0.0, "no enrollment clip could be embedded"
        else:
            try:
                row["similarity"] = round(similarity(embed(wav, sample_rate), centroid), 4)
            except SpeakerEmbeddingError as e:
                row["similarity"], row["note"] = 0.0, str(e)
        if asr.supports(language):
            heard = asr.transcribe(wav, sample_rate, language).text
            row["transcript"], row["wer"] = heard, round(wer(text, heard), 4)
        rows.append(row)
    sims = [r["similarity"] for r in rows]
    wers = [r["wer"] for r in rows if "wer" in r]
    return {"language": language, "sentences": rows,
            "similarity": round(float(np.mean(sims)), 4) if sims else None,
            "wer": round(float(np.mean(wers)), 4) if wers else None}
