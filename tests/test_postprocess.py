"""Post-processing on real speech (piper's joe voice): loudness, true peak, silence pads, length."""
from __future__ import annotations

import numpy as np
import pytest

from voicefleet.tasks.render.postprocess import (
    SPEED_RANGE,
    PostConfig,
    loudness_lufs,
    postprocess,
    speech_bounds,
    speed_for_target,
    trim_silence,
    true_peak_dbtp,
)

TEXTS = ["The morning bus was late again, so I walked to work.",
         "Could you tell me where the nearest pharmacy is?",
         "Hi."]


@pytest.fixture(scope="module")
def speech():
    from voicefleet.flows.demo.voices import DEMO_VOICES, load_engine

    engine = load_engine("piper")
    return [(engine.speak(DEMO_VOICES[0], t, None, "en", 1.0), engine.sample_rate) for t in TEXTS]


def _variants(wav):
    """The same speech at very different levels, with long silences around it."""
    sil = np.zeros(12000, np.float32)
    return {"as rendered": wav, "very quiet": wav * 0.01, "clipping hot": np.clip(wav * 8.0, -1, 1),
            "silence around": np.concatenate([sil, wav, sil, sil])}


@pytest.mark.parametrize("target", [-23.0, -16.0])
def test_loudness_within_1_lu_of_target_and_true_peak_under_ceiling(speech, target):
    cfg = PostConfig(loudness_lufs=target, true_peak_dbtp=-1.0)
    for wav, sr in speech:
        for name, x in _variants(wav).items():
            out = postprocess(x, sr, cfg)
            assert abs(loudness_lufs(out.wav, sr) - target) <= 1.0, (name, loudness_lufs(out.wav, sr))
            assert abs(out.loudness_lufs - loudness_lufs(out.wav, sr)) < 1e-6  # what is recorded is what is there
            assert true_peak_dbtp(out.wav) <= -1.0, (name, true_peak_dbtp(out.wav))
            assert out.true_peak_dbtp <= -1.0


def test_true_peak_sees_intersample_peaks():
    sr = 48000
    n = np.arange(4800)
    x = np.sin(2 * np.pi * (sr / 4) * n / sr + np.pi / 4).astype(np.float32)  # samples at ±0.707, wave peaks at 1
    assert 20 * np.log10(np.abs(x).max()) == pytest.approx(-3.01, abs=0.01)
    assert true_peak_dbtp(x) == pytest.approx(0.0, abs=0.2)


def test_silence_trimmed_to_the_pad(speech):
    wav, sr = speech[0]
    x = np.concatenate([np.zeros(sr, np.float32), wav, np.zeros(2 * sr, np.float32)])
    for pad in (0.1, 0.25):
        y = trim_silence(x, sr, pad_s=pad)
        start, end = speech_bounds(y, 40.0)
        assert start == pytest.approx(pad * sr, abs=256 + 1)  # to one analysis hop
        assert len(y) - end == pytest.approx(pad * sr, abs=256 + 1)
        assert len(y) < len(x) - 2.5 * sr


def test_silence_is_left_alone_and_has_no_loudness():
    out = postprocess(np.zeros(16000, np.float32), 16000, PostConfig())
    assert out.loudness_lufs is None and len(out.wav) == 16000


@pytest.mark.parametrize("factor", [0.88, 1.0, 1.12])
def test_target_seconds_met_within_tolerance_by_the_bounded_stretch(speech, factor):
    wav, sr = speech[1]
    cfg = PostConfig()
    natural = len(trim_silence(wav, sr, cfg.pad_s)) / sr
    target = round(natural * factor, 2)
    out = postprocess(wav, sr, cfg, target_seconds=target)
    assert abs(out.duration_s - target) <= cfg.duration_tolerance_s
    assert out.duration_deviation_s == pytest.approx(out.duration_s - target)
    assert abs(out.stretch - 1.0) <= cfg.max_stretch + 1e-9


def test_target_beyond_the_stretch_bound_is_recorded_not_forced(speech):
    wav, sr = speech[1]
    cfg = PostConfig(max_stretch=0.15)
    natural = len(trim_silence(wav, sr, cfg.pad_s)) / sr
    out = postprocess(wav, sr, cfg, target_seconds=natural * 2)
    assert out.stretch == pytest.approx(1.15)
    assert out.duration_deviation_s < -0.5 * natural  # still far short, and the record says so


def test_speed_for_target_is_bounded_to_the_models_range():
    assert speed_for_target(4.0, 2.0) == SPEED_RANGE[1]  # would need 2.0x
    assert speed_for_target(2.0, 4.0) == SPEED_RANGE[0]
    assert speed_for_target(3.3, 3.0) == pytest.approx(1.1)
    assert speed_for_target(3.3, 3.0, speed=1.2) == pytest.approx(1.32)


def test_bad_settings_name_the_value():
    with pytest.raises(ValueError, match="-80"):
        PostConfig(loudness_lufs=-80)
    with pytest.raises(ValueError, match="0.9"):
        PostConfig(max_stretch=0.9)
