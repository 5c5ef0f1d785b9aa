"""Many LoRA voices in one GPT batch: each row decodes with its own adapter over the shared base."""
from __future__ import annotations

import pytest
import torch
from lora_voices import random_lora_state

from voicefleet.model.config import GPTConfig
from voicefleet.model.engine import DecodeEngine, DecodeJob
from voicefleet.model.gpt import SamplingParams, Text2SemanticDecoder
from voicefleet.model.lora import LoRAConfig, apply_lora
from voicefleet.model.multi_lora import AdapterError, AdapterSet, GPTAdapter

CFG = LoRAConfig(rank=4, alpha=8.0)
SAMPLED = SamplingParams(top_k=10, top_p=0.9, temperature=1.1, max_tokens_per_phone=2.0, min_new_tokens=3)
GREEDY = SamplingParams(top_k=1, max_tokens_per_phone=2.0, min_new_tokens=3)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    base = Text2SemanticDecoder(GPTConfig.tiny()).eval()
    states = {f"v{i}": random_lora_state(base, CFG, 100 + i, 0.3) for i in range(4)}
    g = torch.Generator().manual_seed(1)
    lines = []  # (adapter id or None, phones, bert, prompt, seed): 3 lines per voice and 2 on the bare base
    for i, voice in enumerate([*states, None]):
        for k in range(3 if voice else 2):
            n = int(torch.randint(5, 25, (1,), generator=g))
            lines.append((voice, torch.randint(0, 732, (n,), generator=g), torch.randn(1024, n, generator=g) * 0.1,
                          torch.randint(0, 1024, (int(torch.randint(3, 15, (1,), generator=g)),), generator=g),
                          1000 * i + k))
    lines = lines[::2] + lines[1::2]  # voices interleaved, as a render plan's mixed batch would be
    return base, states, lines


def decode(base, adapters, lines, params, max_batch):
    engine = DecodeEngine(base, max_batch=max_batch)
    engine.bind_adapters(adapters)
    jobs = [DecodeJob(p, b, q, params, seed, limit=int(2 * len(p)), key=i, adapter=v)
            for i, (v, p, b, q, seed) in enumerate(lines)]
    return {o.key: (o.tokens.tolist(), o.finished) for o in engine.run(jobs)}


@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_rows_of_many_voices_decode_as_each_voice_alone(setup, params):
    base, states, lines = setup
    adapters = {v: GPTAdapter.from_state(s, CFG) for v, s in states.items()}
    for max_batch in (len(lines), 5):  # one batch of every voice; continuous batching refilling across voices
        mixed = decode(base, adapters, lines, params, max_batch)
        for voice in [*states, None]:
            mine = [i for i, line in enumerate(lines) if line[0] == voice]
            alone = decode(base, {voice: adapters[voice]} if voice else None, [lines[i] for i in mine], params, 3)
            assert [mixed[i] for i in mine] == [alone[k] for k in range(len(mine))], (voice, max_batch)
    # and the adapters change the tokens: each voice decodes differently from the base
    plain = decode(base, None, [(None, *line[1:]) for line in lines], params, len(lines))
    assert sum(mixed[i] != plain[i] for i, line in enumerate(lines) if line[0]) >= 9


def test_per_row_factors_compute_the_merged_voice(setup):
    """The per-row delta is the merge's W + (alpha / r) B A: teacher-forced logits of each voice agree."""
    base, states, lines = setup
    aset = AdapterSet(base, {v: GPTAdapter.from_state(s, CFG) for v, s in states.items()})
    for voice, state in states.items():
        merged = apply_lora(base, state, CFG.gpt_targets, CFG).eval()
        mine = [line for line in lines if line[0] == voice]
        for _, phones, bert, prompt, _ in mine:
            x, b, y = phones[None], bert[None], prompt[None]
            xl, yl = torch.tensor([x.shape[1]]), torch.tensor([y.shape[1]])
            with torch.no_grad():
                want = merged.prefill(x, xl, b, y, yl)
                got = base.prefill(x, xl, b, y, yl, lora=aset.gather(torch.tensor([aset.index(voice)])))
                plain = base.prefill(x, xl, b, y, yl)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
            assert (plain - want).abs().max() > 1e-2  # the voice's delta is there to be seen


def test_decode_step_with_per_row_factors_computes_each_merged_voice(setup):
    """One decode step over rows of four voices (each row's delta accumulated in place into the
    adapted linears' output) gives each row what its merged voice's step gives it alone."""
    from voicefleet.model.decode_step import StepWeights

    base, states, _ = setup
    voices = list(states)
    aset = AdapterSet(base, {v: GPTAdapter.from_state(s, CFG) for v, s in states.items()})
    lora = aset.gather(torch.tensor([aset.index(v) for v in voices]))
    cfg, S, n = base.cfg, 7, len(voices)
    H, D = cfg.n_head, cfg.hidden_dim // cfg.n_head
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, cfg.hidden_dim, generator=g)
    K = [torch.randn(n, H, S, D, generator=g) for _ in range(cfg.n_layer)]
    V = [torch.randn(n, H, S, D, generator=g) for _ in range(cfg.n_layer)]
    with torch.no_grad():
        got = StepWeights(base).run(x, [k.clone() for k in K], [v.clone() for v in V], S, None, S - 1, None, lora)
        plain = StepWeights(base).run(x, [k.clone() for k in K], [v.clone() for v in V], S, None, S - 1, None)
        for i, voice in enumerate(voices):
            merged = apply_lora(base, states[voice], CFG.gpt_targets, CFG).eval()
            want = StepWeights(merged).run(x[i:i + 1], [k[i:i + 1].clone() for k in K],
                                           [v[i:i + 1].clone() for v in V], S, None, S - 1, None)
            torch.testing.assert_close(got[i], want[0], rtol=1e-4, atol=1e-4)
            assert (plain[i] - want[0]).abs().max() > 1e-2  # the voice's delta is there to be seen


def test_adapters_that_cannot_decode_per_row_are_refused(setup):
    base, states, lines = setup
    state = dict(states["v0"])
    with pytest.raises(AdapterError, match="ar_predict_layer"):
        GPTAdapter.from_state({**state, "ar_predict_layer.lora_A.weight": torch.zeros(4, 48)}, CFG)
    with pytest.raises(AdapterError, match="rank 8"):
        GPTAdapter.from_state(state, LoRAConfig(rank=8))
    engine = DecodeEngine(base, max_batch=2)
    _, p, b, q, seed = lines[0]
    with pytest.raises(AdapterError, match="not bound"):
        engine.run([DecodeJob(p, b, q, GREEDY, seed, limit=10, key=0, adapter="v9")])
    engine.bind_adapters({"v0": GPTAdapter.from_state(state, CFG)})
    with pytest.raises(AdapterError, match="not bound"):
        engine.run([DecodeJob(p, b, q, GREEDY, seed, limit=10, key=0, adapter="v1")])


def test_synthesizer_renders_lora_voices_in_shared_gpt_batches_as_each_alone():
    import numpy as np

    from voicefleet.model.synthesizer import LineRequest, LineSettings, Synthesizer, VoicePrompt, prompt_tokens
    from voicefleet.model.text.frontend import TextFrontend
    from voicefleet.tasks.voices.base_model import tiny_base

    base = tiny_base()
    t = np.arange(32000 * 4) / 32000
    ref = (0.3 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 2 * t) > 0)).astype(np.float32)
    tokens = prompt_tokens(base.ssl, base.sovits, ref[::2].copy())
    prompt = VoicePrompt(ref, "A short reference sentence.", "en", tokens)
    synth = Synthesizer(TextFrontend(), max_batch=8)
    voices = [synth.load_voice(base.gpt, base.sovits, prompt, adapter=GPTAdapter.from_state(
        random_lora_state(base.gpt, CFG, 7 + k, 0.3), CFG)) for k in range(2)]
    assert voices[0].gpt is voices[1].gpt  # one base for both
    lines = [LineRequest(text, "en", LineSettings(seed=s, max_tokens_per_phone=2.5))
             for s, text in enumerate(["Good morning.", "The storm rolled in before dawn. Nobody saw it."])]
    steps0 = synth._engine.steps if synth._engine else 0
    together = synth.synthesize_many([(v, lines) for v in voices])
    shared_steps = synth._engine.steps - steps0
    for v, mine in zip(voices, together):
        alone = synth.synthesize(v, lines)
        assert [a.tokens for a in alone] == [m.tokens for m in mine]
        assert all(np.array_equal(a.wav, m.wav) for a, m in zip(alone, mine))
    assert not np.array_equal(together[0][1].wav, together[1][1].wav)  # the voices differ
    assert shared_steps < synth._engine.steps - steps0 - shared_steps  # fewer steps than voice after voice
