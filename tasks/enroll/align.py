"""A supplied transcript of a long file, aligned to the file's VAD slices (any language).

The text is split into sentences (at 。！？.!?… and ；; -- never at a "." inside a number). Each
sentence's spoken length is estimated from its phone count (the model's own frontend for the
language, model/text/; characters when the frontend cannot read it). The cumulative estimated length
is mapped onto the cumulative VAD speech time of the slices: every slice boundary must land near a
sentence boundary -- within `TOLERANCE` of the shorter neighbouring sentence's estimated length --
else the two slices are merged (a cut never falls inside a sentence). Each resulting piece gets the
whole sentences whose estimated span it covers.

Pauses carry no phones and VAD speech time excludes them, so the two scales are comparable; only
the proportions are used, so a speaker's rate does not matter. The per-language rates below only
refuse a transcript that cannot be what the file says (its estimated length off by more than 2x).

Measured on the demo voices (flows/demo/voices.py; 8 English lines by piper joe, 10 Japanese lines
by Kokoro jf_alpha; phones without punctuation/prosody marks per second of VAD speech):
en 11.5-13.6, mean 12.5; ja 12.3-14.1, mean 13.3. zh/ko/yue are not measured: 12.5 is assumed,
and the 2x band covers it.

A language with an ASR model (English) is checked slice by slice in ingest (tasks/enroll/ingest.py);
elsewhere the alignment is used as estimated, and the ingest report says so.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import pairwise

PHONES_PER_S = {"en": 12.5, "ja": 13.3}  # measured, see above
DEFAULT_PHONES_PER_S = 12.5  # zh, ko, yue: assumed
MAX_RATE_FACTOR = 2.0  # estimated vs measured speech length beyond this factor: not this file's text
TOLERANCE = 0.4  # a slice boundary may sit this share of the shorter neighbouring sentence from its end
MAX_PIECE_S = 20.0  # merged slices longer than this are not kept (cannot be cut between sentences)

_END = re.compile(r"[。！？!?…；;]+[」』）)\"'”’]*|(?<!\d)\.(?!\d)[\"'”’)]*")
_MARKS = set(",.!?…-'\"[]#^$_ ，。！？；;：:、「」『』（）()") | {"SP", "SP2", "SP3", "UNK"}


class AlignmentError(ValueError):
    """The transcript cannot be aligned to the file's slices; the message says why."""


@dataclass(frozen=True)
class Piece:
    first: int  # index of the first slice (inclusive)
    last: int  # index of the last slice (inclusive): slices first..last are one utterance
    text: str


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`, each with the marks that end it; text after the last mark is one more."""
    out, start = [], 0
    for m in _END.finditer(text):
        out.append(text[start:m.end()].strip())
        start = m.end()
    out.append(text[start:].strip())
    return [s for s in out if re.sub(r"\W+", "", s)]


def _phones(sentence: str, language: str) -> int:
    from voicefleet.model.text.frontend import clean_text
    from voicefleet.model.text.language import segment

    return sum(1 for seg in segment(sentence, language) for p in clean_text(seg.text, seg.lang)[0] if p not in _MARKS)


def sentence_weights(sentences: list[str], language: str) -> tuple[list[float], str]:
    """Each sentence's estimated length in phones (or in characters, for every sentence, when the
    frontend cannot read one), and the unit used."""
    try:
        counts = [float(_phones(s, language)) for s in sentences]
    except Exception:  # noqa: BLE001 - any frontend failure: fall back to characters
        counts = []
    if counts and all(c > 0 for c in counts):
        return counts, "phones"
    return [float(len(re.sub(r"\W+", "", s))) for s in sentences], "characters"


def align_transcript(text: str, language: str, speech_s: list[float], max_piece_s: float = MAX_PIECE_S
                     ) -> tuple[list[Piece], list[str]]:
    """Whole sentences of `text` for consecutive slices holding `speech_s` seconds of speech each.

    Returns (pieces, problems): pieces cover every slice in order (merged where a boundary would cut
    a sentence), except pieces over `max_piece_s`, which are left out and named in problems.
    Raises AlignmentError when the text cannot be this audio's (length) or has nothing to align.
    """
    sentences = split_sentences(text)
    total = float(sum(speech_s))
    if not sentences or total <= 0:
        raise AlignmentError("the transcript has no sentences" if not sentences else "no speech to align to")
    weights, unit = sentence_weights(sentences, language)
    rate = PHONES_PER_S.get(language, DEFAULT_PHONES_PER_S)
    if unit == "phones":
        estimate = sum(weights) / rate
        if not 1 / MAX_RATE_FACTOR <= total / estimate <= MAX_RATE_FACTOR:
            raise AlignmentError(f"the transcript ({sum(weights):.0f} phones, ~{estimate:.1f} s at {rate:g} phones/s) "
                                 f"does not fit the {total:.1f} s of speech in the file")
    scale = total / sum(weights)  # seconds per unit, in this file
    ends = [0.0]
    for w in weights:
        ends.append(ends[-1] + w * scale)  # estimated time at each sentence boundary, ends[-1] == total
    # keep the slice boundaries that land near a sentence boundary, monotonically
    cuts: list[tuple[int, int]] = []  # (slice boundary j: slices j.. start a new piece, sentence boundary k)
    at, prev_k = 0.0, 0
    for j in range(1, len(speech_s)):
        at += speech_s[j - 1]
        best = min(range(prev_k + 1, len(sentences)), key=lambda k: abs(ends[k] - at), default=None)
        if best is None:
            break
        shorter = min(ends[best] - ends[best - 1], ends[best + 1] - ends[best])
        if abs(ends[best] - at) <= TOLERANCE * shorter:
            cuts.append((j, best))
            prev_k = best
    bounds = [(0, 0)] + cuts + [(len(speech_s), len(sentences))]
    pieces, problems = [], []
    for (j0, k0), (j1, k1) in pairwise(bounds):
        seconds = sum(speech_s[j0:j1])
        piece = Piece(j0, j1 - 1, ("" if language in ("zh", "ja", "yue") else " ").join(sentences[k0:k1]))
        if seconds > max_piece_s:
            problems.append(f"{seconds:.1f} s of speech could not be cut between sentences "
                            f"(> {max_piece_s:g} s; text {piece.text[:60]!r}...); left out")
            continue
        pieces.append(piece)
    return pieces, problems
