"""Cut a file of any length into utterances of 3-10 s, in its pauses.

Input: VAD speech segments and frame probabilities (tasks/enroll/vad.py, 16 kHz sample ranges). Speech
runs longer than the maximum with no pause are split at their least speech-like frame; then
consecutive runs are grouped so that every group spans 3-10 s where the runs allow it (dynamic
programming over the cut points, preferring long pauses), and each cut falls inside the pause
between two runs. A whole file shorter than the minimum is one
utterance when it holds at least `min_utterance_s` of speech (short takes are normal uploads).

Out: [(start, end)] half-open sample ranges at 16 kHz.
"""
from __future__ import annotations

import numpy as np

from .vad import FRAME, VAD_RATE


def _split_long(seg: tuple[int, int], probs: np.ndarray, max_len: int, min_len: int) -> list[tuple[int, int]]:
    s, e = seg
    if e - s <= max_len:
        return [seg]
    # cut at the least speech-like frame that leaves both sides >= min_len (and the left <= max_len)
    lo, hi = (s + min_len) // FRAME, min(s + max_len, e - min_len) // FRAME
    if hi <= lo:
        lo, hi = (s + FRAME) // FRAME, (e - FRAME) // FRAME
    window = probs[lo:hi]
    cut = (lo + int(np.argmin(window))) * FRAME if len(window) else (s + e) // 2
    return _split_long((s, cut), probs, max_len, min_len) + _split_long((cut, e), probs, max_len, min_len)


def _group(runs: list[tuple[int, int]], min_len: int, max_len: int) -> list[list[tuple[int, int]]]:
    """Contiguous groups of runs, each spanning min_len..max_len where possible (dynamic programming).

    Cost per group: 0.2 inside the range, 1.2 + the shortfall (in seconds) below it, less up to
    0.1 for the pause it ends in: fewer, longer utterances, cut in the longer pauses. Groups above max_len are never formed (single runs already fit).
    """
    n = len(runs)
    best = [0.0] + [float("inf")] * n
    back = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j - 1, -1, -1):
            span = runs[j - 1][1] - runs[i][0]
            if span > max_len and j - i > 1:
                break
            cost = 0.2 if span >= min_len else 1.2 + (min_len - span) / VAD_RATE
            pause = (runs[j][0] - runs[j - 1][1]) / VAD_RATE if j < n else 1.0
            cost -= 0.1 * min(pause, 1.0)  # net cost per group stays > 0: fewer, longer utterances
            if best[i] + cost < best[j]:
                best[j], back[j] = best[i] + cost, i
    groups, j = [], n
    while j > 0:
        groups.append(runs[back[j]:j])
        j = back[j]
    return groups[::-1]


MIN_PAD_S = 0.1


def slice_points(segments: list[tuple[int, int]], probs: np.ndarray, n_samples: int,
                 min_s: float = 3.0, max_s: float = 10.0, min_utterance_s: float = 1.0) -> list[tuple[int, int]]:
    """Speech segments of one file -> utterance ranges of min_s..max_s seconds (16 kHz samples)."""
    max_len, min_len = int(max_s * VAD_RATE), int(min_s * VAD_RATE)
    # groups leave room for at least MIN_PAD_S of pause on each side: a VAD segment starts at the speech's
    # onset, and an utterance cut there starts mid-attack (measured: a 10.0 s group cut at its segment's
    # start began at 0.067 RMS in its first 50 ms, 1 upload in 6 of tests/test_ingest.py's long take)
    inner = max_len - 2 * int(MIN_PAD_S * VAD_RATE)
    runs = [r for seg in segments for r in _split_long(seg, probs, inner, min_len)]
    if not runs:
        return []
    groups = _group(runs, min_len, inner)
    out = []
    for i, g in enumerate(groups):
        start, end = g[0][0], g[-1][1]
        # widen into the pauses on each side: up to half the gap, at most 0.2 s
        prev_end = groups[i - 1][-1][1] if i else 0
        next_start = groups[i + 1][0][0] if i + 1 < len(groups) else n_samples
        pad = min(int(0.2 * VAD_RATE), max(0, (max_len - (end - start)) // 2))
        start = max(start - pad, (prev_end + start) // 2, 0)
        end = min(end + pad, (end + next_start) // 2, n_samples)
        if end - start >= min_utterance_s * VAD_RATE:
            out.append((start, end))
    return out
