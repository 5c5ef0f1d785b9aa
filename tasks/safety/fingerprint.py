"""Which rendered line a file came from: a robust audio fingerprint, indexed in the store per job.

The fingerprint is Haitsma & Kalker's ("A Highly Robust Audio Fingerprinting System", ISMIR 2002):
at 5 kHz, 0.37 s frames every 11.6 ms, the energy of 33 log-spaced bands between 300 and 2000 Hz;
each frame gives 32 bits, the signs of the band-energy differences' change over time. Gain
(loudness) cancels out; resampling to 16 kHz and low-bit-rate codecs keep this band; a 3 s excerpt
is 256 frames. A query matches a line where its bits differ at fewer than `MAX_BER` of positions
(aligned at the best offset); unrelated audio differs at ~0.5.

Why a fingerprint and not a payload in the mark: the shipped mark (tasks/safety/watermark.py) is
presence-only, and a payload mark of our own would need training and tuning to survive Opus and
MP3 at 64 kbps; a fingerprint leaves the signal untouched, names the exact line, and its
robustness is that of the band energies. It needs the store: a third party without it can only
learn that a file is voicefleet's (the mark), not whose.

Index: ``watermarks/<job_id>/<part>.parquet``, one row per rendered line (job_id, line_id,
voice_id, voice_version, fp: the uint32 frames as bytes), written next to each shard before its
index part. Lookup scans every job's parts (vectorised XOR/popcount): fine for thousands of lines;
beyond that a sub-fingerprint hash table (the paper's) is the next step.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from voicefleet.tasks.measure.audio import resample
from voicefleet.tasks.store.storage import Store

__all__ = ["MAX_BER", "Match", "fingerprint", "index_lines", "index_rendered", "lookup"]

FP_RATE = 5000
FRAME = 2048
HOP = 58  # 11.6 ms at 5 kHz
BANDS = 33
MAX_BER = 0.35
MIN_OVERLAP = 64  # frames (~0.75 s) a query must share with a line
PREFIX = "watermarks"
SCHEMA = pa.schema([("job_id", pa.string()), ("line_id", pa.string()), ("voice_id", pa.string()),
                    ("voice_version", pa.string()), ("fp", pa.binary())])


def _band_matrix() -> np.ndarray:
    freqs = np.fft.rfftfreq(FRAME, 1 / FP_RATE)
    edges = np.geomspace(300, 2000, BANDS + 2)
    m = np.zeros((BANDS + 1, len(freqs)), np.float32)
    for b in range(BANDS + 1):
        m[b, (freqs >= edges[b]) & (freqs < edges[b + 1])] = 1.0
    return m


_BANDS = _band_matrix()
_WINDOW = np.hanning(FRAME).astype(np.float32)
_WEIGHTS = (1 << np.arange(32, dtype=np.uint64)).astype(np.uint64)


def fingerprint(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """(F,) uint32 sub-fingerprints of (T,) float32 mono audio; F = 0 for audio under ~0.4 s."""
    x = resample(np.asarray(audio, dtype=np.float32), sample_rate, FP_RATE) if sample_rate != FP_RATE else audio
    if len(x) < FRAME + HOP:
        return np.zeros(0, np.uint32)
    n = 1 + (len(x) - FRAME) // HOP
    frames = np.lib.stride_tricks.sliding_window_view(x, FRAME)[::HOP][:n] * _WINDOW
    energy = (np.abs(np.fft.rfft(frames, axis=1)) ** 2) @ _BANDS.T  # (n, 34)
    diff = energy[:, :-1] - energy[:, 1:]  # (n, 33)
    bits = (diff[1:, :32] - diff[:-1, :32]) > 0  # (n-1, 32)
    return (bits.astype(np.uint64) @ _WEIGHTS).astype(np.uint32)


def bit_error_rate(query: np.ndarray, line: np.ndarray) -> tuple[float, int]:
    """Lowest bit error rate of `query` against `line` over their alignments, and its offset."""
    a, b = (query, line) if len(query) <= len(line) else (line, query)
    if len(a) < MIN_OVERLAP:
        return 1.0, 0
    windows = np.lib.stride_tricks.sliding_window_view(b, len(a))  # (offsets, len(a))
    errors = np.bitwise_count(windows ^ a).sum(axis=1)
    best = int(errors.argmin())
    return float(errors[best]) / (32 * len(a)), best


def index_lines(store: Store, job_id: str, part: str, lines: list[tuple[dict, np.ndarray, int]]) -> str | None:
    """Write the fingerprints of one batch of rendered lines ((row, audio, sample_rate) each); its key."""
    rows = [{"job_id": job_id, "line_id": r["line_id"], "voice_id": r.get("voice_id"),
             "voice_version": r.get("voice_version"), "fp": fingerprint(a, sr).tobytes()} for r, a, sr in lines]
    if not rows:
        return None
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), buf)
    key = f"{PREFIX}/{job_id}/{part}.parquet"
    store.write_bytes(key, buf.getvalue())
    return key


def index_rendered(store: Store, job_id: str, part: str, items: list[tuple[dict, bytes | None]]) -> str | None:
    """`index_lines` for a shard's (index row, FLAC bytes or None) items: the ok lines' final audio."""
    import soundfile as sf

    lines = []
    for row, flac in items:
        if flac:
            audio, sr = sf.read(io.BytesIO(flac), dtype="float32")
            lines.append((row, audio, sr))
    return index_lines(store, job_id, part, lines)


@dataclass(frozen=True)
class Match:
    job_id: str
    line_id: str
    voice_id: str | None
    voice_version: str | None
    bit_error_rate: float
    offset_s: float  # where the query starts in the line (negative: the line starts inside the query)


def lookup(store: Store, audio: np.ndarray, sample_rate: int) -> Match | None:
    """The indexed line this audio came from (lowest BER < `MAX_BER`), or None."""
    query = fingerprint(audio, sample_rate)
    best: Match | None = None
    for key in store.glob(f"{PREFIX}/*/*.parquet"):
        for r in pq.read_table(io.BytesIO(store.read_bytes(key))).to_pylist():
            line = np.frombuffer(r["fp"], dtype=np.uint32)
            ber, offset = bit_error_rate(query, line)
            if ber < MAX_BER and (best is None or ber < best.bit_error_rate):
                sign = 1 if len(query) <= len(line) else -1
                best = Match(r["job_id"], r["line_id"], r["voice_id"], r["voice_version"], round(ber, 3),
                             round(sign * offset * HOP / FP_RATE, 2))
    return best
