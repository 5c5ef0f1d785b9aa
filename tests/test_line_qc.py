"""Per-line QC on real speech (piper's joe voice, Kokoro's alpha voice) with the shared scorers."""
from __future__ import annotations

import json

import numpy as np
import pytest

from voicefleet.model.synthesizer import LineAudio, LineRequest, LineSettings, SynthesisError
from voicefleet.tasks.render.checked_lines import QUALITY_COLUMNS, render_checked
from voicefleet.tasks.render.line_qc import LineQC, QCConfig, QCConfigError, retry_seed
from voicefleet.tasks.render.postprocess import PostConfig, loudness_lufs

JOE_TEXT = "The morning bus was late again, so I walked to work."
OTHER_TEXT = "Fresh bread smells wonderful on a rainy afternoon."
SR = 22050


@pytest.fixture(scope="module")
def voices():
    from voicefleet.flows.demo.voices import DEMO_VOICES, load_engine

    return {"joe": (load_engine("piper"), DEMO_VOICES[0]), "alpha": (load_engine("kokoro"), DEMO_VOICES[1])}


def speak(voices, who: str, text: str, speed: float = 1.0) -> np.ndarray:
    from voicefleet.tasks.measure.audio import resample

    engine, voice = voices[who]
    return resample(engine.speak(voice, text, None, "en", speed), engine.sample_rate, SR)


@pytest.fixture(scope="module")
def qc(voices):
    checker = LineQC(QCConfig(mode="enforce", retries=2))
    checker.add_reference("joe", speak(voices, "joe", "Please put the green folder on the top shelf."), SR)
    return checker


class FlakyVoice:
    """A synthesizer stand-in speaking with a real TTS voice; `bad(seed, text)` picks a broken render."""

    def __init__(self, voices, who="joe", bad=lambda seed, text: None):
        self.voices, self.who, self.bad, self.calls = voices, who, bad, []

    def __call__(self, reqs):
        self.calls.append([(r.settings.seed, r.settings.speed) for r in reqs])
        out = []
        for r in reqs:
            if r.language not in ("en",):
                out.append(SynthesisError(f"language {r.language!r} not supported"))
                continue
            kind = self.bad(r.settings.seed, r.text)
            wav = speak(self.voices, self.who, OTHER_TEXT if kind == "wrong words" else r.text, r.settings.speed)
            out.append(LineAudio(wav, SR, 1, 100, truncated=kind == "truncated"))
        return out


def req(text=JOE_TEXT, seed=7, language="en"):
    return LineRequest(text, language, LineSettings(seed=seed))


def test_a_line_failing_qc_is_rendered_again_with_a_new_seed_and_every_attempt_recorded(voices, qc):
    synth = FlakyVoice(voices, bad=lambda seed, text: "wrong words" if seed == 7 else None)
    [line] = render_checked(synth, [(req(), None)], PostConfig(), qc, "joe", "enforce")
    assert [c[0][0] for c in synth.calls] == [7, retry_seed(7, 1)]
    assert line.error is None and line.audio is not None
    cols = line.columns
    assert set(cols) == set(QUALITY_COLUMNS)
    assert cols["attempts"] == 2 and cols["qc_passed"] is True and cols["wer"] <= 0.35
    log = json.loads(cols["attempt_log"])
    assert [e["attempt"] for e in log] == [1, 2] and log[0]["seed"] == 7 and log[1]["seed"] == retry_seed(7, 1)
    assert log[0]["passed"] is False and log[0]["wer"] > 0.35 and "WER" in log[0]["reasons"][0]
    assert "bread" in log[0]["asr_text"].lower()
    assert log[1]["passed"] is True and log[1]["speaker_similarity"] >= 0.6
    assert abs(loudness_lufs(line.audio.wav, SR) - (-23.0)) <= 1.0


def test_a_line_that_never_passes_fails_after_the_retries_with_its_reasons(voices, qc):
    synth = FlakyVoice(voices, bad=lambda seed, text: "truncated")
    [line] = render_checked(synth, [(req(), None)], PostConfig(), qc, "joe", "enforce")
    assert line.audio is None and len(synth.calls) == 3
    assert line.error.startswith("quality check failed after 3 attempt(s)") and "truncated" in line.error
    assert line.columns["attempts"] == 3 and line.columns["qc_passed"] is False
    assert len({e["seed"] for e in json.loads(line.columns["attempt_log"])}) == 3


def test_report_mode_records_the_failure_and_never_retries(voices, qc):
    synth = FlakyVoice(voices, who="alpha")  # another speaker than the voice's reference
    [line] = render_checked(synth, [(req(), None)], PostConfig(), qc, "joe", "report")
    assert len(synth.calls) == 1 and line.audio is not None and line.error is None
    assert line.columns["qc_passed"] is False and line.columns["attempts"] == 1
    assert line.columns["speaker_similarity"] < 0.6
    assert "speaker similarity" in line.columns["qc_reasons"]


def test_off_mode_measures_nothing_but_still_postprocesses(voices, qc):
    synth = FlakyVoice(voices, bad=lambda seed, text: "wrong words")
    [line] = render_checked(synth, [(req(), None)], PostConfig(), qc, "joe", "off")
    assert line.columns["qc_passed"] is None and line.columns["wer"] is None
    assert line.columns["loudness_lufs"] == pytest.approx(-23.0, abs=1.0)


def test_no_asr_for_the_language_is_recorded_as_not_measured_never_guessed(voices, qc):
    from voicefleet.tasks.render.postprocess import postprocess

    wav = speak(voices, "joe", JOE_TEXT)
    result = qc.check("joe", "你好，世界。", "zh", wav, SR, False, postprocess(wav, SR, PostConfig()))
    assert result.metrics["wer"] is None and result.metrics["asr_text"] is None
    assert any("WER not measured" in n and "'zh'" in n for n in result.notes)
    assert result.passed, result.reasons


def test_clipping_and_silence_are_caught(voices, qc):
    from voicefleet.tasks.render.postprocess import postprocess

    wav = speak(voices, "joe", JOE_TEXT)
    hot = np.clip(wav * 20, -1, 1)
    r = qc.check("joe", JOE_TEXT, "en", hot, SR, False, postprocess(hot, SR, PostConfig()))
    assert any(x.startswith("clipping") for x in r.reasons)
    gaps = np.concatenate([wav[: SR // 2], np.zeros(4 * SR, np.float32), wav[-SR // 2:]])
    r = qc.check("joe", JOE_TEXT, "en", gaps, SR, False, postprocess(gaps, SR, PostConfig()))
    assert any(x.startswith("silence") for x in r.reasons)
    quiet = wav * 1e-3
    r = qc.check("joe", JOE_TEXT, "en", quiet, SR, False, postprocess(quiet, SR, PostConfig()))
    assert any(x.startswith("too quiet") for x in r.reasons)


def test_target_seconds_met_by_speed_first_then_stretch(voices, qc):
    natural = render_checked(FlakyVoice(voices), [(req(), None)], PostConfig(), None, "joe", "off")[0]
    target = round(natural.audio.duration_s * 0.7, 2)  # 30 % shorter: more than the stretch alone allows
    synth = FlakyVoice(voices)
    [line] = render_checked(synth, [(req(), target)], PostConfig(), None, "joe", "off")
    assert len(synth.calls) == 2 and synth.calls[1][0][1] > 1.2  # re-synthesised faster
    log = json.loads(line.columns["attempt_log"])[0]
    # within the stretch bound; it may sit on it, and |0.85 - 1| is 0.15000000000000002 in floats
    assert log["speed_refit"] is True and abs(log["stretch"] - 1) <= PostConfig().max_stretch + 1e-9
    assert abs(line.columns["duration_deviation_s"]) <= PostConfig().duration_tolerance_s
    assert line.columns["target_seconds"] == target


def test_a_synthesis_error_ends_the_line_at_once(voices, qc):
    synth = FlakyVoice(voices)
    out = render_checked(synth, [(req(language="tlh"), None), (req(seed=8), None)], PostConfig(), qc, "joe", "enforce")
    assert out[0].audio is None and "tlh" in out[0].error and out[0].columns["attempts"] == 1
    assert out[1].audio is not None and len(synth.calls) == 1


def test_auto_mode_reports_only_for_untrained_voices():
    cfg = QCConfig()
    assert cfg.mode == "auto" and cfg.mode_for(untrained=True) == "report" and cfg.mode_for(untrained=False) == "enforce"
    assert QCConfig(mode="enforce").mode_for(untrained=True) == "enforce"


def test_retry_seeds_are_deterministic_and_distinct():
    seeds = [retry_seed(123, k) for k in range(5)]
    assert seeds[0] == 123 and len(set(seeds)) == 5 and seeds == [retry_seed(123, k) for k in range(5)]


def test_bad_qc_settings_name_the_value(tmp_path):
    with pytest.raises(QCConfigError, match="'strict'"):
        QCConfig(mode="strict")
    with pytest.raises(QCConfigError, match="42"):
        QCConfig(retries=42)
    p = tmp_path / "qc.json"
    p.write_text(json.dumps({"max_wer": 0.2, "min_simlarity": 0.5}))
    with pytest.raises(QCConfigError, match="min_simlarity"):
        QCConfig.from_file(str(p))
    p.write_text(json.dumps({"max_wer": 0.2, "min_similarity": 0.5}))
    cfg = QCConfig.from_file(str(p), mode="report", max_wer=None)
    assert (cfg.max_wer, cfg.min_similarity, cfg.mode) == (0.2, 0.5, "report")
