"""Real enrollment uploads for the ingest tests, spoken by pip-shipped voices (flows/demo/).

Every bad kind of upload a person makes is built from the same clean speech, so a rejection can
only come from what was done to it: noise at a measured SNR, clipping, a second voice, a music
bed, long silence, telephone rate, files that are not audio.
"""
from __future__ import annotations

import io
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import soundfile as sf

from voicefleet.flows.demo.enrollment import EN_ENROLL, consent_phrase
from voicefleet.flows.demo.voices import DEMO_VOICES, load_engine
from voicefleet.tasks.measure.audio import resample
from voicefleet.tasks.safety.consent import Consent, ConsentScope

RATE = 24000
SENTENCES = EN_ENROLL[:6]  # "The morning bus was late again, ...", six demo lines


def speak(voice_key: str, text: str) -> np.ndarray:
    """(T,) float32 at 24 kHz, peak -6 dBFS."""
    voice = next(v for v in DEMO_VOICES if v.key == voice_key)
    engine = load_engine(voice.engine)
    x = resample(engine.speak(voice, text, None, "en", 1.0), engine.sample_rate, RATE)
    return (x * 0.5 / max(float(np.abs(x).max()), 1e-9)).astype(np.float32)


def pause(seconds: float, level_db: float = -70, seed: int = 0, samples: int | None = None) -> np.ndarray:
    """A pause with a faint room-noise floor (no real microphone records digital zeros)."""
    rng = np.random.default_rng(seed)
    n = samples if samples is not None else int(seconds * RATE)
    return (rng.standard_normal(n) * 10 ** (level_db / 20)).astype(np.float32)


def join(parts: list[np.ndarray], gap_s: float = 0.6) -> np.ndarray:
    out = [pause(0.4)]
    for i, p in enumerate(parts):
        out += [p + pause(0, seed=i + 1, samples=len(p)), pause(gap_s, seed=i + 100)]
    return np.concatenate(out)


def add_noise(x: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    """White noise at `snr_db` below the RMS of the speech (samples above -40 dBFS)."""
    speech = x[np.abs(x) > 0.01]
    noise = np.random.default_rng(seed).standard_normal(len(x)).astype(np.float32)
    noise *= np.sqrt(np.mean(speech**2) / np.mean(noise**2)) / 10 ** (snr_db / 20)
    return x + noise


def music_bed(n: int, seed: int = 0) -> np.ndarray:
    """A chord progression with harmonics and a beat: what a music bed under a voice-over is."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / RATE
    out = np.zeros(n, np.float32)
    chords = [(220.0, 277.2, 329.6), (196.0, 246.9, 293.7), (174.6, 220.0, 261.6), (196.0, 246.9, 329.6)]
    for i in range(0, n, RATE):
        seg = slice(i, min(n, i + RATE))
        for f in chords[(i // RATE) % 4]:
            for h, a in ((1, 1.0), (2, 0.5), (3, 0.25)):
                out[seg] += a * np.sin(2 * np.pi * f * h * t[seg] + rng.uniform(0, 6.28)).astype(np.float32)
    beat = (np.sin(2 * np.pi * 2 * t) > 0.95).astype(np.float32) * rng.standard_normal(n).astype(np.float32)
    out = out / np.abs(out).max() * 0.8 + 0.3 * beat
    return out.astype(np.float32)


def encode(x: np.ndarray, rate: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.clip(x, -1, 1), rate, format=fmt, subtype={"WAV": "PCM_16", "FLAC": "PCM_16"}.get(fmt))
    return buf.getvalue()


# as long as the demo's phrase (~5 s): a 2-3 s clip puts the same speaker's similarity at the
# threshold (0.88-0.90 measured for joe), a 5 s one at 0.94-0.96
CONSENT_PHRASE = consent_phrase(next(v for v in DEMO_VOICES if v.key == "joe"), "en")[0]


def write_speaker(root: Path, folder: str, files: dict[str, bytes], transcripts: list[dict] | None = None,
                  consent: str | None = "ok", consent_voice: np.ndarray | None = None) -> Path:
    """A speaker folder per the enrollment contract; `consent`: "ok", "missing" or "malformed"."""
    d = root / folder
    d.mkdir(parents=True)
    for name, data in files.items():
        (d / name).write_bytes(data)
    if transcripts is not None:
        (d / "transcripts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in transcripts))
    if consent == "malformed":
        (d / "consent.json").write_text("{not json")
    elif consent == "ok":
        clip = consent_voice if consent_voice is not None else speak("joe", CONSENT_PHRASE)
        (d / "consent.wav").write_bytes(encode(clip, RATE, "WAV"))
        record = Consent(speaker_id=folder, full_name=folder, owner="user:demo",
                         scope=ConsentScope(training=True, sharing="private"),
                         granted_at=datetime(2025, 1, 1, tzinfo=timezone.utc), consent_clip="consent.wav",
                         consent_phrase=CONSENT_PHRASE)
        (d / "consent.json").write_text(record.model_dump_json())
    return d
