"""Is an upload one voice? GE2E embeddings of short speech windows, split in two, and how far apart
the two halves are.

The upload's VAD speech, pauses dropped and files joined in order (so takes shorter than a window still
count), is cut into `speaker_window_s` (3 s) windows every `speaker_hop_s` (1 s); each window gets a
GE2E embedding (tasks/measure/speaker.py) and is named after the file holding its middle.
The windows are split into the two groups that hold together best (spherical 2-means), and the split
is scored by its *separation*: mean cosine similarity of windows inside a group minus mean similarity
across the groups. Any one voice splits somewhere, but its halves stay close; two voices split along
the speaker. Two speakers are reported when the separation exceeds `two_speaker_separation` and the
smaller group holds more than `max_other_speaker_fraction` of the windows.

Why not a threshold on pairwise or centroid similarity (the check before this one clustered whole
VAD segments, joined above 0.72): measured on real speech (benchmarks/speaker_checks_calibration.py),
disjoint 2 s windows of one voice score down to 0.69 against each other while the two women of the
pyannote call reach 0.73; at 3 s one voice's lowest pair is 0.83 and the women's highest 0.79 -- 0.04
apart on a few windows each, and a pair rule rests on the lowest of hundreds of pairs, which falls as
an upload grows. Averages over groups of windows are steadier: see `QCConfig.two_speaker_separation`.
And a VAD segment holding both speakers of a quick exchange embeds as one voice: the 3 s alternating
take the old check passed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .speech_checks import QCConfig
from .vad import VAD_RATE

__all__ = ["SpeakerCount", "count_speakers", "file_speech", "separation_threshold", "speaker_problem", "split_two",
           "speaker_windows"]


@dataclass
class SpeakerCount:
    clusters: int  # 1 or 2
    other_fraction: float  # share of the windows in the smaller group
    separation: float  # within-group minus across-group mean similarity of the best two-way split
    similarity: float  # between the two groups' centroids
    windows: int  # windows embedded (0: too little speech to judge)
    files: list[str]  # files holding the smaller group's windows (when two speakers)


def file_speech(x16: np.ndarray, segments: list[tuple[int, int]]) -> np.ndarray:
    """One file's VAD speech joined, pauses dropped: (T,) float32 at 16 kHz."""
    if not segments:
        return np.zeros(0, np.float32)
    return np.concatenate([x16[s:e] for s, e in segments]).astype(np.float32, copy=False)


def speaker_windows(pieces: list[tuple[str, np.ndarray]], qc: QCConfig) -> list[tuple[str, np.ndarray]]:
    """(file, window) pairs: the pieces joined and cut into `speaker_window_s` windows every `speaker_hop_s`,
    evenly thinned to `max_speaker_windows`; a window is named after the piece holding its middle."""
    n, hop = int(qc.speaker_window_s * VAD_RATE), int(qc.speaker_hop_s * VAD_RATE)
    pieces = [(name, x) for name, x in pieces if len(x)]
    if not pieces:
        return []
    joined = np.concatenate([x for _, x in pieces])
    ends = np.cumsum([len(x) for _, x in pieces])
    starts = list(range(0, len(joined) - n + 1, hop))
    if len(starts) > qc.max_speaker_windows:
        starts = [starts[i] for i in np.linspace(0, len(starts) - 1, qc.max_speaker_windows).round().astype(int)]
    return [(pieces[int(np.searchsorted(ends, i + n // 2, side="right"))][0], joined[i:i + n]) for i in starts]


def split_two(e: np.ndarray, seeds: int = 8) -> tuple[np.ndarray, float]:
    """Best two-way split of unit embeddings `e` (N, D) by spherical 2-means -> (labels (N,) in {0, 1},
    separation). Started from the least similar pair and from each of `seeds` windows with its least
    similar partner; the split with the highest total similarity to its centroids wins."""
    s = e @ e.T
    starts = {tuple(sorted(np.unravel_index(int(np.argmin(s)), s.shape)))}
    spread = np.linspace(0, len(e) - 1, seeds).round().astype(int)
    starts |= {tuple(sorted((int(i), int(np.argmin(s[i]))))) for i in spread}
    best, best_score = None, -np.inf
    for i, j in sorted(starts):
        if i == j:
            continue
        c = e[[i, j]]
        for _ in range(20):
            labels = np.argmax(e @ c.T, axis=1)
            if labels.min() == labels.max():
                break
            new = np.stack([e[labels == k].mean(axis=0) for k in (0, 1)])
            new /= np.linalg.norm(new, axis=1, keepdims=True)
            if np.allclose(new, c):
                break
            c = new
        if labels.min() == labels.max():
            continue
        score = float(sum((e[labels == k] @ c[k]).sum() for k in (0, 1)))
        if score > best_score:
            best, best_score = labels, score
    if best is None:
        return np.zeros(len(e), int), 0.0
    inside = np.concatenate([s[np.ix_(best == k, best == k)][np.triu_indices(int((best == k).sum()), 1)]
                             for k in (0, 1)]).mean()  # every pair inside a group (a lone window has none)
    across = float(s[np.ix_(best == 0, best == 1)].mean())
    return best, float(inside - across)


def count_speakers(pieces: list[tuple[str, np.ndarray]], qc: QCConfig) -> SpeakerCount:
    """Judge the upload's speech pieces ((file, (T,) float32 at 16 kHz), one per file, `file_speech`)."""
    from voicefleet.tasks.measure.speaker import SpeakerEmbeddingError, embed_many, similarity

    windows = speaker_windows(pieces, qc)
    embs, files = [], []
    for (name, _), e in zip(windows, embed_many([x for _, x in windows], VAD_RATE)):
        if not isinstance(e, SpeakerEmbeddingError):
            embs.append(e)
            files.append(name)
    if len(embs) < qc.min_speaker_windows:
        return SpeakerCount(1, 0.0, 0.0, 1.0, len(embs), [])
    e = np.stack(embs)
    labels, separation = split_two(e)
    minor = int(np.argmin(np.bincount(labels, minlength=2)))
    other = float(np.mean(labels == minor))
    c = [e[labels == k].mean(axis=0) for k in (0, 1)]
    sim = similarity(c[0], c[1])
    two = separation > separation_threshold(len(e), qc) and other > qc.max_other_speaker_fraction
    return SpeakerCount(2 if two else 1, other, separation, sim, len(e),
                        sorted({f for f, lab in zip(files, labels) if lab == minor}) if two else [])


def separation_threshold(windows: int, qc: QCConfig) -> float:
    """`two_speaker_separation`, raised by sqrt(full / windows) below `speaker_windows_full` windows: a split
    of few windows separates one voice further (measured: QCConfig's comments)."""
    return qc.two_speaker_separation * max(1.0, (qc.speaker_windows_full / max(windows, 1)) ** 0.5)


def speaker_problem(count: SpeakerCount, qc: QCConfig) -> str | None:
    if count.clusters > 1:
        return (f"{count.clusters} speakers detected: {count.other_fraction:.0%} of speech "
                f"(> {qc.max_other_speaker_fraction:.0%}) is another voice (separation {count.separation:.3f} > "
                f"{separation_threshold(count.windows, qc):.3f}, similarity of the two voices {count.similarity:.2f}) "
                f"in {', '.join(count.files)}")
    return None
