"""Transcripts for enrollment utterances: the uploader's `transcripts.jsonl`, else speech recognition.

`transcripts.jsonl` rows are `{"file", "text", "language"}`; a row may give only `file` and
`language` (the text is then recognised). A malformed line is reported and skipped; the rest is
used. A file's language is its row's, else the language most rows declare, else
`QCConfig.default_language`. A file with no transcript in a language the ASR has no model for is
dropped with that reason: text is never guessed.

A given transcript describes a whole file, so it is used when the file is one utterance; a file
cut into several utterances is transcribed per utterance (the given text cannot be aligned to the
cuts without a recogniser).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

import numpy as np

from voicefleet.tasks.measure.asr import ASR, NoASRModel

TRANSCRIPTS_FILE = "transcripts.jsonl"


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

    def __init__(self, model_path: str | None = None, max_no_speech_prob: float = 0.6):
        self.asr = ASR(model_path=model_path)
        self.max_no_speech_prob = max_no_speech_prob
        self.calls = 0  # ASR runs, for the report and the benchmark

    def supports(self, language: str) -> bool:
        return self.asr.supports(language)

    def recognise(self, wav16k: np.ndarray, language: str, label: str) -> str:
        """(T,) float32 at 16 kHz -> text. Raises NoTranscript with the reason."""
        try:
            self.calls += 1
            t = self.asr.transcribe(wav16k, 16000, language)
        except NoASRModel as e:
            raise NoTranscript(f"no transcript for {label} and {e}") from None
        if not t.text or t.no_speech_prob > self.max_no_speech_prob:
            raise NoTranscript(f"no speech recognised in {label} (no-speech probability "
                               f"{t.no_speech_prob:.2f} > {self.max_no_speech_prob:g}, text {t.text!r})")
        return t.text
