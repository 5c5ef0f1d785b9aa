"""Cut a file of any length into utterances of 3-10 s, in its pauses.

Input: VAD speech segments and frame probabilities (tasks/vad.py, 16 kHz sample ranges). Speech
runs longer than the maximum with no pause are split at their least speech-like frame; then
consecutive runs are grouped greedily while the group stays within the maximum, and each cut
falls in the middle of the pause between two runs. A whole file shorter than the minimum is one
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


def slice_points(segments: list[tuple[int, int]], probs: np.ndarray, n_samples: int,
                 min_s: float = 3.0, max_s: float = 10.0, min_utterance_s: float = 1.0) -> list[tuple[int, int]]:
    """Speech segments of one file -> utterance ranges of min_s..max_s seconds (16 kHz samples)."""
    max_len, min_len = int(max_s * VAD_RATE), int(min_s * VAD_RATE)
    runs = [r for seg in segments for r in _split_long(seg, probs, max_len, min_len)]
    if not runs:
        return []
    groups: list[list[tuple[int, int]]] = [[runs[0]]]
    for run in runs[1:]:
        g = groups[-1]
        if run[1] - g[0][0] <= max_len:
            g.append(run)
        else:
            groups.append([run])
    # a short last group joins the previous one when the two still fit
    if len(groups) > 1 and groups[-1][-1][1] - groups[-1][0][0] < min_len \
            and groups[-1][-1][1] - groups[-2][0][0] <= max_len:
        groups[-2].extend(groups.pop())
    out = []
    for i, g in enumerate(groups):
        start, end = g[0][0], g[-1][1]
        # widen into the pauses on each side: up to half the gap, at most 0.2 s
        prev_end = groups[i - 1][-1][1] if i else 0
        next_start = groups[i + 1][0][0] if i + 1 < len(groups) else n_samples
        pad = int(0.2 * VAD_RATE)
        start = max(start - pad, (prev_end + start) // 2, 0)
        end = min(end + pad, (end + next_start) // 2, n_samples)
        if end - start >= min_utterance_s * VAD_RATE:
            out.append((start, end))
    return out
