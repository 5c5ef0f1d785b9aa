"""Which rendered line a file came from: a robust audio fingerprint, indexed in the store per job.

The fingerprint is Haitsma & Kalker's ("A Highly Robust Audio Fingerprinting System", ISMIR 2002):
at 5 kHz, 0.37 s frames every 11.6 ms, the energy of 33 log-spaced bands between 300 and 2000 Hz;
each frame gives 32 bits, the signs of the band-energy differences' change over time. Gain
(loudness) cancels out; resampling to 16 kHz and low-bit-rate codecs keep this band; a 3 s excerpt
is 256 frames. A query matches a line where its bits differ at fewer than `MAX_BER` of positions,
aligned at the best offset and the best point of a grid (`closest`): time stretches 0.86-1.14 (tempo
or speed changed by up to 14 %) and band shifts of -2..+2 (a band is ~0.97 semitone, so a pitch shift
moves each bit that many places); a lookup also fingerprints the query played half a band lower and
higher (`query_fingerprints`), so a pitch change is matched to within a quarter band. Unrelated audio
differs at ~0.5 aligned as it is, and less at the best point of the grid (measured: `MAX_BER`).
tasks/safety/consent_review.py compares consent clips on the same grid.

Why a fingerprint and not a payload in the mark: the shipped mark (tasks/safety/watermark.py) is
presence-only, and a payload mark of our own would need training and tuning to survive Opus and
MP3 at 64 kbps; a fingerprint leaves the signal untouched, names the exact line, and its
robustness is that of the band energies. It needs the store: a third party without it can only
learn that a file is voicefleet's (the mark), not whose.

Index: ``watermarks/<job_id>/<part>.parquet``, one row per rendered line (job_id, line_id,
voice_id, voice_version, fp: the uint32 frames as bytes), written next to each shard before its
index part. A lookup reads every job's parts, ranks the lines by votes of exact 16-bit keys
(`candidates`: the paper's sub-fingerprint lookup, over a coarse grid) and aligns only the first
`CANDIDATES` on the whole grid. Lines or queries under ~1.05 s (fewer than `MIN_OVERLAP` frames even
stretched on the grid) cannot be looked up; 1.2 s is the shortest measured. Cost per lookup (measured:
benchmarks/watermark_robustness.py --store-lines, README): 0.3 s at 10^3 lines, 0.8 s at 10^4, 8.7 s at
10^5; past that the key index should be kept with the parts rather than rebuilt per lookup.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from voicefleet.tasks.measure.audio import resample
from voicefleet.tasks.store.storage import Store

__all__ = ["BAND_SHIFTS", "MAX_BER", "STRETCHES", "Alignment", "Match", "candidates", "closest", "fingerprint",
           "index_lines", "index_rendered", "indexed_lines", "lookup", "query_fingerprints"]

FP_RATE = 5000
FRAME = 2048
HOP = 58  # 11.6 ms at 5 kHz
BANDS = 33
# Lowest bit error rate over the grid and the three query fingerprints, measured (36 demo TTS takes indexed,
# 180 changed takes of the same voices as distractors; benchmarks/watermark_robustness.py and README): the
# line after MP3 / Opus <= 0.08, after tempo / pitch / speed changes <= 0.23, whole or as 1.5 s and 1.2 s
# excerpts; clean unrelated takes and a phone call >= 0.381 whole, 0.362 as 3 s, 0.304 as 1.5 s and 0.271
# as 1.2 s excerpts. The threshold sits between, with margins of ~0.02 at 1.2-1.5 s.
MAX_BER = 0.25
MIN_OVERLAP = 64  # frames (~0.75 s) a query must share with a line
# The grid a query is aligned over (tasks/safety/consent_review.py compares consent clips on it too):
# time stretches (query frames per original frame: tempo or speed changed by up to +-14 %) and band
# shifts (a band is ~0.97 semitone, so a pitch shift of s semitones moves each bit ~s places).
STRETCHES = np.round(np.arange(0.86, 1.145, 0.01), 2)
BAND_SHIFTS = (-2, -1, 0, 1, 2)
COARSE_STRETCHES = np.round(np.arange(0.86, 1.145, 0.02), 2)  # for the candidate votes
CANDIDATES = 16  # lines aligned on the whole grid per lookup
BAND_RATIO = (2000 / 300) ** (1 / (BANDS + 1))  # a band's upper / lower edge: 1.057 (0.97 semitone)
HALF_BAND = 0.5
COMMON_KEY = 64  # a key this many times more frequent than uniform votes for nothing
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


@dataclass(frozen=True)
class Alignment:
    """How a query lines up with an original: lowest bit error rate over the grid and the offsets."""

    bit_error_rate: float
    stretch: float  # query frames per original frame (1.05: the query is 5 % longer, i.e. slower)
    band_shift: int  # bands the query sits above the original (a band is ~1 semitone)
    offset: int  # original frames before the query's start (negative: the original starts inside the query)


def variants(query: np.ndarray, stretches=STRETCHES, shifts=BAND_SHIFTS):
    """The query brought back over the grid: (stretch, band shift, (F',) uint32 frames, valid-bit mask).

    A stretch s keeps every s-th frame (nearest), so a query s times as long as the original lines up
    with it frame by frame; a shift of k bands moves each bit k places (the bits leaving the word are
    masked out)."""
    for stretch in stretches:
        frames = np.round(np.arange(0, len(query) / stretch) * stretch).astype(int)
        stretched = query[frames[frames < len(query)]]
        for shift in shifts:
            moved = stretched >> np.uint32(shift) if shift >= 0 else stretched << np.uint32(-shift)
            mask = np.uint32(((1 << (32 - abs(shift))) - 1) << max(0, -shift))
            yield float(stretch), int(shift), moved.astype(np.uint32), mask


def closest(query: np.ndarray, original: np.ndarray, stretches=STRETCHES, shifts=BAND_SHIFTS) -> Alignment:
    """`query` against `original` over the grid of time stretches and band shifts and every offset
    with at least `MIN_OVERLAP` frames in common (BER 1.0 when there is none)."""
    best = Alignment(1.0, 1.0, 0, 0)
    for stretch, shift, moved, mask in variants(query, stretches, shifts):
        ber, offset = _aligned(moved, original, mask, 32 - abs(shift))
        if ber < best.bit_error_rate:
            best = Alignment(ber, stretch, shift, offset)
    return best


def _aligned(a: np.ndarray, b: np.ndarray, mask: np.uint32, bits: int) -> tuple[float, int]:
    """Lowest bit error rate of the shorter of `a` (query), `b` (original) slid along the longer, over the
    `mask`ed bits, and the offset of the query in the original (negative: of the original in the query)."""
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    if len(short) < MIN_OVERLAP:
        return 1.0, 0
    errors = np.bitwise_count((np.lib.stride_tricks.sliding_window_view(long_, len(short)) ^ short) & mask)
    totals = errors.sum(axis=1)
    at = int(totals.argmin())
    return float(totals[at]) / (bits * len(short)), at if len(a) <= len(b) else -at


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
    stretch: float = 1.0  # the query's duration per the line's (1.05: played 5 % slower)
    band_shift: float = 0.0  # bands (~0.97 semitone) the query sits above the line, in half bands


def indexed_lines(store: Store) -> tuple[list[dict], list[np.ndarray]]:
    """Every indexed line's row (without its fingerprint) and its (F,) uint32 fingerprint."""
    rows, fps = [], []
    for key in store.glob(f"{PREFIX}/*/*.parquet"):
        table = pq.read_table(io.BytesIO(store.read_bytes(key)))
        for r, fp in zip(table.drop(["fp"]).to_pylist(), table.column("fp").to_pylist()):
            rows.append(r)
            fps.append(np.frombuffer(fp, dtype=np.uint32))
    return rows, fps


def _keys(frames: np.ndarray) -> np.ndarray:
    """(2, F) uint32 keys of (F,) sub-fingerprints: bits 4-19, and bits 12-27 tagged by bit 16 (both stay
    whole under a band shift of up to 4)."""
    return np.stack([(frames >> np.uint32(4)) & np.uint32(0xFFFF),
                     ((frames >> np.uint32(12)) & np.uint32(0xFFFF)) | np.uint32(1 << 16)])


def _runs_start(keys: np.ndarray, line_start: np.ndarray) -> np.ndarray:
    """Which frames start a run of one key (a held sound repeats its key for many frames; only the first of
    a run votes, or its runs would pile votes onto any line that holds that key, as another voice's vowel)."""
    first = np.ones(keys.shape, bool)
    first[..., 1:] = (keys[..., 1:] != keys[..., :-1]) | line_start[1:]
    return first


def candidates(query: np.ndarray | list[np.ndarray], lines: list[np.ndarray], top: int = CANDIDATES) -> list[int]:
    """The `top` lines most likely to hold `query` (indexes into `lines`), by votes of exact 16-bit keys; a
    list of queries (`query_fingerprints`) votes with the best of them per line.

    Two 16-bit parts of each sub-fingerprint are keys; every frame of every coarse variant of the query
    (`COARSE_STRETCHES` x `BAND_SHIFTS`) whose key some line holds votes for that line at the offset the two
    frames imply (binned by 8 frames, twice, the second binning half a bin over). A line's votes are its best
    bin's. Keys more common than `COMMON_KEY` x uniform (silence gives one key) cast no votes. Cost: a sort of
    every line's frames, then ~ len(query) x 150 binary searches and the frames they hit."""
    if len(lines) <= top:
        return list(range(len(lines)))
    sizes = np.array([len(f) for f in lines])
    frames = np.concatenate(lines)
    owner = np.repeat(np.arange(len(lines)), sizes)
    local = np.arange(len(frames)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    keys = _keys(frames)  # (2, F)
    first = _runs_start(keys, local == 0)
    owner, local = np.broadcast_to(owner, first.shape)[first], np.broadcast_to(local, first.shape)[first]
    keys = keys[first]
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    common = np.bincount(keys, minlength=1 << 17) > max(8, COMMON_KEY * len(keys) / (1 << 17))
    best = np.zeros(len(lines), np.int64)
    queries = [query] if isinstance(query, np.ndarray) else query
    for _, _, moved, _ in (v for q in queries for v in variants(q, COARSE_STRETCHES, BAND_SHIFTS)):
        q = _keys(moved)
        start = np.zeros(q.shape[1], bool)
        start[0] = True
        take = _runs_start(q, start) & ~common[q]
        j = np.broadcast_to(np.arange(q.shape[1]), q.shape)[take]
        q = q[take]
        lo = np.searchsorted(sorted_keys, q, "left")
        n = np.searchsorted(sorted_keys, q, "right") - lo
        if n.sum() == 0:
            continue
        hit = order[np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n) + np.repeat(lo, n)]
        offset = local[hit] - np.repeat(j, n)  # line frame at which the query would start
        for half in (0, 4):
            cell, count = np.unique(owner[hit] * (1 << 20) + (offset + half + (1 << 19)) // 8, return_counts=True)
            np.maximum.at(best, cell >> 20, count)
    return [int(i) for i in np.argsort(-best, kind="stable")[:top]]


def query_fingerprints(audio: np.ndarray, sample_rate: int) -> list[tuple[float, np.ndarray]]:
    """(band offset, fingerprint) of the audio as it is and played `HALF_BAND` lower and higher: with the grid's
    whole-band shifts, a pitch change is then matched to within a quarter band, not half (speed +10 % is
    +1.7 bands: 0.3 off the grid's 2, 0.2 off 1.5)."""
    x = resample(np.asarray(audio, dtype=np.float32), sample_rate, FP_RATE) if sample_rate != FP_RATE else audio
    out = [(0.0, fingerprint(x, FP_RATE))]
    for bands in (HALF_BAND, -HALF_BAND):  # resampled to more samples and played at FP_RATE: lower
        out.append((bands, fingerprint(resample(x, FP_RATE, round(FP_RATE * BAND_RATIO ** bands)), FP_RATE)))
    return out


def lookup(store: Store, audio: np.ndarray, sample_rate: int) -> Match | None:
    """The indexed line this audio came from, or None: the `CANDIDATES` lines `candidates` ranks first are
    aligned on the whole grid (`closest`), for each of `query_fingerprints`; the lowest bit error rate under
    `MAX_BER` names the line."""
    # a query stretched on the grid may reach MIN_OVERLAP frames from fewer (0.86 x 64 = 55: ~1.05 s)
    queries = [(b, q) for b, q in query_fingerprints(audio, sample_rate) if len(q) >= MIN_OVERLAP * STRETCHES[0]]
    if not queries:
        return None
    rows, lines = indexed_lines(store)
    best: Match | None = None
    for i in candidates([q for _, q in queries], lines):
        for bands, q in queries:
            a = closest(q, lines[i])
            if a.bit_error_rate < MAX_BER and (best is None or a.bit_error_rate < best.bit_error_rate):
                r = rows[i]
                best = Match(r["job_id"], r["line_id"], r["voice_id"], r["voice_version"], round(a.bit_error_rate, 3),
                             round(a.offset * HOP / FP_RATE, 2), round(a.stretch / BAND_RATIO ** bands, 2),
                             a.band_shift + bands)
    return best
