"""The Synthesizer facade: a voice + a batch of lines -> 32 kHz audio, batch-invariant and seeded."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from voicefleet.model.ssl import SSLExtractor
from voicefleet.model.synthesizer import (
    LineRequest,
    LineSettings,
    ReferenceClipError,
    SynthesisError,
    Synthesizer,
    VoicePrompt,
    prompt_tokens,
)
from voicefleet.model.text.frontend import TextFrontend
from voicefleet.tasks.voices.base_model import tiny_base


def S(**kw):
    """Settings with a tight length guard: the random-weight tiny GPT rarely ends on its own."""
    return LineSettings(max_tokens_per_phone=2.5, **kw)


@pytest.fixture(scope="module")
def setup():
    base = tiny_base()
    t = np.arange(32000 * 4) / 32000
    ref = (0.3 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 2 * t) > 0)).astype(np.float32)
    ref16 = ref[::2].copy()
    tokens = prompt_tokens(base.ssl, base.sovits, ref16)
    synth = Synthesizer(TextFrontend(), max_batch=8)
    voice = synth.load_voice(base.gpt, base.sovits, VoicePrompt(ref, "A short reference sentence.", "en", tokens))
    return synth, voice, base


def test_prompt_tokens_are_25hz_codes(setup):
    _, voice, base = setup
    # 4 s clip + the reference's 0.6 s silent tail at 16 kHz -> ~4.6 s * 25 Hz
    assert abs(len(voice.prompt_tokens) - 115) <= 2
    assert int(voice.prompt_tokens.max()) < 1024
    with pytest.raises(ReferenceClipError, match="must be 3–10 s"):
        prompt_tokens(base.ssl, base.sovits, np.zeros(16000, np.float32))


def test_ssl_extractor_loads_from_a_local_directory(tmp_path):
    ssl = SSLExtractor.tiny(dim=32, seed=3)
    ssl.save_pretrained(tmp_path)
    again = SSLExtractor.from_pretrained(tmp_path)
    x = torch.randn(1, 16000)
    feats = again(x)
    assert feats.shape[:2] == (1, 32) and abs(feats.shape[2] - 50) <= 1  # 50 Hz
    assert torch.equal(feats, ssl(x))
    with pytest.raises(FileNotFoundError):
        SSLExtractor.from_pretrained(tmp_path / "missing")


def test_batch_equals_single_lines(setup):
    synth, voice, _ = setup
    lines = [LineRequest("Hello there.", "en", S(seed=1)),
             LineRequest("The quick brown fox jumps over the lazy dog. It was fast!", "en", S(seed=2)),
             LineRequest("你好，世界。", "zh", S(seed=3)),
             LineRequest("Mixed 中文 and English.", "auto", S(seed=4))]
    together = synth.synthesize(voice, lines)
    wide = Synthesizer(synth.frontend, max_batch=8, sovits_batch=4).synthesize(voice, lines)  # batched SoVITS too
    for a, b in zip(together, wide):
        assert len(a.wav) == len(b.wav) and np.allclose(a.wav, b.wav, atol=1e-4)
    for line, out in zip(lines, together):
        alone = synth.synthesize(voice, [line])[0]
        assert out.sample_rate == 32000 and out.wav.dtype == np.float32
        assert len(alone.wav) == len(out.wav)
        assert np.allclose(alone.wav, out.wav, atol=1e-4), np.abs(alone.wav - out.wav).max()
    assert together[1].sentences == 2  # cut into sentences, joined with a pause


def test_bad_lines_fail_alone(setup):
    synth, voice, _ = setup
    out = synth.synthesize(voice, [LineRequest("   ", "en", S()), LineRequest("Fine line.", "en", S()),
                                   LineRequest("hi", "xx", S())])
    assert isinstance(out[0], SynthesisError) and "nothing to speak" in str(out[0])
    assert not isinstance(out[1], Exception) and len(out[1].wav) > 0
    assert isinstance(out[2], SynthesisError) and "xx" in str(out[2])


def test_seed_and_speed(setup):
    synth, voice, _ = setup
    a = synth.synthesize(voice, [LineRequest("Seeded line.", "en", S(seed=5))])[0]
    b = synth.synthesize(voice, [LineRequest("Seeded line.", "en", S(seed=5))])[0]
    assert np.array_equal(a.wav, b.wav)
    slow = synth.synthesize(voice, [LineRequest("Seeded line.", "en", S(seed=5, speed=0.5))])[0]
    assert len(slow.wav) > 1.8 * len(a.wav)  # same tokens, frames stretched by 1/speed
