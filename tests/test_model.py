"""model/: strict checkpoint I/O, batching invariance, KV cache, and that both stages can learn."""
from __future__ import annotations

import io
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
from reference_case import manifest, ref_weights

from voicefleet.model.checkpoint import (
    CheckpointError,
    gpt_checkpoint,
    load_gpt,
    load_gpt_safetensors,
    load_sovits,
    load_sovits_safetensors,
    save_gpt,
    save_sovits,
    sovits_checkpoint,
    to_safetensors,
)
from voicefleet.model.config import GPTConfig, SoVITSConfig
from voicefleet.model.gpt import SamplingParams, Text2SemanticDecoder
from voicefleet.model.sovits import SynthesizerTrn
from voicefleet.model.spectrogram import spectrogram
from voicefleet.model.train import GPTBatch, GPTTrainer, SoVITSBatch, SoVITSTrainer


def tiny_gpt(seed=0):
    torch.manual_seed(seed)
    return Text2SemanticDecoder(GPTConfig.tiny()).eval()


def tiny_sovits(seed=0):
    torch.manual_seed(seed)
    return SynthesizerTrn(SoVITSConfig.tiny()).eval()


def test_tiny_configs_are_small():
    n_gpt = sum(p.numel() for p in tiny_gpt().parameters())
    n_sov = sum(p.numel() for p in tiny_sovits().parameters())
    assert n_gpt < 500_000 and n_sov < 500_000, (n_gpt, n_sov)


# ---------------------------------------------------------------- strict loading
@pytest.mark.parametrize("kind", ["s1", "s2"])
def test_official_manifest_state_dict_loads_strictly(kind):
    m = manifest(kind)
    state = ref_weights().state_dict(m, seed=1, with_training_keys=True)
    if kind == "s1":
        model = Text2SemanticDecoder(GPTConfig.from_official(m["config"]))
        state = {k.removeprefix("model."): v for k, v in state.items()}
    else:
        model = SynthesizerTrn(SoVITSConfig.from_official(m["config"]))
    expected = model.state_dict()
    assert set(state) == set(expected)
    for k, v in state.items():
        assert tuple(v.shape) == tuple(expected[k].shape), k
    model.load_state_dict(state, strict=True)
    assert sum(v.numel() for v in state.values()) == m["total_params"] + m.get("training_only_params", 0)


def test_official_files_load_with_and_without_posterior(tmp_path):
    rw = ref_weights()
    rw.write_official_checkpoint(manifest("s2"), 3, tmp_path / "voice.pth")
    rw.write_official_checkpoint(manifest("s2"), 3, tmp_path / "base.pth", with_training_keys=True)
    assert not load_sovits(tmp_path / "voice.pth").model.has_posterior  # exported voice: no enc_q
    assert load_sovits(tmp_path / "base.pth").model.has_posterior  # pretrained base: enc_q for fine-tuning


def _tamper(path, out, fn):
    ck = torch.load(path, weights_only=False)
    fn(ck["weight"])
    torch.save(ck, out)


@pytest.mark.parametrize("change", ["extra", "missing", "shape"])
def test_mismatched_gpt_checkpoint_is_refused(tmp_path, change):
    save_gpt(tiny_gpt(), tmp_path / "ok.ckpt")
    def fn(w):
        if change == "extra":
            w["model.surprise.weight"] = torch.zeros(1)
        elif change == "missing":
            w.pop("model.ar_predict_layer.weight")
        else:
            w["model.bert_proj.bias"] = torch.zeros(3)
    _tamper(tmp_path / "ok.ckpt", tmp_path / "bad.ckpt", fn)
    with pytest.raises(CheckpointError, match={"extra": "unexpected", "missing": "missing", "shape": "shape"}[change]):
        load_gpt(tmp_path / "bad.ckpt")


def test_malicious_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))
    torch.save({"weight": {}, "config": Evil(), "info": "x"}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refused"):
        load_sovits(tmp_path / "evil.pth")
    assert not (tmp_path / "pwned").exists()


def test_version_tag_is_read(tmp_path):
    buf = io.BytesIO()
    save_sovits(tiny_sovits(), buf)
    data = buf.getvalue()
    assert load_sovits(b"01" + data[2:]).version == "v2"  # tagged v2 file
    with pytest.raises(CheckpointError, match="v3"):
        load_sovits(b"02" + data[2:])
    with pytest.raises(CheckpointError, match="not a torch checkpoint"):
        load_sovits(b"hello world")


# ---------------------------------------------------------------- round trips
def _same(a: dict, b: dict):
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("dtype", [torch.float16, None], ids=["fp16-official", "keep-dtype"])
def test_gpt_save_load_round_trip_is_bit_identical(dtype):
    model = tiny_gpt()
    ck = gpt_checkpoint(model, dtype=dtype)
    buf = io.BytesIO()
    torch.save(ck, buf)
    again = gpt_checkpoint(load_gpt(buf.getvalue()).model, dtype=dtype)
    _same(ck["weight"], again["weight"])
    assert again["config"] == ck["config"]
    _same(ck["weight"], gpt_checkpoint(load_gpt_safetensors(to_safetensors(ck)).model, dtype=dtype)["weight"])


def test_sovits_save_load_round_trip_is_bit_identical():
    model = tiny_sovits()
    for with_q in (False, True):
        ck = sovits_checkpoint(model, with_posterior=with_q)
        buf = io.BytesIO()
        torch.save(ck, buf)
        loaded = load_sovits(buf.getvalue()).model
        assert loaded.has_posterior == with_q
        _same(ck["weight"], sovits_checkpoint(loaded, with_posterior=with_q)["weight"])
        _same(ck["weight"], sovits_checkpoint(load_sovits_safetensors(to_safetensors(ck)).model,
                                              with_posterior=with_q)["weight"])


def test_official_file_round_trips_through_our_writer(tmp_path):
    ref_weights().write_official_checkpoint(manifest("s1"), 2, tmp_path / "gpt.ckpt")
    first = load_gpt(tmp_path / "gpt.ckpt").model
    save_gpt(first, tmp_path / "again.ckpt")
    raw = torch.load(tmp_path / "gpt.ckpt", weights_only=True)["weight"]
    _same(raw, torch.load(tmp_path / "again.ckpt", weights_only=True)["weight"])


# ---------------------------------------------------------------- batching and cache
def _gpt_inputs(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    phones = [torch.randint(0, 732, (int(torch.randint(5, 30, (1,), generator=g)),), generator=g) for _ in range(n)]
    bert = [torch.randn(1024, len(p), generator=g) * 0.1 for p in phones]
    prompts = [torch.randint(0, 1024, (int(torch.randint(3, 20, (1,), generator=g)),), generator=g) for _ in range(n)]
    return phones, bert, prompts


def test_batched_gpt_equals_single_lines_with_same_seeds():
    gpt = tiny_gpt()
    phones, bert, prompts = _gpt_inputs(5)
    params = SamplingParams(top_k=15, max_tokens_per_phone=2.0, min_new_tokens=3)
    seeds = [11, 22, 33, 44, 55]
    batch = gpt.generate(phones, bert, prompts, params, seeds)
    for i in range(5):
        one = gpt.generate([phones[i]], [bert[i]], [prompts[i]], params, [seeds[i]])
        assert one.tokens[0].tolist() == batch.tokens[i].tolist(), i
        assert one.finished[0] == batch.finished[i]
    # per-line length guard: at most ceil(2 x phones) tokens
    for p, t in zip(phones, batch.tokens):
        assert len(t) <= int(np.ceil(2.0 * len(p)))


def test_kv_cache_equals_recomputation():
    gpt = tiny_gpt(1)
    phones, bert, prompts = _gpt_inputs(3, seed=1)
    params = SamplingParams(top_k=5, temperature=0.9, max_tokens_per_phone=1.5, min_new_tokens=2)
    a = gpt.generate(phones, bert, prompts, params, [1, 2, 3], use_cache=True)
    b = gpt.generate(phones, bert, prompts, params, [1, 2, 3], use_cache=False)
    assert [t.tolist() for t in a.tokens] == [t.tolist() for t in b.tokens]


def test_generation_is_seeded_and_deterministic():
    gpt = tiny_gpt()
    phones, bert, prompts = _gpt_inputs(2)
    params = SamplingParams(max_tokens_per_phone=1.0, min_new_tokens=2)
    a = gpt.generate(phones, bert, prompts, params, [5, 6])
    b = gpt.generate(phones, bert, prompts, params, [5, 6])
    c = gpt.generate(phones, bert, prompts, params, [7, 8])
    assert [t.tolist() for t in a.tokens] == [t.tolist() for t in b.tokens]
    assert [t.tolist() for t in a.tokens] != [t.tolist() for t in c.tokens]


def test_batched_sovits_decode_equals_single_lines():
    sov = tiny_sovits()
    g = torch.Generator().manual_seed(0)
    refer = torch.rand(1, 1025, 60, generator=g)
    ge = sov.style(refer)
    lens = [7, 19, 12]
    tlens = [4, 11, 8]
    codes = [torch.randint(0, 1024, (n,), generator=g) for n in lens]
    texts = [torch.randint(0, 732, (n,), generator=g) for n in tlens]
    C = torch.zeros(1, 3, max(lens), dtype=torch.long)
    T = torch.zeros(3, max(tlens), dtype=torch.long)
    for i in range(3):
        C[0, i, : lens[i]] = codes[i]
        T[i, : tlens[i]] = texts[i]
    speeds = [1.0, 0.8, 1.25]
    gens = [torch.Generator().manual_seed(100 + i) for i in range(3)]
    wav, n = sov.decode(C, T, ge=ge, noise_scale=0.5, speed=speeds, code_lengths=torch.tensor(lens),
                        text_lengths=torch.tensor(tlens), generator=gens)
    for i in range(3):
        one, m = sov.decode(codes[i][None, None], texts[i][None], ge=ge, noise_scale=0.5, speed=speeds[i],
                            generator=[torch.Generator().manual_seed(100 + i)])
        assert int(m[0]) == int(n[i]) == one.shape[-1]
        assert torch.allclose(wav[i, :, : int(n[i])], one[0], atol=1e-5), (wav[i, :, : int(n[i])] - one[0]).abs().max()


# ---------------------------------------------------------------- learning
def test_tiny_gpt_overfits_a_tiny_batch():
    torch.manual_seed(0)
    gpt = Text2SemanticDecoder(GPTConfig.tiny())
    phones, bert, _ = _gpt_inputs(4, seed=3)
    sem = [torch.randint(0, 1024, (n,)) for n in (12, 9, 15, 10)]
    P = torch.zeros(4, max(map(len, phones)), dtype=torch.long)
    Bt = torch.zeros(4, 1024, P.shape[1])
    S = torch.zeros(4, 15, dtype=torch.long)
    for i in range(4):
        P[i, : len(phones[i])] = phones[i]
        Bt[i, :, : len(phones[i])] = bert[i]
        S[i, : len(sem[i])] = sem[i]
    batch = GPTBatch(P, torch.tensor([len(p) for p in phones]), Bt, S, torch.tensor([12, 9, 15, 10]))
    trainer = GPTTrainer(gpt, lr=5e-3)
    first = trainer.step(batch)["loss"]
    for _ in range(100):
        last = trainer.step(batch)
    assert last["loss"] < first / 5, (first, last)  # stated factor: 5x lower after 100 steps
    assert last["acc"] > 0.9


def test_tiny_sovits_overfits_a_tiny_batch():
    torch.manual_seed(0)
    cfg = SoVITSConfig.tiny()
    net = SynthesizerTrn(cfg)
    t = torch.arange(16000) / 32000
    wav = (0.5 * torch.sin(2 * torch.pi * 220 * t) * torch.sin(2 * torch.pi * 3 * t)).reshape(1, 1, -1).repeat(2, 1, 1)
    spec = spectrogram(wav[:, 0], cfg.filter_length, cfg.hop_length, cfg.win_length)
    frames = spec.shape[-1]
    batch = SoVITSBatch(ssl=torch.randn(2, cfg.ssl_dim, frames), spec=spec, spec_lengths=torch.tensor([frames] * 2),
                        wav=wav, text=torch.randint(0, 732, (2, 10)), text_lengths=torch.tensor([10, 10]))
    trainer = SoVITSTrainer(net, lr=2e-3)
    first = trainer.step(batch)["mel"]
    for _ in range(80):
        last = trainer.step(batch)
    # stated factor: mel loss falls 2.5x within 80 steps (measured 3.2x with 1 and 2 threads; at 40
    # steps it is ~2x, too close to call across thread counts)
    assert last["mel"] < first / 2.5, (first, last)
