#!/usr/bin/env python
"""The Synthesizer end to end: real English and Chinese sentences of mixed length over several voices.

Frontend (text normalisation, g2p, BERT zeros), GPT decoding on the engine (continuous batching),
SoVITS decoding, sentence joining: everything `Synthesizer.synthesize` does, timed from text to
waveform. Voices are random-weight models from a fixed seed (v2 size by default, `--tiny` for a
quick check); each voice gets 1/N of the sentences in one call, as a render actor would. Prints
audio seconds per wall second (x real time) and the GPT / SoVITS split, per precision.

    python benchmarks/synthesizer_e2e.py --tiny --sentences 64            # quick CPU check
    python benchmarks/synthesizer_e2e.py --device cuda --sentences 512 --voices 4 --precisions bf16,fp32
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from voicefleet.flows.demo.sentences import EN_ENROLL
from voicefleet.model.config import GPTConfig, SoVITSConfig
from voicefleet.model.gpt import Text2SemanticDecoder
from voicefleet.model.sovits import SynthesizerTrn
from voicefleet.model.synthesizer import LineRequest, LineSettings, Synthesizer, VoicePrompt
from voicefleet.model.text.frontend import TextFrontend

ZH = ("今天天气很好，我们去公园散步吧。", "这家餐厅的菜非常好吃。", "请把窗户关上，外面有点冷。",
      "他每天早上六点起床，然后去跑步。", "我们明天下午三点在图书馆见面。", "这本书我已经读了两遍了。",
      "火车站离这里不远，走路十分钟就到。", "妈妈在厨房里做饭，爸爸在看报纸。")


def sentences(n: int) -> list[tuple[str, str]]:
    pool = [(s, "en") for s in EN_ENROLL] + [(s, "zh") for s in ZH]
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):  # mixed length: 1-3 sentences per line
        k = int(rng.integers(1, 4))
        picks = [pool[int(j)] for j in rng.integers(0, len(pool), k)]
        lang = picks[0][1]
        out.append((" ".join(s for s, l in picks if l == lang) or picks[0][0], lang))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sentences", type=int, default=512)
    ap.add_argument("--voices", type=int, default=4)
    ap.add_argument("--precisions", default="fp32")
    ap.add_argument("--max-batch", type=int, default=256)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    gcfg, scfg = (GPTConfig.tiny(), SoVITSConfig.tiny()) if a.tiny else (GPTConfig.v2(), SoVITSConfig.v2())
    frontend = TextFrontend()
    lines = sentences(a.sentences)
    t = np.arange(32000 * 4) / 32000
    ref = (0.3 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 2 * t) > 0)).astype(np.float32)
    prompt = VoicePrompt(ref, "A short reference sentence.", "en", np.random.default_rng(0).integers(0, 1024, 115))
    for prec in a.precisions.split(","):
        synth = Synthesizer(frontend, device=a.device, max_batch=a.max_batch, precision=prec)
        voices = []
        for v in range(a.voices):
            torch.manual_seed(v)
            voices.append(synth.load_voice(Text2SemanticDecoder(gcfg), SynthesizerTrn(scfg, with_posterior=False), prompt))
        # guard: random weights rarely say EOS, so lines end at ~2.5 tokens per phone (about speech rate)
        reqs = [LineRequest(s, lang, LineSettings(seed=i, max_tokens_per_phone=2.5)) for i, (s, lang) in enumerate(lines)]
        synth.synthesize(voices[0], reqs[:4])  # warm-up (CUDA graphs captured here)
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        synth.timings = {"gpt_s": 0.0, "sovits_s": 0.0}
        t0 = time.perf_counter()
        audio = 0.0
        for v, voice in enumerate(voices):
            out = synth.synthesize(voice, reqs[v::a.voices])
            audio += sum(len(o.wav) / o.sample_rate for o in out if not isinstance(o, Exception))
        wall = time.perf_counter() - t0
        print(f"{prec}: {len(lines)} lines, {a.voices} voices, {audio:.1f} s audio in {wall:.1f} s = "
              f"{audio / wall:.1f}x real time (GPT {synth.timings['gpt_s']:.1f} s, SoVITS {synth.timings['sovits_s']:.1f} s)")


if __name__ == "__main__":
    main()
