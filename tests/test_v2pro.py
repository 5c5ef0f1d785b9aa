"""v2Pro / v2ProPlus on tiny models: configs, the speaker-embedding path, file tags, round trips,
the discriminator file. Equivalence with the official code is tests/test_reference_equivalence_v2pro.py."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from reference_case import v2pro_manifest

from voicefleet.model.checkpoint import (
    CheckpointError,
    load_discriminator,
    load_sovits,
    load_sovits_safetensors,
    load_sv,
    save_sovits,
    save_sv,
    sovits_checkpoint,
    to_safetensors,
)
from voicefleet.model.config import SoVITSConfig
from voicefleet.model.discriminator import MultiPeriodDiscriminator
from voicefleet.model.sovits import SynthesizerTrn
from voicefleet.model.spectrogram import spectrogram
from voicefleet.model.sv import ERes2NetV2, SpeakerEncoder
from voicefleet.model.synthesizer import LineRequest, LineSettings, Synthesizer, VoicePrompt, reference_spectrogram
from voicefleet.model.train import SoVITSBatch, SoVITSTrainer

TAGS = {"v2Pro": b"05", "v2ProPlus": b"06"}


def tiny(version: str, seed: int = 0) -> SynthesizerTrn:
    torch.manual_seed(seed)
    return SynthesizerTrn(SoVITSConfig.tiny(version)).eval()


@pytest.mark.parametrize("version,kind", [("v2Pro", "v2pro"), ("v2ProPlus", "v2proplus")])
def test_official_sizes_match_the_shipped_config(version, kind):
    m = v2pro_manifest(kind)
    ours, theirs = SoVITSConfig.for_version(version), SoVITSConfig.from_official(m["config"])
    assert ours == theirs
    assert SoVITSConfig.from_official(ours.to_official()) == ours


def test_tiny_speaker_encoder_fits_tiny_sovits():
    net = ERes2NetV2.tiny().eval()
    assert net.embedding_dim == SoVITSConfig.tiny("v2Pro").sv_dim == 1280
    emb = SpeakerEncoder(net)(torch.randn(2, 32000 * 3) * 0.1)
    assert emb.shape == (2, 1280) and torch.isfinite(emb).all()


@pytest.mark.parametrize("version", list(TAGS))
def test_file_tag_and_round_trip(version):
    model = tiny(version)
    buf = io.BytesIO()
    save_sovits(model, buf, dtype=None)
    data = buf.getvalue()
    assert data[:2] == TAGS[version]
    loaded = load_sovits(data)
    assert loaded.version == version and loaded.config == model.cfg
    a, b = sovits_checkpoint(model, dtype=None)["weight"], sovits_checkpoint(loaded.model, dtype=None)["weight"]
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    again = load_sovits_safetensors(to_safetensors(sovits_checkpoint(model, dtype=None)))
    assert again.version == version


def test_v2_files_stay_untagged():
    buf = io.BytesIO()
    save_sovits(tiny("v2"), buf)
    assert buf.getvalue()[:2] == b"PK" and load_sovits(buf.getvalue()).version == "v2"


def test_speaker_embedding_is_required_and_averaged():
    model = tiny("v2Pro")
    spec = [torch.rand(1, model.cfg.spec_channels, 30) for _ in range(2)]
    sv = [torch.randn(1, model.cfg.sv_dim) for _ in range(2)]
    with pytest.raises(ValueError, match="speaker embedding"):
        model.style(spec[0])
    with torch.no_grad():
        mean = (model.style(spec[0], sv_emb=sv[0]) + model.style(spec[1], sv_emb=sv[1])) / 2
        assert torch.allclose(model.style(spec, sv_emb=sv), mean, atol=1e-6)
        other = model.style(spec[0], sv_emb=sv[1])
    assert not torch.allclose(other, model.style(spec[0], sv_emb=sv[0]))
    with pytest.raises(ValueError, match="no speaker embedding"):
        tiny("v2").style(spec[0], sv_emb=sv[0])


def test_training_pass_uses_each_utterances_embedding():
    torch.manual_seed(0)
    model = tiny("v2ProPlus").train()
    c = model.cfg
    B, T = 2, 40
    spec, lengths = torch.rand(B, c.spec_channels, T), torch.tensor([T, T - 6])
    text, text_lengths = torch.randint(0, c.n_symbols, (B, 7)), torch.tensor([7, 5])
    codes = torch.randint(0, c.codebook_size, (1, B, T // 2))
    sv = torch.randn(B, c.sv_dim, requires_grad=True)
    o, *_ = model(None, spec, lengths, text, text_lengths, codes=codes, sv_emb=sv)
    o.abs().mean().backward()
    assert model.sv_emb.weight.grad is not None and sv.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="speaker embedding"):
        model(None, spec, lengths, text, text_lengths, codes=codes)


def test_discriminator_file_is_checked_against_the_version(tmp_path):
    pro = MultiPeriodDiscriminator(32, periods=SoVITSConfig.tiny("v2Pro").disc_periods)
    torch.save({"weight": pro.state_dict(), "info": "x"}, tmp_path / "s2Dv2Pro.pth")
    state = load_discriminator(tmp_path / "s2Dv2Pro.pth", "v2Pro", channels_div=32)
    assert set(state) == set(pro.state_dict())
    with pytest.raises(CheckpointError, match="unexpected"):  # v2 has no periods 17 and 23
        load_discriminator(tmp_path / "s2Dv2Pro.pth", "v2", channels_div=32)


def test_tiny_sv_round_trip_and_refusals(tmp_path):
    net = ERes2NetV2.tiny()
    save_sv(net, tmp_path / "sv.ckpt")
    again = load_sv(tmp_path / "sv.ckpt", ERes2NetV2.tiny())
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in net.state_dict().items())
    with pytest.raises(CheckpointError, match="missing"):
        load_sv(tmp_path / "sv.ckpt")  # the official architecture does not fit a tiny file
    state = net.state_dict()
    for change, match in [("extra", "unexpected"), ("shape", "shape")]:
        bad = dict(state)
        if change == "extra":
            bad["seg_2.weight"] = torch.zeros(4, 4)
        else:
            bad["seg_1.weight"] = torch.zeros(192, 7)
        torch.save(bad, tmp_path / "bad.ckpt")
        with pytest.raises(CheckpointError, match=match):
            load_sv(tmp_path / "bad.ckpt", ERes2NetV2.tiny())
    torch.save({"weight": {}, "config": object.__new__(ERes2NetV2)}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="refused"):
        load_sv(tmp_path / "evil.ckpt")


def test_fine_tuning_step_with_per_utterance_embeddings():
    torch.manual_seed(0)
    cfg = SoVITSConfig.tiny("v2ProPlus")
    net = SynthesizerTrn(cfg)
    t = torch.arange(16000) / 32000
    wav = (0.5 * torch.sin(2 * torch.pi * 220 * t)).reshape(1, 1, -1).repeat(2, 1, 1)
    spec = spectrogram(wav[:, 0], cfg.filter_length, cfg.hop_length, cfg.win_length)
    frames = spec.shape[-1]
    sv = SpeakerEncoder(ERes2NetV2.tiny().eval())(wav[:, 0])  # one embedding per utterance, as the reference
    batch = SoVITSBatch(ssl=torch.randn(2, cfg.ssl_dim, frames), spec=spec, spec_lengths=torch.tensor([frames] * 2),
                        wav=wav, text=torch.randint(0, 732, (2, 10)), text_lengths=torch.tensor([10, 10]), sv_emb=sv)
    trainer = SoVITSTrainer(net, lr=2e-3)
    assert len(trainer.net_d.discriminators) == 1 + len(cfg.disc_periods) == 8  # periods 17 and 23 added
    before = net.sv_emb.weight.detach().clone()
    out = trainer.step(batch)
    assert all(np.isfinite(v) for v in out.values())
    assert not torch.equal(before, net.sv_emb.weight)


def test_synthesizer_uses_the_voices_stored_embedding():
    from voicefleet.model.text.frontend import TextFrontend
    from voicefleet.tasks.voices.base_model import tiny_base

    base = tiny_base()
    sovits = tiny("v2Pro")
    t = np.arange(32000 * 4) / 32000
    ref = (0.3 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 2 * t) > 0)).astype(np.float32)
    tokens = np.arange(100) % 1024
    sv = SpeakerEncoder(ERes2NetV2.tiny().eval())(torch.from_numpy(ref))[0].numpy()
    synth = Synthesizer(TextFrontend())
    with pytest.raises(ValueError, match="speaker embedding"):
        synth.load_voice(base.gpt, sovits, VoicePrompt(ref, "A short reference sentence.", "en", tokens))
    voice = synth.load_voice(base.gpt, sovits, VoicePrompt(ref, "A short reference sentence.", "en", tokens, sv_emb=sv))
    with torch.no_grad():
        expected = sovits.style(reference_spectrogram(ref, sovits), sv_emb=torch.from_numpy(sv)[None])
    assert torch.equal(voice.ge, expected)
    out = synth.synthesize(voice, [LineRequest("Hello there.", "en", LineSettings(max_tokens_per_phone=2.5))])[0]
    assert out.wav.size > 0 and np.isfinite(out.wav).all()
