"""Our model against the reference code's own outputs (../shared/reference/case_*.npz).

Each case names its seed; the official-format checkpoints are rebuilt from the manifests with that
seed, loaded strictly by our loader and run in float32. Nothing about a case is remembered here, so
other case files can be dropped in beside case_seed0.npz.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from reference_case import case_files, manifest, ref_weights

from voicefleet.model.checkpoint import load_gpt, load_sovits
from voicefleet.model.gpt import SamplingParams
from voicefleet.model.spectrogram import spectrogram

CASES = case_files()


@pytest.fixture(scope="module", params=CASES, ids=[p.stem for p in CASES])
def case(request, tmp_path_factory):
    data = dict(np.load(request.param))
    seed = int(data["seed"])
    d = tmp_path_factory.mktemp(request.param.stem)
    rw = ref_weights()
    rw.write_official_checkpoint(manifest("s1"), seed, d / "gpt.ckpt")
    rw.write_official_checkpoint(manifest("s2"), seed, d / "sovits.pth")
    gpt = load_gpt(d / "gpt.ckpt").model.float()
    sovits = load_sovits(d / "sovits.pth").model.float()
    return data, gpt, sovits


def t(x):
    return torch.from_numpy(np.asarray(x))


def test_gpt_first_logits_match(case):
    data, gpt, _ = case
    logits = gpt.first_logits(t(data["gpt_phones"]), t(data["gpt_bert"]), t(data["gpt_prompt"]))
    assert (logits - t(data["gpt_logits0"])).abs().max().item() <= 1e-3


@pytest.mark.parametrize("use_cache", [True, False], ids=["kv-cache", "no-cache"])
def test_gpt_greedy_decoding_matches(case, use_cache):
    data, gpt, _ = case
    expected = data["gpt_greedy_tokens"].tolist()
    # the reference loop stops once more than 40 new tokens exist, i.e. at 41 tokens
    params = SamplingParams(top_k=1, top_p=1.0, temperature=1.0, repetition_penalty=1.35,
                            min_new_tokens=11, max_new_tokens=41, max_tokens_per_phone=None)
    res = gpt.generate([t(data["gpt_phones"])[0]], [t(data["gpt_bert"])[0]], [t(data["gpt_prompt"])[0]],
                       params, use_cache=use_cache)
    assert res.tokens[0].tolist() == expected


def test_sovits_ssl_to_semantic_codes(case):
    data, _, sovits = case
    codes = sovits.extract_latent(t(data["sovits_ssl"]))
    assert codes.tolist() == data["sovits_latent_codes"].tolist()


def test_reference_spectrogram(case):
    data, _, _ = case
    spec = spectrogram(t(data["sovits_ref_wav_32k"]))
    ref = t(data["sovits_ref_spec"])
    assert spec.shape == ref.shape
    assert ((spec - ref).abs().max() / ref.abs().max()).item() <= 1e-4


@pytest.mark.parametrize("speed,key", [(1.0, "sovits_wav"), (0.8, "sovits_wav_speed0_8")])
def test_sovits_decode_matches(case, speed, key):
    data, _, sovits = case
    refer = spectrogram(t(data["sovits_ref_wav_32k"]))
    wav, n = sovits.decode(t(data["sovits_codes"]), t(data["sovits_phones"]), refer, noise_scale=0.0, speed=speed)
    expected = t(data[key])
    assert wav.shape == expected.shape
    assert int(n[0]) == expected.shape[-1]
    assert (wav - expected).abs().max().item() <= 1e-3
