"""Transcripts for enrollment utterances: the uploader's `transcripts.jsonl`, else speech recognition.

`transcripts.jsonl` rows are `{"file", "text", "language"}`; a row may give only `file` and
`language` (the text is then recognised). A malformed line is reported and skipped; the rest is
used. A file's language is its row's, else the language most rows declare, else
`QCConfig.default_language`. A file with no transcript in a language the ASR has no model for is
dropped with that reason: text is never guessed.

A given transcript describes a whole file: used as it is when the file is one utterance; a file cut
into several utterances gets its sentences aligned to the cuts (tasks/enroll/align.py), checked
against the recogniser where the language has one (`MAX_ALIGNED_WER`).

A recognised transcript is kept only when Whisper is confident: mean token log-probability at least
`MIN_AVG_LOGPROB` and no-speech probability at most `max_no_speech_prob`; else the utterance is
dropped with both figures. Measured with Whisper tiny.en on the demo voices (one sentence per clip):
clean English (piper joe) -0.30 to -0.42; the same with white noise at 5 dB SNR -0.75 (already
misheard); Japanese speech (Kokoro jf_alpha) read as English -1.04 to -1.36 (hallucinated "Thank you
for watching"); noise and a music bed give no text (-inf, no-speech 1.0).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

import numpy as np

from voicefleet.tasks.measure.asr import ASR, NoASRModel, Transcript, wer

from .speech_checks import QCConfig

TRANSCRIPTS_FILE = "transcripts.jsonl"
# the defaults of QCConfig's min_asr_logprob (between noisy English, -0.75, and hallucinated foreign speech, -1.04,
# see above) and max_aligned_wer (an aligned slice whose ASR words differ more is dropped; clean tiny.en <= ~0.15)
MIN_AVG_LOGPROB = QCConfig.model_fields["min_asr_logprob"].default
MAX_ALIGNED_WER = QCConfig.model_fields["max_aligned_wer"].default


@dataclass(frozen=True)
class GivenTranscript:
    text: str  # "" when the row only declares the language
    language: str


def parse_transcripts(raw: str) -> tuple[dict[str, GivenTranscript], list[str]]:
    """transcripts.jsonl text -> ({file name: transcript}, [problems with lines])."""
    rows: dict[str, GivenTranscript] = {}
    problems = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            name = str(row["file"]).strip()
            text = row.get("text") or ""
            language = str(row.get("language") or "").strip()
            if not name or not isinstance(text, str):
                raise ValueError("'file' must be a non-empty string and 'text' a string")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            problems.append(f"{TRANSCRIPTS_FILE} line {n} is malformed ({type(e).__name__}: {e}); line skipped")
            continue
        rows[name.rsplit("/", 1)[-1]] = GivenTranscript(text.strip(), language)
    return rows, problems


def speaker_language(given: dict[str, GivenTranscript], default: str) -> str:
    """The language most rows declare, else `default`."""
    langs = Counter(t.language for t in given.values() if t.language)
    return langs.most_common(1)[0][0] if langs else default


class NoTranscript(ValueError):
    """An utterance has no given transcript and cannot be recognised (no model, or no speech heard)."""


class Transcriber:
    """Text for one utterance: given, or recognised by Whisper (tasks/measure/asr.py) when the language has a model."""

    def __init__(self, model_path: str | None = None, max_no_speech_prob: float = 0.6,
                 min_avg_logprob: float = MIN_AVG_LOGPROB, max_aligned_wer: float = MAX_ALIGNED_WER):
        self.asr = ASR(model_path=model_path)
        self.max_no_speech_prob = max_no_speech_prob
        self.min_avg_logprob = min_avg_logprob
        self.max_aligned_wer = max_aligned_wer
        self.calls = 0  # ASR runs, for the report and the benchmark

    @classmethod
    def for_qc(cls, qc: QCConfig) -> "Transcriber":
        """The transcriber an enrollment's QC settings ask for (model, no-speech, confidence and alignment bounds)."""
        return cls(qc.asr_model, qc.max_no_speech_prob, qc.min_asr_logprob, qc.max_aligned_wer)

    def supports(self, language: str) -> bool:
        return self.asr.supports(language)

    def hear(self, wav16k: np.ndarray, language: str, label: str) -> Transcript:
        """(T,) float32 at 16 kHz -> Whisper's transcript, confidence included. NoTranscript without a model."""
        try:
            self.calls += 1
            return self.asr.transcribe(wav16k, 16000, language)
        except NoASRModel as e:
            raise NoTranscript(f"no transcript for {label} and {e}") from None

    def recognise(self, wav16k: np.ndarray, language: str, label: str) -> str:
        """(T,) float32 at 16 kHz -> text. Raises NoTranscript with the reason (no model, no speech,
        low confidence)."""
        t = self.hear(wav16k, language, label)
        if not t.text or t.no_speech_prob > self.max_no_speech_prob:
            raise NoTranscript(f"no speech recognised in {label} (no-speech probability "
                               f"{t.no_speech_prob:.2f} > {self.max_no_speech_prob:g}, text {t.text!r})")
        if t.avg_logprob < self.min_avg_logprob:
            raise NoTranscript(f"{label}: speech recognition not confident (mean log-probability {t.avg_logprob:.2f} "
                               f"< {self.min_avg_logprob:g}, text {t.text!r}; wrong language?); utterance dropped, "
                               f"give its text in {TRANSCRIPTS_FILE}")
        return t.text

    def check_aligned(self, wav16k: np.ndarray, text: str, language: str, label: str) -> str | None:
        """None when the recogniser hears `text` in the clip (WER <= `max_aligned_wer`), else the reason."""
        heard = self.hear(wav16k, language, label)
        errors = wer(text, heard.text)
        if errors <= self.max_aligned_wer:
            return None
        return (f"{label}: the transcript aligned to this slice ({text!r}) is not what speech recognition hears "
                f"({heard.text!r}, WER {errors:.2f} > {self.max_aligned_wer:g}); slice dropped")
