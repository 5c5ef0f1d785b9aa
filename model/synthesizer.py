"""The `Synthesizer` facade: a loaded voice + a batch of lines -> 32 kHz waveforms.

Pipeline per line, as the reference's TTS pipeline does it: cut the text into sentences; for each
sentence the GPT reads [reference-text phones + sentence phones] and continues the reference
clip's semantic tokens; SoVITS turns the new tokens + sentence phones + the reference timbre into
audio; sentences are joined with a short pause. Every sentence of every line in a call is decoded
in shared batches (GPT rows sorted by length), and each sentence has its own seeded random stream,
so a line renders identically alone or inside any batch. GPT decoding runs on a `DecodeEngine`
(continuous batching, device-side sampling, CUDA graphs on CUDA) in the chosen precision.

`synthesize_many` takes the lines of many voices: LoRA voices loaded over one shared base GPT
(`load_voice(..., adapter=...)`) decode their GPT rows in shared batches, each row with its own
voice's adapter (model/multi_lora.py); full fine-tunes decode per voice; SoVITS runs per voice.
"""
from __future__ import annotations

import copy
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .engine import DecodeEngine, DecodeJob, DecodeOutput, token_limit
from .gpt import SamplingParams, Text2SemanticDecoder
from .multi_lora import GPTAdapter
from .quantize import quantize_gpt_int8
from .sovits import SynthesizerTrn
from .spectrogram import spectrogram
from .ssl import PROMPT_TAIL_SAMPLES, SSLExtractor

SPLITS = set("，。？！,.?!~:：—…")
REF_MIN_S, REF_MAX_S = 3.0, 10.0


class ReferenceClipError(ValueError):
    """The reference clip cannot prompt the model (length outside 3–10 s, silent, ...)."""


class SynthesisError(RuntimeError):
    """A line could not be synthesised; the message says why."""


@dataclass
class VoicePrompt:
    """What a voice needs at inference besides weights: its reference clip, text and tokens."""

    ref_wav_32k: np.ndarray  # float32 mono at 32 kHz, 3–10 s
    ref_text: str
    ref_language: str
    prompt_tokens: np.ndarray  # semantic tokens of the clip (+ the reference's 0.6 s silent tail)
    # v2Pro/v2ProPlus: the clip's speaker-verification embedding (sv_dim,), computed once per voice
    # (model/sv.SpeakerEncoder on ref_wav_32k); None for v2
    sv_emb: np.ndarray | None = None


@dataclass
class LineSettings:
    seed: int = 0
    speed: float = 1.0
    top_k: int = 15
    top_p: float = 1.0
    temperature: float = 1.0
    repetition_penalty: float = 1.35
    noise_scale: float = 0.5
    cut: str = "cut5"
    pause_s: float = 0.3
    max_tokens_per_phone: float = 6.0  # runaway guard: ~3x the typical 2 tokens (80 ms) per phone

    def sampling(self) -> SamplingParams:
        return SamplingParams(top_k=self.top_k, top_p=self.top_p, temperature=self.temperature,
                              repetition_penalty=self.repetition_penalty,
                              max_tokens_per_phone=self.max_tokens_per_phone)


@dataclass
class LineRequest:
    text: str
    language: str
    settings: LineSettings = field(default_factory=LineSettings)
    tag: Any = None  # the caller's handle for the line; the model ignores it


@dataclass
class LineAudio:
    wav: np.ndarray  # float32 mono
    sample_rate: int
    sentences: int
    tokens: int  # semantic tokens generated (all sentences)
    truncated: bool  # a sentence hit the runaway-length guard instead of ending with EOS


@dataclass
class LoadedVoice:
    gpt: Text2SemanticDecoder
    sovits: SynthesizerTrn
    prompt_phones: torch.Tensor  # (Lp,)
    prompt_bert: torch.Tensor  # (bert_dim, Lp)
    prompt_tokens: torch.Tensor  # (Tp,)
    ge: torch.Tensor  # (1, gin, 1) style vector of the reference clip
    adapter: GPTAdapter | None = None  # a LoRA voice's GPT factors; `gpt` is then the shared base


def ensure_final_punct(text: str, language: str) -> str:
    text = text.strip()
    if text and text[-1] not in SPLITS:
        text += "." if language == "en" else "。"
    return text


def reference_spectrogram(wav_32k: np.ndarray, sovits: SynthesizerTrn) -> torch.Tensor:
    audio = torch.as_tensor(wav_32k, dtype=torch.float32)[None]
    peak = audio.abs().max()
    if peak > 1:
        audio = audio / min(2.0, float(peak))
    c = sovits.cfg
    return spectrogram(audio, c.filter_length, c.hop_length, c.win_length)


@torch.no_grad()
def prompt_tokens(ssl: SSLExtractor, sovits: SynthesizerTrn, wav_16k: np.ndarray, check_length: bool = True) -> np.ndarray:
    """Semantic tokens of a reference clip: SSL features -> ssl_proj -> codebook (25 Hz)."""
    seconds = len(wav_16k) / 16000
    if check_length and not REF_MIN_S <= seconds <= REF_MAX_S:
        raise ReferenceClipError(f"reference clip is {seconds:.2f} s; it must be {REF_MIN_S:g}–{REF_MAX_S:g} s")
    x = torch.as_tensor(wav_16k, dtype=torch.float32)
    x = torch.cat([x, torch.zeros(PROMPT_TAIL_SAMPLES)])[None]
    dev = next(sovits.parameters()).device
    codes = sovits.extract_latent(ssl.to(dev)(x.to(dev)))
    return codes[0, 0].cpu().numpy().astype(np.int64)


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.float32}


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """fp32 | bf16 | fp16 | int8 (CPU only: int8 GPT weights); None / "auto": bf16 on CUDA, fp32 elsewhere."""
    if precision in (None, "auto"):
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} or auto, got {precision!r}")
    if precision == "int8" and device.type != "cpu":
        raise ValueError("int8 weights are a CPU option; use bf16 or fp16 on a GPU")
    return precision


class Synthesizer:
    """Renders lines with a loaded voice. `max_batch` GPT rows decode at once (continuous batching:
    a finished row takes the next waiting sentence); finished sentences go to SoVITS in batches of
    `sovits_batch`, sorted by length, on CUDA in a second stream while the GPT keeps decoding."""

    def __init__(self, frontend, device: str | torch.device = "cpu", max_batch: int = 16,
                 sovits_batch: int | None = None, precision: str | None = None, cuda_graphs: bool | None = None,
                 sync_every: int | None = None):
        self.frontend = frontend
        self.device = torch.device(device)
        self.max_batch = max_batch
        self.precision = resolve_precision(precision, self.device)
        self.cuda_graphs = cuda_graphs
        self.sync_every = sync_every
        # GPT decoding gains a lot from batching everywhere; the SoVITS decoder's huge audio-rate
        # activations make batching a loss on CPU (benchmarks/model_rtf.py), so there it runs
        # line by line unless told otherwise. Results are the same either way.
        self.sovits_batch = sovits_batch or (1 if self.device.type == "cpu" else max_batch)
        self.timings = {"gpt_s": 0.0, "sovits_s": 0.0}
        self._engine = None
        self._bases: dict[int, tuple[Text2SemanticDecoder, Text2SemanticDecoder]] = {}  # id -> (given, converted)

    @property
    def half(self) -> torch.dtype | None:
        """The autocast dtype of SoVITS decoding, None for float32."""
        return PRECISIONS[self.precision] if self.precision in ("bf16", "fp16") else None

    def load_voice(self, gpt: Text2SemanticDecoder, sovits: SynthesizerTrn, prompt: VoicePrompt,
                   check_length: bool = True, adapter: GPTAdapter | None = None) -> LoadedVoice:
        """`adapter`: a LoRA voice's GPT factors over `gpt`, the shared base (unmerged, so its lines can
        share GPT batches with other voices over the same base object in `synthesize_many`)."""
        seconds = len(prompt.ref_wav_32k) / sovits.cfg.sampling_rate
        if check_length and not REF_MIN_S <= seconds <= REF_MAX_S:
            raise ReferenceClipError(f"reference clip is {seconds:.2f} s; it must be {REF_MIN_S:g}–{REF_MAX_S:g} s")
        sovits = sovits.to(self.device).eval()
        if adapter is not None:  # one converted base for all its voices
            if id(gpt) not in self._bases:
                self._bases[id(gpt)] = (gpt, self._convert(gpt))
            gpt = self._bases[id(gpt)][1]
        else:
            gpt = self._convert(gpt)
        ids, bert, _ = self.frontend.features(ensure_final_punct(prompt.ref_text, prompt.ref_language),
                                              prompt.ref_language)
        with torch.no_grad():
            sv = None if prompt.sv_emb is None else torch.as_tensor(
                np.asarray(prompt.sv_emb), dtype=torch.float32).reshape(1, -1).to(self.device)
            ge = sovits.style(reference_spectrogram(prompt.ref_wav_32k, sovits).to(self.device), sv_emb=sv)
        tokens = torch.as_tensor(np.asarray(prompt.prompt_tokens), dtype=torch.long)
        return LoadedVoice(gpt, sovits, ids.long(), bert.float(), tokens, ge, adapter)

    def _convert(self, gpt: Text2SemanticDecoder) -> Text2SemanticDecoder:
        """The GPT on this device in this precision (a copy when it changes; the caller's is kept)."""
        gpt = gpt.to(self.device).eval()
        if self.precision == "int8":
            return quantize_gpt_int8(gpt)
        if gpt.ar_predict_layer.weight.dtype != PRECISIONS[self.precision]:
            return copy.deepcopy(gpt).to(PRECISIONS[self.precision])
        return gpt

    def sentences(self, req: LineRequest) -> list[str]:
        pieces = self.frontend.split_sentences(req.text, method=req.settings.cut, language=req.language)
        out = [ensure_final_punct(p, req.language) for p in pieces if p.strip() and any(c not in SPLITS for c in p.strip())]
        if not out:
            raise SynthesisError(f"text has nothing to speak: {req.text!r}")
        return out

    def engine(self, voice: LoadedVoice) -> DecodeEngine:
        """One decode engine per Synthesizer (its buffers and CUDA graphs are reused across voices)."""
        if self._engine is None or self._engine.device != voice.gpt.ar_predict_layer.weight.device \
                or self._engine.model.ar_predict_layer.weight.dtype != voice.gpt.ar_predict_layer.weight.dtype \
                or type(self._engine.model.h.layers[0].linear1) is not type(voice.gpt.h.layers[0].linear1):
            self._engine = DecodeEngine(voice.gpt, self.max_batch, self.sync_every, self.cuda_graphs)
        self._engine.bind(voice.gpt)
        self._engine.max_batch = self.max_batch
        return self._engine

    @torch.no_grad()
    def synthesize(self, voice: LoadedVoice, lines: list[LineRequest]) -> list[LineAudio | SynthesisError]:
        """Render lines with one voice; a line that fails yields its SynthesisError, the rest go on."""
        return self.synthesize_many([(voice, lines)])[0]

    @torch.no_grad()
    def synthesize_many(self, work: list[tuple[LoadedVoice, list[LineRequest]]]
                        ) -> list[list[LineAudio | SynthesisError]]:
        """Render each voice's lines; returns the results per voice, in order. LoRA voices over the
        same base decode their GPT rows in shared batches; any other voice decodes alone."""
        jobs: dict[Any, list[DecodeJob]] = {}  # decode group -> one job per sentence
        results: list[list[LineAudio | SynthesisError | None]] = [[None] * len(lines) for _, lines in work]
        per_line: list[dict[int, int]] = [{} for _ in work]
        for vi, (voice, lines) in enumerate(work):
            group = ("base", id(voice.gpt)) if voice.adapter is not None else ("voice", vi)
            for li, req in enumerate(lines):
                try:
                    sents = self.sentences(req)
                    feats = [self.frontend.features(s, req.language) for s in sents]
                except Exception as e:  # noqa: BLE001 — one bad line must not stop the batch
                    results[vi][li] = e if isinstance(e, SynthesisError) else SynthesisError(f"{type(e).__name__}: {e}")
                    continue
                per_line[vi][li] = len(sents)
                s = req.settings
                params = s.sampling()
                for si, (ids, bert, _) in enumerate(feats):
                    ids = ids.long()
                    jobs.setdefault(group, []).append(DecodeJob(
                        torch.cat([voice.prompt_phones, ids]), torch.cat([voice.prompt_bert, bert.float()], dim=1),
                        voice.prompt_tokens, params, sentence_seed(s.seed, si), token_limit(params, len(ids)),
                        key=(vi, li, si, ids, s), adapter=vi if voice.adapter is not None else None))
        outputs: dict[tuple[int, int, int], tuple[np.ndarray, int, bool]] = {}
        for group in jobs.values():
            group.sort(key=lambda j: -len(j.phones))  # longest first: the short ones fill the slots they free
            self._gpt_and_sovits([v for v, _ in work], group, outputs)
        for vi, (voice, lines) in enumerate(work):
            sr = voice.sovits.cfg.sampling_rate
            for li, n in per_line[vi].items():
                pause = np.zeros(int(lines[li].settings.pause_s * sr), dtype=np.float32)
                parts, tokens, truncated = [], 0, False
                for si in range(n):
                    wav, ntok, trunc = outputs[(vi, li, si)]
                    parts.extend([wav, pause] if si < n - 1 else [wav])
                    tokens += ntok
                    truncated |= trunc
                results[vi][li] = LineAudio(np.concatenate(parts), sr, n, tokens, truncated)
        return results

    def _gpt_and_sovits(self, voices: list[LoadedVoice], jobs: list[DecodeJob], outputs: dict) -> None:
        """GPT on the engine (with the jobs' adapters bound); every `sovits_batch` finished sentences
        of a voice go to SoVITS, by length."""
        if not jobs:
            return
        t0 = time.perf_counter()
        engine = self.engine(voices[jobs[0].key[0]])
        mine = sorted({j.adapter for j in jobs if j.adapter is not None})
        engine.bind_adapters({vi: voices[vi].adapter for vi in mine} if mine else None)
        overlap = self.device.type == "cuda"
        pool = ThreadPoolExecutor(max_workers=1) if overlap else None
        stream = torch.cuda.Stream(self.device) if overlap else None
        pending: dict[int, list[DecodeOutput]] = {}
        futures = []
        sovits_s = [0.0]

        def decode(voice: LoadedVoice, batch: list) -> None:
            t = time.perf_counter()
            if stream is not None:
                with torch.cuda.stream(stream):
                    self._decode(voice, batch, outputs)
                stream.synchronize()
            else:
                self._decode(voice, batch, outputs)
            sovits_s[0] += time.perf_counter() - t

        def flush(vi: int, final: bool = False) -> None:
            waiting = pending.get(vi, [])
            waiting.sort(key=lambda o: len(o.tokens))
            while len(waiting) >= self.sovits_batch or (final and waiting):
                batch = waiting[: self.sovits_batch]
                del waiting[: self.sovits_batch]
                if pool is not None:
                    futures.append(pool.submit(decode, voices[vi], batch))
                else:
                    decode(voices[vi], batch)

        def on_done(o: DecodeOutput) -> None:
            pending.setdefault(o.key[0], []).append(o)
            flush(o.key[0])

        engine.run(jobs, on_done)
        for vi in list(pending):
            flush(vi, final=True)
        if pool is not None:
            for f in futures:
                f.result()
            pool.shutdown()
        wall = time.perf_counter() - t0
        self.timings["sovits_s"] += sovits_s[0]
        self.timings["gpt_s"] += wall - (0.0 if overlap else sovits_s[0])

    def _decode(self, voice: LoadedVoice, batch: list[DecodeOutput], outputs: dict) -> None:
        dev = self.device
        tokens = [o.tokens for o in batch]
        keys = [o.key for o in batch]  # (voice index, line index, sentence index, phone ids, settings)
        lens = torch.tensor([max(len(t), 1) for t in tokens], device=dev)
        codes = torch.zeros(1, len(batch), int(lens.max()), dtype=torch.long, device=dev)
        for i, t in enumerate(tokens):
            codes[0, i, : len(t)] = t.to(dev)
        text_lens = torch.tensor([len(k[3]) for k in keys], device=dev)
        text = torch.zeros(len(batch), int(text_lens.max()), dtype=torch.long, device=dev)
        for i, k in enumerate(keys):
            text[i, : len(k[3])] = k[3].to(dev)
        gens = [torch.Generator().manual_seed(sentence_seed(s.seed, si) + 1) for _, _, si, _, s in keys]
        wav, n = voice.sovits.decode(codes, text, ge=voice.ge, noise_scale=[k[4].noise_scale for k in keys],
                                     speed=[k[4].speed for k in keys], code_lengths=lens,
                                     text_lengths=text_lens, generator=gens, precision=self.half)
        wav = wav.float().cpu().numpy()
        for i, (o, (vi, li, si, _, _)) in enumerate(zip(batch, keys)):
            outputs[(vi, li, si)] = (wav[i, 0, : int(n[i])].copy(), len(o.tokens), not o.finished)


def sentence_seed(line_seed: int, sentence: int) -> int:
    return (int(line_seed) * 1_000_003 + sentence) % (2**63)
