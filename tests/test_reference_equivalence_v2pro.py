"""v2Pro / v2ProPlus against the reference code's own outputs (../shared/reference/v2pro/case_*.npz).

As tests/test_reference_equivalence.py does for v2: each case names its seed; the three official-format
checkpoints (SoVITS v2Pro `05`-tagged, v2ProPlus `06`-tagged, the bare sv state dict) are rebuilt from
the manifests with that seed, loaded strictly by our loaders and run in float32, at the v2 tolerances
(spectrogram-like features: relative 1e-4; everything else: max abs 1e-3; tokens: equal). Nothing about
a case is remembered here, so other case files can be dropped in beside case_seed0.npz.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from reference_case import ref_weights as _ref_weights
from reference_case import v2pro_case_files, v2pro_manifest

from voicefleet.model.checkpoint import (
    CheckpointError,
    load_sovits,
    load_sv,
    safe_torch_load,
    save_sovits,
    save_sv,
    sovits_checkpoint,
)
from voicefleet.model.spectrogram import spectrogram
from voicefleet.model.sv import SpeakerEncoder, fbank, resample_to_16k

CASES = v2pro_case_files()
VERSIONS = {"v2pro": ("v2Pro", b"05"), "v2proplus": ("v2ProPlus", b"06")}


@pytest.fixture(scope="module", params=CASES, ids=[p.stem for p in CASES])
def case(request, tmp_path_factory):
    data = dict(np.load(request.param))
    seed = int(data["seed"])
    d = tmp_path_factory.mktemp(request.param.stem)
    rw = _ref_weights()
    files = {"sv": d / "pretrained_eres2netv2w24s4ep4.ckpt", "v2pro": d / "s2Gv2Pro.pth",
             "v2proplus": d / "s2Gv2ProPlus.pth"}
    for kind, path in files.items():
        rw.write_official_checkpoint(v2pro_manifest(kind), seed, path)
    sv = load_sv(files["sv"])
    sovits = {v: load_sovits(files[v]) for v in VERSIONS}
    return data, sv, sovits, files


def t(x):
    return torch.from_numpy(np.asarray(x))


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# ---------------------------------------------------------------- speaker embedding
def test_resampling_to_16k(case):
    data = case[0]
    wav16 = resample_to_16k(t(data["ref_wav_32k"]))
    assert wav16.shape == data["ref_wav_16k"].shape
    assert (wav16 - t(data["ref_wav_16k"])).abs().max().item() <= 1e-5


def test_kaldi_fbank(case):
    data = case[0]
    feats = fbank(t(data["ref_wav_16k"]))
    assert feats.shape == data["sv_fbank"].shape
    assert rel(feats, t(data["sv_fbank"])) <= 1e-4


def test_sv_embedding_from_fbank(case):
    data, sv, _, _ = case
    with torch.no_grad():
        emb = sv.embed(t(data["sv_fbank"]))
    assert emb.shape == data["sv_emb"].shape
    assert (emb - t(data["sv_emb"])).abs().max().item() <= 1e-3


def test_sv_embedding_from_32k_clip(case):
    """The whole path the pipeline runs once per voice: 32 kHz clip -> 16 kHz -> fbank -> ERes2NetV2."""
    data, sv, _, _ = case
    emb = SpeakerEncoder(sv)(t(data["ref_wav_32k"]))
    assert (emb - t(data["sv_emb"])).abs().max().item() <= 1e-3


# ---------------------------------------------------------------- SoVITS v2Pro / v2ProPlus
@pytest.mark.parametrize("v", list(VERSIONS))
def test_loaded_version_and_sizes(case, v):
    loaded = case[2][v]
    assert loaded.version == VERSIONS[v][0] and loaded.config.version == VERSIONS[v][0]
    assert loaded.config.gin_channels == 1024
    assert loaded.config.upsample_initial_channel == (768 if v == "v2proplus" else 512)
    assert not loaded.model.has_posterior  # exported voice: no enc_q


def test_reference_spectrogram(case):
    data = case[0]
    assert rel(spectrogram(t(data["ref_wav_32k"])), t(data["ref_spec"])) <= 1e-4


@pytest.mark.parametrize("v", list(VERSIONS))
def test_ssl_to_semantic_codes(case, v):
    data, _, sovits, _ = case
    codes = sovits[v].model.float().extract_latent(t(data["ssl"]))
    assert codes.tolist() == data[f"{v}_latent_codes"].tolist()


@pytest.mark.parametrize("v", list(VERSIONS))
def test_style_vector_with_speaker_embedding(case, v):
    data, _, sovits, _ = case
    model = sovits[v].model.float()
    refer = spectrogram(t(data["ref_wav_32k"]))
    with torch.no_grad():
        ge = model.style([refer], sv_emb=[t(data["sv_emb"])])
        ge512 = model.text_style(ge)
    assert ge.shape == data[f"{v}_ge"].shape and ge512.shape == data[f"{v}_ge512"].shape
    assert (ge - t(data[f"{v}_ge"])).abs().max().item() <= 1e-3
    assert (ge512 - t(data[f"{v}_ge512"])).abs().max().item() <= 1e-3


@pytest.mark.parametrize("speed,suffix", [(1.0, "wav"), (0.8, "wav_speed0_8")])
@pytest.mark.parametrize("v", list(VERSIONS))
def test_sovits_decode_matches(case, v, speed, suffix):
    data, _, sovits, _ = case
    model = sovits[v].model.float()
    refer = spectrogram(t(data["ref_wav_32k"]))
    wav, n = model.decode(t(data["codes"]), t(data["phones"]), [refer], noise_scale=0.0, speed=speed,
                          sv_emb=[t(data["sv_emb"])])
    expected = t(data[f"{v}_{suffix}"])
    assert wav.shape == expected.shape
    assert int(n[0]) == expected.shape[-1]
    assert (wav - expected).abs().max().item() <= 1e-3


# ---------------------------------------------------------------- official file format
@pytest.mark.parametrize("v", list(VERSIONS))
def test_official_file_round_trip_keeps_tag_and_weights(case, v):
    _, _, sovits, files = case
    original = files[v].read_bytes()
    assert original[:2] == VERSIONS[v][1]
    buf = io.BytesIO()
    save_sovits(sovits[v].model, buf)  # fp16, as the official exporter
    data = buf.getvalue()
    assert data[:2] == VERSIONS[v][1]
    again = load_sovits(data)
    assert again.version == VERSIONS[v][0]
    ref = safe_torch_load(original)[0]["weight"]
    ours = sovits_checkpoint(again.model)["weight"]
    assert set(ours) == set(ref)
    for k in ref:
        assert ours[k].dtype == ref[k].dtype and torch.equal(ours[k], ref[k]), k


def test_untagged_pretrained_base_is_recognised_by_its_weights(case):
    """The official pretrained bases are known by md5, not a tag: an untagged file still loads as its version."""
    _, _, _, files = case
    raw = files["v2proplus"].read_bytes()
    assert load_sovits(b"PK" + raw[2:]).version == "v2ProPlus"


def test_wrong_tag_is_refused(case):
    _, _, _, files = case
    raw = files["v2pro"].read_bytes()
    with pytest.raises(CheckpointError, match="tagged v2ProPlus but its config says v2Pro"):
        load_sovits(b"06" + raw[2:])
    with pytest.raises(CheckpointError, match="tagged v2 but its config says v2Pro"):
        load_sovits(b"01" + raw[2:])


def test_sv_file_round_trip_and_strictness(case, tmp_path):
    _, sv, _, files = case
    save_sv(sv, tmp_path / "sv.ckpt")
    again = load_sv(tmp_path / "sv.ckpt")
    for k, v in sv.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    state = torch.load(files["sv"], weights_only=True)
    # extra keys and wrong shapes: tests/test_v2pro.py (tiny model, same loader)
    for change, match in [("missing", "missing"), ("wrapped", "bare")]:
        bad = dict(state)
        if change == "missing":
            bad.pop("layer4.2.bns.3.num_batches_tracked")  # BatchNorm counters are part of the file too
        else:
            bad = {"weight": bad, "info": "x"}
        buf = io.BytesIO()
        torch.save(bad, buf)
        with pytest.raises(CheckpointError, match=match):
            load_sv(buf.getvalue())
