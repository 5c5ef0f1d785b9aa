"""Enrollment ingest: one speaker's upload folder -> checked utterances + a reference clip, or a
rejection naming the speaker, the file and the measured value.

Input contract (design.md): `<enroll_root>/<speaker_id>/` holds audio files, `transcripts.jsonl`
(`file`, `text`, `language`) and `consent.json`. The source is never modified. The checks here are
the foundation's (decode, length, clipping, SNR, transcript, consent); the enrollment-ingest issue
extends them (VAD slicing, ASR, one-speaker clustering, music detection).
"""
from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel

from .audio import AudioDecodeError, load_audio
from .consent import Consent, ConsentError, load_consent
from .consent_verify import verdict_record, verify_upload_consent
from .watermark import SyntheticAudio, refuse_marked
from .storage import InvalidId, Store, safe_id

AUDIO_EXTS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aiff", ".aif")
SR = 32000


class QCConfig(BaseModel):
    """Thresholds for the per-file and per-speaker checks, in one place."""

    min_file_s: float = 1.0
    max_file_s: float = 30.0
    min_total_s: float = 15.0  # the reference recommends ~60 s; 15 s is the floor we accept
    min_snr_db: float = 20.0
    max_clipped_fraction: float = 0.001
    ref_min_s: float = 3.0
    ref_max_s: float = 10.0
    allow_synthetic: bool = False  # accept audio carrying voicefleet's watermark (test corpora made with TTS)


class RejectedSpeaker(ValueError):
    """The speaker cannot be enrolled; `reasons` lists each problem a person can act on."""

    def __init__(self, speaker: str, reasons: list[str]):
        self.speaker, self.reasons = speaker, reasons
        super().__init__(f"{speaker}: " + "; ".join(reasons))


@dataclass
class Utterance:
    file: str
    text: str
    language: str
    audio: np.ndarray  # float32 mono 32 kHz

    @property
    def seconds(self) -> float:
        return len(self.audio) / SR


@dataclass
class SpeakerUpload:
    speaker_id: str
    consent: Consent
    utterances: list[Utterance]
    reference: Utterance  # 3–10 s clip that prompts the model at inference
    file_problems: list[str] = field(default_factory=list)  # files skipped, with reasons
    consent_check: dict = field(default_factory=dict)  # the consent clip's verdict (tasks/consent_verify.py)

    @property
    def seconds(self) -> float:
        return sum(u.seconds for u in self.utterances)


def discover_speakers(src: Store) -> list[str]:
    """Speaker folders directly under the enrollment root (hidden or partial folders skipped)."""
    names = set()
    for key in src.list():
        head = key.split("/", 1)[0]
        if "/" in key and not head.startswith((".", "_")):
            names.add(head)
    return sorted(names)


def snr_db(audio: np.ndarray, frame: int = 640) -> float:
    """Rough SNR: loud-frame energy (90th percentile) over the noise floor (10th percentile)."""
    n = len(audio) // frame
    if n < 10:
        return float("inf")
    rms = np.sqrt(np.mean(audio[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1) + 1e-12)
    noise, signal = np.percentile(rms, 10), np.percentile(rms, 90)
    return float(20 * np.log10(signal / max(noise, 1e-7)))


def check_file(name: str, audio: np.ndarray, qc: QCConfig) -> str | None:
    seconds = len(audio) / SR
    if seconds < qc.min_file_s:
        return f"{name} is {seconds:.2f} s long (< {qc.min_file_s:g} s)"
    if seconds > qc.max_file_s:
        return f"{name} is {seconds:.1f} s long (> {qc.max_file_s:g} s; slice it first)"
    clipped = float(np.mean(np.abs(audio) >= 0.999))
    if clipped > qc.max_clipped_fraction:
        return f"{name} is clipped: {clipped:.2%} of samples at full scale (> {qc.max_clipped_fraction:.2%})"
    snr = snr_db(audio)
    if snr < qc.min_snr_db:
        return f"SNR {snr:.1f} dB < {qc.min_snr_db:g} dB in {name}"
    return None


def read_transcripts(src: Store, speaker: str) -> dict[str, dict]:
    key = f"{speaker}/transcripts.jsonl"
    if not src.exists(key):
        return {}
    out = {}
    for n, line in enumerate(src.read_text(key).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            out[str(row["file"])] = {"text": str(row["text"]), "language": str(row.get("language", "en"))}
        except (ValueError, KeyError, TypeError) as e:
            raise RejectedSpeaker(speaker, [f"transcripts.jsonl line {n} is malformed ({e})"]) from e
    return out


def choose_reference(utts: list[Utterance], qc: QCConfig) -> Utterance:
    """The longest single utterance within 3–10 s, else consecutive ones joined up to <= 10 s."""
    fits = [u for u in utts if qc.ref_min_s <= u.seconds <= qc.ref_max_s]
    if fits:
        return max(fits, key=lambda u: u.seconds)
    for i in range(len(utts)):
        parts = []
        for u in utts[i:]:
            if sum(p.seconds for p in parts) + u.seconds > qc.ref_max_s:
                break
            parts.append(u)
            if sum(p.seconds for p in parts) >= qc.ref_min_s:
                gap = np.zeros(int(0.2 * SR), dtype=np.float32)
                audio = np.concatenate([x for p in parts for x in (p.audio, gap)][:-1])
                return Utterance("+".join(p.file for p in parts), " ".join(p.text for p in parts), parts[0].language, audio)
    raise RejectedSpeaker(utts[0].file.split("/")[0] if utts else "?",
                          [f"no 3–10 s reference clip can be made from the accepted audio"])


def ingest_speaker(src: Store, speaker: str, qc: QCConfig | None = None) -> SpeakerUpload:
    """Decode and check one speaker's folder; raises RejectedSpeaker with every reason found."""
    qc = qc or QCConfig()
    try:
        safe_id(speaker, "speaker id")
    except InvalidId as e:
        raise RejectedSpeaker(speaker, [str(e)]) from e
    try:
        consent = load_consent(speaker, store=src)
    except ConsentError as e:
        raise RejectedSpeaker(speaker, [e.reason]) from e
    transcripts = read_transcripts(src, speaker)
    skip = {posixpath.basename(consent.consent_clip)}
    files = sorted(k for k in src.list(speaker) if k.lower().endswith(AUDIO_EXTS) and posixpath.basename(k) not in skip)
    problems: list[str] = []
    utts: list[Utterance] = []
    for key in files:
        name = posixpath.basename(key)
        if name not in transcripts:
            problems.append(f"no transcript for {name} (add it to transcripts.jsonl; ASR comes with the ingest issue)")
            continue
        try:
            audio = load_audio(src.read_bytes(key), SR, name=name)
        except AudioDecodeError as e:
            problems.append(str(e))
            continue
        bad = check_file(name, audio, qc)
        if bad:
            problems.append(bad)
            continue
        utts.append(Utterance(name, transcripts[name]["text"], transcripts[name]["language"], audio))
    if not files:
        raise RejectedSpeaker(speaker, ["no audio files found"])
    total = sum(u.seconds for u in utts)
    if total < qc.min_total_s:
        raise RejectedSpeaker(speaker, [f"only {total:.1f} s of accepted speech (< {qc.min_total_s:g} s)"] + problems)
    # voice safety: no rendered (watermarked) audio; the consent clip is this speaker saying the phrase
    try:
        if not qc.allow_synthetic:
            refuse_marked([(u.file, u.audio) for u in utts], SR)
        check = verify_upload_consent(src, speaker, consent, [u.audio for u in utts], SR, [u.language for u in utts])
    except SyntheticAudio as e:
        raise RejectedSpeaker(speaker, [str(e)]) from e
    except ConsentError as e:
        raise RejectedSpeaker(speaker, [e.reason]) from e
    ref = choose_reference(utts, qc)
    return SpeakerUpload(speaker, consent, utts, ref, problems, consent_check=verdict_record(check))
