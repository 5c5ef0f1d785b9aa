"""Is the consent clip the enrolled speaker saying the consent phrase? Measured, then decided.

Two checks, both with the shared scorers:

* **same speaker** -- GE2E cosine similarity (tasks/measure/speaker.py) of the consent clip to the centroid
  of the speaker's accepted enrollment takes must reach `MIN_SPEAKER_SIMILARITY`;
* **phrase spoken** -- the Whisper tiny.en transcript (tasks/measure/asr.py) must match the consent phrase:
  the character error rate over letters and digits (spaces and punctuation dropped, so "voice
  fleet" matches "voicefleet" and a name's spelling costs a letter, not a word) at most
  `MAX_PHRASE_CER`. A language without an ASR model cannot be checked by machine: the clip then
  needs an admin's recorded approval of exactly that clip and phrase (`voicefleet consent approve`,
  tasks/safety/consent_review.py), named in the verdict. The upload cannot approve itself.

The verdict records which recording was checked (its SHA-256 and fingerprint): what a reinstatement
after a withdrawal compares a new clip against.

Calibration (benchmarks/consent_calibration.py, six distinct pip-shipped voices, 4 takes each):
see the constants' comments. The verdict -- figures included -- is stored with the voice version
(registry version record, ``consent_check``), and a failure rejects the speaker naming them.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np

from voicefleet.tasks.measure.asr import ASR, NoASRModel, normalize_words, wer, word_errors
from voicefleet.tasks.measure.audio import load_audio
from voicefleet.tasks.measure.speaker import SpeakerEmbeddingError, embed, mean_embedding, similarity
from voicefleet.tasks.store.storage import Store

from .consent import ClipVerdict, Consent, ConsentClipCheck, ConsentError
from .consent_review import ClipIdentity, approval_for

__all__ = ["MAX_PHRASE_CER", "MIN_SPEAKER_SIMILARITY", "check_consent_clip", "phrase_match", "verdict_record",
           "verify_upload_consent"]

# Measured (consent clip vs centroid of 3 takes, six voices): same speaker 0.913-0.954; joe vs the
# Kokoro voices <= 0.592; the Kokoro voices among themselves up to 0.869 (gongitsune/nezumi: styles
# of one TTS model). The threshold is the midpoint of the gap (0.869, 0.913): margins 0.021 / 0.023.
# Checked on real voices (benchmarks/consent_calibration.py --human: a clip of one speaker's solo
# speech vs the rest of it, two women on one phone call, and a studio man): with 4 s clips same
# speaker 0.913-0.948, the other woman <= 0.846, the man vs either woman 0.51 -- 0.89 separates
# (margins 0.023 / 0.044). Shorter clips score the same speaker lower: at 3 s 0.889-0.942 (1 of 6
# under 0.89), at 2.5 s 0.853-0.905 (4 of 7) while the other woman stays <= 0.832: here a short clip
# was wrongly rejected, never wrongly accepted, and the consent phrase takes ~5 s to say. Kept at 0.89
# (three real speakers are a small sample: recalibrate on your own recordings).
MIN_SPEAKER_SIMILARITY = 0.89
SHORT_CLIP_S = 4.0  # a rejection of a shorter clip says so (the real-voice figures above)
# Measured character error rate: the right phrase 0.00-0.13 (Kokoro's accented English: raw WER up
# to 0.50, mostly the name and "voicefleet"), a wrong sentence by the same voice 0.76-0.81.
MAX_PHRASE_CER = 0.25


def phrase_match(phrase: str, heard: str) -> float:
    """1 - character error rate of `heard` against `phrase` over letters and digits (<= 1, may be < 0)."""
    ref, hyp = list("".join(normalize_words(phrase))), list("".join(normalize_words(heard)))
    if not ref:
        return 1.0 if not hyp else 0.0
    return 1.0 - word_errors(ref, hyp) / len(ref)


def _language(utterance_languages: Sequence[str]) -> str:
    return Counter(utterance_languages).most_common(1)[0][0] if utterance_languages else "en"


def check_consent_clip(consent: Consent, clip: np.ndarray, enrollment: Sequence[np.ndarray], sample_rate: int,
                       *, language: str = "en", clip_path: str = "", asr: ASR | None = None,
                       approval: dict | None = None, identity: ClipIdentity | None = None) -> ConsentClipCheck:
    """Verdict on one consent clip; `clip` and `enrollment` are (T,) float32 mono at `sample_rate`.

    `approval`: an admin's recorded approval of this clip and phrase (consent_review.approval_for), which
    stands in for the phrase check only where no ASR model exists for `language`; `identity`: the
    clip's, kept in the verdict. Returns VERIFIED, or REJECTED with the measured figures in `detail`;
    never raises for a failing check (the caller rejects the speaker with `detail`).
    """
    seconds = len(clip) / sample_rate
    problems = []
    try:
        sim = similarity(embed(clip, sample_rate), mean_embedding([embed(a, sample_rate) for a in enrollment]))
    except SpeakerEmbeddingError as e:
        sim = None
        problems.append(f"consent clip cannot be compared with the enrollment audio: {e}")
    if sim is not None and sim < MIN_SPEAKER_SIMILARITY:
        short = (f" (the clip is only {seconds:.1f} s long: under {SHORT_CLIP_S:.0f} s the right speaker can score below "
                 "the threshold, so record the whole phrase again)") if seconds < SHORT_CLIP_S else ""
        problems.append(f"consent clip does not match the enrolled speaker (similarity {sim:.2f} < "
                        f"{MIN_SPEAKER_SIMILARITY:.2f}){short}")
    match, heard, how = None, None, ""
    asr = asr or ASR()
    try:
        heard = asr.transcribe(clip, sample_rate, language).text
        match = phrase_match(consent.consent_phrase, heard)
        how = f"ASR heard {heard!r} (character error rate {1 - match:.2f}, WER {wer(consent.consent_phrase, heard):.2f})"
        if 1 - match > MAX_PHRASE_CER:
            problems.append(f"consent clip does not say the consent phrase: {how} > {MAX_PHRASE_CER:.2f}")
    except NoASRModel as e:
        if approval:
            approver = approval["approved_by"]
            how = (f"phrase approved by admin {approver} at {approval['approved_at']} (no ASR model for "
                   f"{language!r})")
        else:
            problems.append(f"the consent phrase cannot be checked: {e}; an admin who listened to the clip must "
                            "approve it: voicefleet consent approve SPEAKER --src ENROLL_ROOT --as ADMIN")
    approved_by = approval["approved_by"] if approval and match is None else None
    known = identity.record() if identity is not None else {}
    if problems:
        return ConsentClipCheck(clip_path, seconds, ClipVerdict.REJECTED, "; ".join(problems), sim, match, **known)
    detail = f"same speaker (similarity {sim:.2f} >= {MIN_SPEAKER_SIMILARITY:.2f}); {how}"
    return ConsentClipCheck(clip_path, seconds, ClipVerdict.VERIFIED, detail, sim, match, **known,
                            approved_by=approved_by)


def verify_speaker_consent(consent: Consent, clip: np.ndarray, enrollment: Sequence[np.ndarray], sample_rate: int,
                           languages: Sequence[str], *, speaker: str, clip_path: str = "",
                           approval: dict | None = None, identity: ClipIdentity | None = None) -> ConsentClipCheck:
    """`check_consent_clip`, raising `ConsentError` (the speaker's rejection) unless VERIFIED."""
    check = check_consent_clip(consent, clip, enrollment, sample_rate, language=_language(languages),
                               clip_path=clip_path, approval=approval, identity=identity)
    if not check.verified:
        raise ConsentError(speaker, check.detail, clip_path)
    return check


def verdict_record(check: ConsentClipCheck) -> dict:
    """The verdict as stored with the version (JSON-ready)."""
    out = asdict(check)
    out["verdict"] = check.verdict.value
    return out


def verify_upload_consent(src: Store, speaker: str, consent: Consent, takes: Sequence[np.ndarray],
                          sample_rate: int, languages: Sequence[str], *, voice_id: str | None = None,
                          reviews: Store | None = None) -> ConsentClipCheck:
    """Enrollment's hook (tasks/enroll/ingest.py): read the speaker's consent clip and verify it against
    the accepted takes (`takes` (T,) float32 at `sample_rate`); `ConsentError` when it fails.

    `reviews`: the store holding admins' approvals (tasks/safety/consent_review.py) for `voice_id`; without
    it no approval exists, and a language without an ASR model is rejected."""
    key = f"{speaker}/{consent.consent_clip}"
    data = src.read_bytes(key)
    clip = load_audio(data, sample_rate, name=consent.consent_clip)
    identity = ClipIdentity.of(data, clip, sample_rate)
    approval = approval_for(reviews, voice_id or speaker, consent, identity.sha256)
    return verify_speaker_consent(consent, clip, takes, sample_rate, languages, speaker=speaker,
                                  clip_path=src.url(key), approval=approval, identity=identity)
