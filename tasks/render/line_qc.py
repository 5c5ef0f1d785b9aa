"""Per-line quality control of rendered speech: is it the text, in the voice, whole and audible?

    LineQC(QCConfig, device=...).check_many([QCLine(voice_key, text, language, raw (T,), sr, truncated,
                                                    Processed), ...]) -> [QCResult(passed, reasons, metrics)]
    (one speaker-model pass per batch of lines, and on a GPU one batched ASR decode; `check` scores one)

Checks (thresholds in `QCConfig`, one place):
- intelligibility: word error rate of an ASR transcript against the text (tasks/measure/asr.py; English
  only: for other languages WER is not measured, recorded as None with the reason, never guessed);
- voice: cosine similarity of the line's speaker embedding to the voice's reference clip
  (tasks/measure/speaker.py; the reference is embedded once per voice per LineQC, i.e. per actor);
- truncation: a sentence hit the model's runaway-length guard (LineAudio.truncated);
- clipping: share of raw model samples at full scale;
- silence: share of the speech span that is silent, and a raw level too quiet to be speech;
- length: |achieved - target_seconds| beyond the post-processing tolerance.

Modes: "off" (nothing measured), "report" (measure and record, never retry or fail), "enforce"
(a failing line is rendered again with another seed, up to `retries` times, and fails if it never
passes), "auto" (enforce, except for voices fine-tuned from an untrained base model: their audio is
not speech and fails every check, so they are reported only).
"""
from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from voicefleet.tasks.measure.audio import rms_dbfs

from .postprocess import Processed, speech_bounds

QC_MODES = ("auto", "off", "report", "enforce")


class QCConfigError(ValueError):
    """A quality-control setting is out of range or unknown."""


@dataclass(frozen=True)
class QCConfig:
    mode: str = "auto"
    retries: int = 2  # extra renders (new seeds) of a line that fails, in enforce mode
    max_wer: float = 0.35  # Whisper tiny.en on clean TTS speech: 0.0-0.1
    min_similarity: float = 0.60  # GE2E cosine; same voice 0.92-0.95, distinct pip voices 0.43-0.91
    max_clipped_fraction: float = 0.001  # raw samples with |x| >= 0.999
    max_silent_fraction: float = 0.5  # 20 ms frames below `silence_dbfs` inside the speech span
    silence_dbfs: float = -50.0
    min_rms_dbfs: float = -45.0  # raw level of the whole line
    reject_truncated: bool = True
    asr_model: str | None = None  # faster-whisper model folder (default: Whisper tiny.en from its wheel)

    def __post_init__(self) -> None:
        if self.mode not in QC_MODES:
            raise QCConfigError(f"QC mode {self.mode!r} is not one of {', '.join(QC_MODES)}")
        if not 0 <= self.retries <= 10:
            raise QCConfigError(f"QC retries {self.retries} is outside 0..10")
        if not 0 <= self.max_wer <= 10:
            raise QCConfigError(f"max WER {self.max_wer} is outside 0..10")
        if not -1 <= self.min_similarity <= 1:
            raise QCConfigError(f"min speaker similarity {self.min_similarity} is outside -1..1")
        for name in ("max_clipped_fraction", "max_silent_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise QCConfigError(f"{name} {getattr(self, name)} is outside 0..1")
        if self.asr_model is not None and not Path(self.asr_model).is_dir():
            raise QCConfigError(f"ASR model folder {self.asr_model} does not exist")

    def mode_for(self, untrained: bool) -> str:
        """The mode a voice gets: "auto" enforces except for untrained-base voices (report)."""
        if self.mode == "auto":
            return "report" if untrained else "enforce"
        return self.mode

    @classmethod
    def from_file(cls, path: str, **overrides: Any) -> QCConfig:
        """Thresholds from a JSON object file (keys = field names); `overrides` that are not None win."""
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise QCConfigError(f"QC config file {path} does not exist") from None
        except (OSError, ValueError) as e:
            raise QCConfigError(f"QC config file {path} is not a JSON object: {e}") from None
        if not isinstance(data, dict):
            raise QCConfigError(f"QC config file {path} holds a {type(data).__name__}, not a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise QCConfigError(f"QC config file {path}: unknown setting(s) {', '.join(unknown)} "
                                f"(known: {', '.join(sorted(known))})")
        return cls(**{**data, **{k: v for k, v in overrides.items() if v is not None}})


def retry_seed(seed: int, attempt: int, run: int = 1) -> int:
    """The seed of attempt `attempt` of job run `run`, derived deterministically from the line's
    seed: the line's own seed for the first attempt of run 1, a distinct one for every other
    (run, attempt), so a rerun (`--retry-failed`) draws new seeds instead of replaying those that failed."""
    if run <= 1:
        return int(seed) if attempt == 0 else zlib.crc32(f"{int(seed)}\x1fqc-retry\x1f{attempt}".encode())
    return zlib.crc32(f"{int(seed)}\x1frun\x1f{int(run)}\x1f{attempt}".encode())


@dataclass
class QCResult:
    passed: bool
    reasons: list[str]  # why it failed (empty when passed)
    notes: list[str] = field(default_factory=list)  # what could not be measured, and why
    metrics: dict[str, Any] = field(default_factory=dict)  # JSON-able numbers / strings / None


# ---------------------------------------------------------------- signal measurements
def clipped_fraction(wav: np.ndarray) -> float:
    x = np.asarray(wav)
    return float(np.mean(np.abs(x) >= 0.999)) if x.size else 0.0


def silent_fraction(wav: np.ndarray, sr: int, silence_dbfs: float, top_db: float = 40.0) -> float:
    """Share of 20 ms frames below `silence_dbfs` RMS inside the speech span (1.0: all silent)."""
    x = np.asarray(wav, dtype=np.float64)
    start, end = speech_bounds(x, top_db)
    span = x[start:end]
    hop = max(1, int(0.02 * sr))
    n = len(span) // hop
    if n == 0:
        return 1.0
    rms = np.sqrt(np.mean(span[: n * hop].reshape(n, hop) ** 2, axis=1))
    return float(np.mean(20 * np.log10(np.maximum(rms, 1e-12)) < silence_dbfs))


def _num(v: float | None, digits: int = 4) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), digits)


# ---------------------------------------------------------------- the checker
@dataclass
class QCLine:
    """One rendered line to score: `raw` is the model's output, `processed` what will be delivered."""

    voice_key: Any
    text: str
    language: str
    raw: np.ndarray
    sr: int
    truncated: bool
    processed: Processed


class LineQC:
    """Scores lines; holds the ASR model (lazy) and one reference embedding per voice. `device`: where
    the ASR and speaker models run ("cuda" on a GPU actor: Whisper in float16, GE2E on the GPU)."""

    def __init__(self, cfg: QCConfig, threads: int = 0, device: str = "cpu"):
        from voicefleet.tasks.measure.asr import ASR

        self.cfg = cfg
        self.device = "cuda" if str(device).startswith("cuda") else "cpu"
        self.asr = ASR(cfg.asr_model, device=self.device, compute_type="float16" if self.device == "cuda" else "int8",
                       threads=threads)
        self._refs: dict[Any, tuple[np.ndarray | None, str]] = {}

    def add_reference(self, voice_key: Any, wav: np.ndarray, sr: int) -> None:
        """Embed a voice's reference clip (once per key; later calls are free)."""
        from voicefleet.tasks.measure.speaker import SpeakerEmbeddingError, embed

        if voice_key in self._refs:
            return
        try:
            self._refs[voice_key] = (embed(wav, sr, device=self.device), "")
        except SpeakerEmbeddingError as e:
            self._refs[voice_key] = (None, f"reference clip cannot be embedded: {e}")

    def has_reference(self, voice_key: Any) -> bool:
        return voice_key in self._refs

    def check(self, voice_key: Any, text: str, language: str, raw: np.ndarray, sr: int, truncated: bool,
              processed: Processed, duration_tolerance_s: float = 0.05) -> QCResult:
        """Score one rendered line (`check_many` of one)."""
        return self.check_many([QCLine(voice_key, text, language, raw, sr, truncated, processed)],
                               duration_tolerance_s)[0]

    def check_many(self, lines: list[QCLine], duration_tolerance_s: float = 0.05) -> list[QCResult]:
        """Score a batch of rendered lines: on a GPU one batched ASR decode per language, and one
        speaker-model pass over every line, then the signal checks per line. A line with a target length fails when
        |achieved - target| > `duration_tolerance_s`."""
        from voicefleet.tasks.measure.asr import ASR_LANGUAGES, wer
        from voicefleet.tasks.measure.speaker import embed_many, similarity

        c = self.cfg
        heard: dict[int, str] = {}
        for (language, sr), idx in _groups(lines, lambda q: (q.language, q.processed.sample_rate)).items():
            if self.asr.supports(language):
                wavs = [lines[i].processed.wav for i in idx]
                # batched on a GPU; one by one on a CPU, where a batch of 30 s Whisper windows measured
                # slower per line (benchmarks/line_qc_cost.py: 0.72-0.86x)
                heard.update(zip(idx, (t.text for t in (
                    self.asr.transcribe_many(wavs, sr, language) if self.device == "cuda"
                    else [self.asr.transcribe(w, sr, language) for w in wavs]))))
        embedded: dict[int, Any] = {}
        for sr, idx in _groups(lines, lambda q: q.processed.sample_rate).items():
            embedded.update(zip(idx, embed_many([lines[i].processed.wav for i in idx], sr, device=self.device)))
        out = []
        for i, q in enumerate(lines):
            reasons: list[str] = []
            notes: list[str] = []
            m: dict[str, Any] = {}
            if i in heard:
                m["asr_text"], m["wer"] = heard[i], _num(wer(q.text, heard[i]))
                if m["wer"] > c.max_wer:
                    reasons.append(f"WER {m['wer']:.2f} > {c.max_wer:g} (heard {heard[i][:80]!r})")
            else:
                m["asr_text"], m["wer"] = None, None
                notes.append(f"WER not measured: no speech recognition model for language {q.language!r} "
                             f"(available: {', '.join(ASR_LANGUAGES)})")
            ref, why = self._refs.get(q.voice_key, (None, "no reference clip for this voice"))
            m["speaker_similarity"] = None
            if ref is None:
                notes.append(f"speaker similarity not measured: {why}")
            elif isinstance(embedded[i], Exception):
                notes.append(f"speaker similarity not measured: {embedded[i]}")
            else:
                m["speaker_similarity"] = _num(similarity(embedded[i], ref))
                if m["speaker_similarity"] is not None and m["speaker_similarity"] < c.min_similarity:
                    reasons.append(f"speaker similarity {m['speaker_similarity']:.2f} < {c.min_similarity:g}")
            reasons += self._signal_checks(q, m, duration_tolerance_s)
            out.append(QCResult(not reasons, reasons, notes, m))
        return out

    def _signal_checks(self, q: QCLine, m: dict[str, Any], duration_tolerance_s: float) -> list[str]:
        """Truncation, clipping, silence, level and length of one line; their figures go into `m`."""
        c, raw, processed, reasons = self.cfg, q.raw, q.processed, []
        m["truncated"] = bool(q.truncated)
        if q.truncated and c.reject_truncated:
            reasons.append("truncated: a sentence hit the runaway-length guard before it ended")
        m["clipped_fraction"] = _num(clipped_fraction(raw), 6)
        if m["clipped_fraction"] > c.max_clipped_fraction:
            reasons.append(f"clipping: {m['clipped_fraction']:.2%} of samples at full scale "
                           f"> {c.max_clipped_fraction:.2%}")
        m["silent_fraction"] = _num(silent_fraction(raw, q.sr, c.silence_dbfs), 4)
        if m["silent_fraction"] > c.max_silent_fraction:
            reasons.append(f"silence: {m['silent_fraction']:.0%} of the line below {c.silence_dbfs:g} dBFS "
                           f"> {c.max_silent_fraction:.0%}")
        m["raw_rms_dbfs"] = _num(rms_dbfs(raw) if np.size(raw) else -math.inf, 2)
        if m["raw_rms_dbfs"] is None or m["raw_rms_dbfs"] < c.min_rms_dbfs:
            level = "-inf" if m["raw_rms_dbfs"] is None else f"{m['raw_rms_dbfs']:.1f}"
            reasons.append(f"too quiet: {level} dBFS RMS < {c.min_rms_dbfs:g} dBFS")
        if processed.duration_deviation_s is not None and abs(processed.duration_deviation_s) > duration_tolerance_s:
            reasons.append(f"length {processed.duration_s:.2f} s misses target {processed.target_seconds:g} s "
                           f"by {processed.duration_deviation_s:+.2f} s")
        return reasons


def _groups(items: list, key) -> dict[Any, list[int]]:
    out: dict[Any, list[int]] = {}
    for i, item in enumerate(items):
        out.setdefault(key(item), []).append(i)
    return out
