"""Enrollment ingest: one speaker's upload folder -> checked 3-10 s utterances with transcripts and a
reference clip, or a rejection listing every reason (speaker, file, measured value, threshold).

Input contract (design.md): `<enroll_root>/<folder>/` holds audio files in any format and name,
optionally `transcripts.jsonl` (`file`, `text`, `language`), and `consent.json`. The folder's name
is the display name; the voice id is derived from it (tasks/enroll/voice_ids.py). The source is never
modified.

    consent -> for each file: decode by content (tasks/enroll/decode.py) -> 16 kHz analysis copy
      -> VAD (tasks/enroll/vad.py) -> per-file checks (tasks/enroll/speech_checks.py) -> slice in pauses
      (tasks/enroll/slicing.py) -> one-speaker check over the whole upload -> speech minimum
      -> transcripts (given, aligned to a long file's slices (tasks/enroll/align.py), or ASR,
      tasks/enroll/transcribe.py) -> reference clip

A file that fails is reported by name with its reason and left out; the rest of the speaker goes
on. The speaker is rejected when what is left is not enough clean speech of one voice.
"""
from __future__ import annotations

import posixpath
import unicodedata
from dataclasses import dataclass, field

import numpy as np

from voicefleet.tasks.measure.audio import AudioDecodeError, resample
from voicefleet.tasks.safety.consent import (
    CONSENT_FILE,
    Consent,
    ConsentError,
    load_consent,
    parse_consent,
    verify_consent_clip,
)
from voicefleet.tasks.safety.consent_verify import verdict_record, verify_upload_consent
from voicefleet.tasks.safety.watermark import SyntheticAudio, refuse_marked
from voicefleet.tasks.store.ids import InvalidId
from voicefleet.tasks.store.storage import Store

from .align import AlignmentError, align_transcript
from .decode import decode_upload
from .one_speaker import count_speakers, file_speech, speaker_problem
from .slicing import slice_points
from .speech_checks import FileMeasures, QCConfig, measure_file
from .transcribe import TRANSCRIPTS_FILE, NoTranscript, Transcriber, parse_transcripts, speaker_language
from .vad import VAD_RATE, detect
from .voice_ids import voice_id_for

__all__ = ["SR", "QCConfig", "RejectedSpeaker", "SpeakerUpload", "Utterance", "choose_reference",
           "discover_speakers", "ingest_speaker"]

SR = 32000  # utterances are kept at the synthesizer's rate
_SIDE_FILES = {CONSENT_FILE, TRANSCRIPTS_FILE}


class RejectedSpeaker(ValueError):
    """The speaker cannot be enrolled; `reasons` lists each problem a person can act on."""

    def __init__(self, speaker: str, reasons: list[str], measures: list[FileMeasures] | None = None):
        self.speaker, self.reasons, self.measures = speaker, reasons, measures or []
        super().__init__(f"{speaker}: " + "; ".join(reasons))


@dataclass
class Utterance:
    file: str  # "take1.wav" or, for a slice, "take1.wav@12.30-19.85s"
    text: str
    language: str
    audio: np.ndarray  # (T,) float32 mono 32 kHz

    @property
    def seconds(self) -> float:
        return len(self.audio) / SR


@dataclass
class SpeakerUpload:
    speaker_id: str  # the voice id
    consent: Consent
    utterances: list[Utterance]
    reference: Utterance  # 3–10 s clip that prompts the model at inference
    file_problems: list[str] = field(default_factory=list)  # files / utterances left out, with reasons
    display_name: str = ""
    speech_s: float = 0.0  # VAD speech inside the accepted utterances
    measures: list[FileMeasures] = field(default_factory=list)
    files_decoded: int = 0
    asr_calls: int = 0
    consent_check: dict = field(default_factory=dict)  # the consent clip's verdict (tasks/safety/consent_verify.py)

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
                          [f"no {qc.ref_min_s:g}–{qc.ref_max_s:g} s reference clip can be made from the accepted audio"])


def read_consent(src: Store, folder: str, voice_id: str) -> Consent:
    """consent.json of a folder; its speaker_id may be the folder's name or the derived voice id."""
    try:
        return load_consent(folder, store=src)
    except ConsentError as e:
        if "does not match the speaker folder" not in e.reason:
            raise
        consent = parse_consent(src.read_bytes(f"{folder}/{CONSENT_FILE}"), speaker=folder)
        if unicodedata.normalize("NFC", consent.speaker_id) not in (unicodedata.normalize("NFC", folder), voice_id):
            raise
    # the same checks load_consent runs after the id comparison
    if not consent.scope.training:
        raise ConsentError(folder, "scope.training is false")
    if not consent.is_active():
        raise ConsentError(folder, f"consent expired at {consent.expires_at.isoformat()}")
    verify_consent_clip(consent, folder, store=src)
    return consent


def _label(name: str, start: int, end: int, whole: bool) -> str:
    return name if whole else f"{name}@{start / VAD_RATE:.2f}-{end / VAD_RATE:.2f}s"


@dataclass
class _Slice:
    file: str
    label: str
    x16: np.ndarray  # (T,) at 16 kHz
    x32: np.ndarray  # (T,) at 32 kHz
    speech_s: float
    whole_file: bool
    span: tuple[int, int] = (0, 0)  # 16 kHz sample range in the file
    file_x16: np.ndarray | None = None  # the whole file (shared, not copied), to merge slices
    file_x32: np.ndarray | None = None


def _merge(parts: list[_Slice]) -> _Slice:
    """Consecutive slices of one file as one (the pauses between them kept)."""
    if len(parts) == 1:
        return parts[0]
    a, b = parts[0].span[0], parts[-1].span[1]
    k = SR // VAD_RATE
    f = parts[0]
    return _Slice(f.file, _label(f.file, a, b, False), f.file_x16[a:b], f.file_x32[a * k:b * k],
                  sum(p.speech_s for p in parts), False, (a, b), f.file_x16, f.file_x32)


def _analyse_file(name: str, data: bytes, qc: QCConfig) -> tuple[FileMeasures, list[_Slice], list[tuple[str, np.ndarray]]]:
    """Decode, VAD, check and slice one file -> (measures, slices, speech pieces for the speaker check)."""
    dec = decode_upload(data, name)
    x16 = resample(dec.audio, dec.sample_rate, VAD_RATE)
    probs, segments, mask = detect(x16)
    measures = measure_file(name, x16, dec.sample_rate, dec.audio, mask, qc)
    if not measures.ok:
        return measures, [], []
    ranges = slice_points(segments, probs, len(x16), qc.slice_min_s, qc.slice_max_s, qc.min_utterance_s)
    x32 = resample(dec.audio, dec.sample_rate, SR)
    k = SR // VAD_RATE
    whole = len(ranges) == 1
    slices = [_Slice(name, _label(name, s, e, whole), x16[s:e], x32[s * k:e * k], float(mask[s:e].sum()) / VAD_RATE, whole,
                     (s, e), x16, x32)
              for s, e in ranges]
    return measures, slices, [(name, file_speech(x16, segments))]


def _given_texts(slices: list[_Slice], given: dict, default_language: str, transcriber: Transcriber,
                 problems: list[str]) -> list[tuple[_Slice, str | None, str]]:
    """(slice, text or None for ASR, how: "given" | "aligned" | "asr") for every slice, in order.

    A file in one piece takes its given text; a file cut into slices gets its given text aligned to
    them (slices merged where a cut would split a sentence). An alignment that fails is named in
    `problems`, and the file's slices go to ASR (which rejects them where the language has no model).
    """
    out: list[tuple[_Slice, str | None, str]] = []
    i = 0
    while i < len(slices):
        name = slices[i].file
        j = i
        while j < len(slices) and slices[j].file == name:
            j += 1
        group, i = slices[i:j], j
        row = given.get(name)
        language = row.language if row and row.language else default_language
        if not (row and row.text):
            out += [(s, None, "asr") for s in group]
            continue
        if group[0].whole_file:
            out.append((group[0], row.text, "given"))
            continue
        try:
            pieces, why = align_transcript(row.text, language, [s.speech_s for s in group])
        except AlignmentError as e:
            problems.append(f"{name}: its transcript was not used: {e}")
            out += [(s, None, "asr") for s in group]
            continue
        problems += [f"{name}: {w}" for w in why]
        out += [(_merge(group[p.first:p.last + 1]), p.text, "aligned") for p in pieces]
        if not transcriber.supports(language):
            problems.append(f"{name}: transcript aligned to {len(pieces)} slice(s) by sentence length, not checked "
                            f"(no speech recognition for {language!r})")
    return out


def ingest_speaker(src: Store, speaker: str, qc: QCConfig | None = None, voice_id: str | None = None,
                   transcriber: Transcriber | None = None, reviews: Store | None = None) -> SpeakerUpload:
    """Decode and check one speaker folder; raises RejectedSpeaker with every reason found.

    Args:
        speaker: the folder's name under the enrollment root (any name a person gives).
        voice_id: the id to register under; derived from the name when not given.
        transcriber: ASR for files without transcripts (built from `qc.asr_model` when needed).
        reviews: the voicefleet store, where admins' consent approvals are kept
            (tasks/safety/consent_review.py); without it a language with no ASR model is rejected.
    """
    qc = qc or QCConfig()
    try:
        voice_id = voice_id or voice_id_for(speaker)
    except InvalidId as e:
        raise RejectedSpeaker(speaker, [str(e)]) from e
    try:
        consent = read_consent(src, speaker, voice_id)
    except ConsentError as e:
        raise RejectedSpeaker(voice_id, [e.reason]) from e
    given: dict = {}
    problems: list[str] = []
    if src.exists(f"{speaker}/{TRANSCRIPTS_FILE}"):
        given, problems = parse_transcripts(src.read_text(f"{speaker}/{TRANSCRIPTS_FILE}"))
    default_language = speaker_language(given, qc.default_language)
    skip = _SIDE_FILES | {posixpath.basename(consent.consent_clip)}
    files = [k for k in src.list(speaker)
             if posixpath.dirname(k) == speaker and posixpath.basename(k) not in skip
             and not posixpath.basename(k).startswith(".")]
    if not files:
        raise RejectedSpeaker(voice_id, ["no audio files found"] + problems)

    measures: list[FileMeasures] = []
    slices: list[_Slice] = []
    pieces: list[tuple[str, np.ndarray]] = []
    decoded = 0
    for key in files:
        name = posixpath.basename(key)
        try:
            decoded += 1
            m, file_slices, file_pieces = _analyse_file(name, src.read_bytes(key), qc)
        except AudioDecodeError as e:
            problems.append(f"{e} (file skipped)")
            continue
        measures.append(m)
        problems += m.problems
        slices += file_slices
        pieces += file_pieces

    def reject(extra: list[str], after_files: bool = False):
        """The deciding reason first (two voices, consent, synthetic audio), then what was left out along
        the way; a shortfall of speech (`after_files`) comes after the file problems that caused it."""
        raise RejectedSpeaker(voice_id, problems + extra if after_files else extra + problems, measures)

    if not measures:
        reject([f"no decodable audio among {len(files)} file(s)"], after_files=True)
    speech = sum(s.speech_s for s in slices)
    if speech < qc.min_speech_s:
        reject([f"only {speech:.1f} s of clean speech (< {qc.min_speech_s:g} s)"], after_files=True)
    count = count_speakers(pieces, qc)
    bad_speakers = speaker_problem(count, qc)
    if bad_speakers:
        reject([bad_speakers])

    transcriber = transcriber or Transcriber.for_qc(qc)
    asr_before = transcriber.calls
    utts: list[Utterance] = []
    for s, text, how in _given_texts(slices, given, default_language, transcriber, problems):
        row = given.get(s.file)
        language = (row.language if row and row.language else default_language)
        try:
            if how == "aligned" and transcriber.supports(language):
                reason = transcriber.check_aligned(s.x16, text, language, s.label)
                if reason:
                    raise NoTranscript(reason)
            utts.append(Utterance(s.label, text if text is not None else transcriber.recognise(s.x16, language, s.label),
                                  language, s.x32))
        except NoTranscript as e:
            problems.append(str(e))
            speech = max(0.0, speech - s.speech_s)
    if speech < qc.min_speech_s:
        reject([f"only {speech:.1f} s of clean speech with a transcript (< {qc.min_speech_s:g} s)"], after_files=True)
    if speech < qc.recommended_speech_s:
        problems.append(f"{speech:.1f} s of clean speech is below the recommended {qc.recommended_speech_s:g} s")
    # voice safety: no rendered (watermarked) audio; the consent clip is this speaker saying the phrase
    try:
        if not qc.allow_synthetic:
            refuse_marked([(u.file, u.audio) for u in utts], SR)
        check = verify_upload_consent(src, speaker, consent, [u.audio for u in utts], SR, [u.language for u in utts],
                                      voice_id=voice_id, reviews=reviews)
    except SyntheticAudio as e:
        reject([str(e)])
    except ConsentError as e:
        reject([e.reason])
    try:
        ref = choose_reference(utts, qc)
    except RejectedSpeaker as e:
        reject(e.reasons)
    return SpeakerUpload(voice_id, consent, utts, ref, problems, display_name=speaker, speech_s=round(speech, 2),
                         measures=measures, files_decoded=decoded, asr_calls=transcriber.calls - asr_before,
                         consent_check=verdict_record(check))
