"""The shared scorers (ASR + WER, speaker embedding) on real speech from pip-shipped voices."""
from __future__ import annotations

import numpy as np
import pytest

from voicefleet.flows.demo.voices import DEMO_VOICES, load_engine
from voicefleet.tasks.measure.asr import ASR, NoASRModel, normalize_words, wer
from voicefleet.tasks.measure.speaker import SpeakerEmbeddingError, embed, similarity

SENTENCE = "Please put the green folder on the top shelf."


def test_wer_counts_word_edits_after_normalisation():
    assert wer("The cat sat.", "the cat sat") == 0.0
    assert wer("The cat sat on the mat", "the cat sat on mat") == pytest.approx(1 / 6)
    assert wer("one two", "one two three four") == 1.0
    assert normalize_words("It's 3 o'clock, José!") == ["its", "three", "oclock", "jose"]


def test_asr_refuses_a_language_without_a_model():
    with pytest.raises(NoASRModel, match="'zh'"):
        ASR().transcribe(np.zeros(16000, np.float32), 16000, "zh")


@pytest.fixture(scope="module")
def speech():
    joe, alpha = DEMO_VOICES[0], DEMO_VOICES[1]
    piper, kokoro = load_engine("piper"), load_engine("kokoro")
    other = "The children laughed when the puppy chased its own tail."
    return {"joe_a": (piper.speak(joe, SENTENCE, None, "en", 1.0), piper.sample_rate),
            "joe_b": (piper.speak(joe, other, None, "en", 1.0), piper.sample_rate),
            "alpha_b": (kokoro.speak(alpha, other, None, "en", 1.0), kokoro.sample_rate)}


def test_asr_transcribes_english_speech(speech):
    t = ASR().transcribe(*speech["joe_a"], "en")
    assert wer(SENTENCE, t.text) <= 0.25, t.text  # measured 0.11 ("Place put ...")


def test_speaker_similarity_separates_voices(speech):
    a, b, c = (embed(*speech[k]) for k in ("joe_a", "joe_b", "alpha_b"))
    same, diff = similarity(a, b), similarity(a, c)
    assert same > 0.85 and diff < 0.75 and same - diff > 0.2, (same, diff)  # measured 0.95 / 0.43


def test_speaker_embedding_refuses_silence():
    with pytest.raises(SpeakerEmbeddingError):
        embed(np.zeros(16000, np.float32), 16000)


def test_batched_transcripts_and_embeddings_equal_the_per_clip_ones(speech):
    """Render QC scores a batch of lines at once (one Whisper encoder pass and decode, one GE2E forward):
    the same words and the same embeddings as clip by clip."""
    from voicefleet.tasks.measure.speaker import embed_many

    from voicefleet.tasks.measure.audio import resample

    sr = speech["joe_a"][1]
    clips = [(resample(w, r, sr), sr) for w, r in (speech[k] for k in ("joe_a", "joe_b", "alpha_b"))]
    asr = ASR()
    one = [asr.transcribe(w, sr, "en") for w, _ in clips]
    many = asr.transcribe_many([w for w, _ in clips], sr, "en")
    assert [normalize_words(t.text) for t in many] == [normalize_words(t.text) for t in one], (many, one)
    assert all(np.isfinite(t.avg_logprob) and t.avg_logprob <= 0 and 0 <= t.no_speech_prob <= 1 for t in many), many
    silent = np.zeros(sr // 4, np.float32)
    batched = embed_many([w for w, _ in clips] + [silent], sr)
    assert isinstance(batched[-1], SpeakerEmbeddingError)
    for (w, _), b in zip(clips, batched):
        assert similarity(embed(w, sr), b) > 0.9999
