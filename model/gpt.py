"""GPT text-to-semantic model ("s1") of GPT-SoVITS v2, with a KV cache and batched sampling.

The model reads a line's phones (plus per-phone BERT features) and the reference clip's semantic
tokens (the prompt), and continues the prompt with the semantic tokens of the new line, ending in
EOS. Module attribute names equal the official checkpoint's keys (after its `model.` prefix), so an
official `.ckpt` loads strictly with no renaming.

Sequence layout for a batch (right padding inside each region):

    [ text_0 .. text_{Lx-1} | prompt/semantic_0 .. _{Ly-1} | generated ... ]

Text attends to text only; semantic tokens attend to all text and causally to semantic tokens;
padding is never attended to. Text and semantic tokens carry their own sine positions from 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .config import GPTConfig
from .engine import DecodeEngine, DecodeJob, token_limit
from .kv_cache import KVCache
from .multi_lora import add_lora_delta
from .sampler import RowParams, SamplingParams, sample

__all__ = ["GenerationResult", "SamplingParams", "Text2SemanticDecoder"]


def sine_table(length: int, dim: int) -> torch.Tensor:
    """(length, dim) sinusoid table: sin on even channels, cos on odd ones."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe


class TokenEmbedding(nn.Module):
    def __init__(self, dim: int, vocab: int, dropout: float = 0.0):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.word_embeddings(ids))


class SinePositionalEmbedding(nn.Module):
    """x + alpha * sine(position); alpha is learned, x is not scaled."""

    def __init__(self, dim: int, dropout: float = 0.1, max_len: int = 4000):
        super().__init__()
        self.dim = dim
        self.alpha = nn.Parameter(torch.ones(1))
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("pe", sine_table(max_len, dim), persistent=False)

    def table(self, length: int) -> torch.Tensor:
        if length > self.pe.shape[0]:
            self.pe = sine_table(max(length, 2 * self.pe.shape[0]), self.dim).to(self.pe.device)
        return self.pe

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        # x (B, T, C); positions (B, T) long, default 0..T-1
        if positions is None:
            pe = self.table(x.shape[1])[: x.shape[1]]
        else:
            pe = self.table(int(positions.max()) + 1)[positions]
        return self.dropout(x + self.alpha * pe.to(x.dtype))


class SelfAttention(nn.Module):
    """Multi-head self-attention with packed q/k/v projection (nn.MultiheadAttention's key names)."""

    def __init__(self, dim: int, n_head: int, dropout: float):
        super().__init__()
        self.n_head = n_head
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Packed q/k/v projection (B, T, 3C); an int8 `in_proj` module replaces it when quantized."""
        in_proj = self._modules.get("in_proj")
        return in_proj(x) if in_proj is not None else F.linear(x, self.in_proj_weight, self.in_proj_bias)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, cache: KVCache | None = None,
                layer: int = 0, lora: list[torch.Tensor] | None = None) -> torch.Tensor:
        # x (B, T, C); allowed (B, 1, T, S) bool, True where a query may attend to a key;
        # lora: this layer's per-row factors (model/multi_lora.py), or None
        B, T, C = x.shape
        q, k, v = self.project(x).chunk(3, dim=-1)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.append(layer, k, v)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p).transpose(1, 2).reshape(B, T, C)
        return _adapted(self.out_proj, y, lora, 0)


def _adapted(linear: nn.Module, x: torch.Tensor, lora: list[torch.Tensor] | None, j: int) -> torch.Tensor:
    """linear(x) plus each row's LoRA delta when per-row factors are given (j: index of its A)."""
    y = linear(x)
    return y if lora is None else add_lora_delta(y, x, lora[j], lora[j + 1])


class TransformerLayer(nn.Module):
    """Post-norm transformer layer: x = LN(x + attn(x)); x = LN(x + ffn(x))."""

    def __init__(self, dim: int, n_head: int, ffn: int, dropout: float = 0.1):
        super().__init__()
        self.self_attn = SelfAttention(dim, n_head, dropout)
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, allowed, cache=None, layer=0, lora=None):
        x = self.norm1(x + self.dropout(self.self_attn(x, allowed, cache, layer, lora)))
        h = self.dropout(F.relu(_adapted(self.linear1, x, lora, 2)))
        return self.norm2(x + self.dropout(_adapted(self.linear2, h, lora, 4)))


class TransformerEncoder(nn.Module):
    def __init__(self, cfg: GPTConfig, dropout: float = 0.1):
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerLayer(cfg.hidden_dim, cfg.n_head, cfg.linear_units, dropout) for _ in range(cfg.n_layer)
        )

    def forward(self, x, allowed, cache: KVCache | None = None, lora: list[list[torch.Tensor]] | None = None):
        for i, layer in enumerate(self.layers):
            x = layer(x, allowed, cache, i, None if lora is None else lora[i])
        if cache is not None:
            cache.advance(x.shape[1])
        return x


@dataclass
class GenerationResult:
    tokens: list[torch.Tensor]  # per line: new semantic tokens (no prompt, no EOS)
    finished: list[bool]  # True: ended with EOS; False: stopped by the length guard
    steps: int = 0
    extra: dict = field(default_factory=dict)


class Text2SemanticDecoder(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.bert_proj = nn.Linear(cfg.bert_dim, cfg.embedding_dim)
        self.ar_text_embedding = TokenEmbedding(cfg.embedding_dim, cfg.phoneme_vocab_size, cfg.dropout)
        self.ar_text_position = SinePositionalEmbedding(cfg.embedding_dim, dropout=0.1)
        self.ar_audio_embedding = TokenEmbedding(cfg.embedding_dim, cfg.vocab_size, cfg.dropout)
        self.ar_audio_position = SinePositionalEmbedding(cfg.embedding_dim, dropout=0.1)
        self.h = TransformerEncoder(cfg)
        self.ar_predict_layer = nn.Linear(cfg.hidden_dim, cfg.vocab_size, bias=False)

    # ---------------------------------------------------------------- building blocks
    def embed_text(self, phones: torch.Tensor, bert: torch.Tensor) -> torch.Tensor:
        # phones (B, Lx) long; bert (B, bert_dim, Lx) -> (B, Lx, C)
        x = self.ar_text_embedding(phones) + self.bert_proj(bert.transpose(1, 2))
        return self.ar_text_position(x)

    def embed_semantic(self, tokens: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        return self.ar_audio_position(self.ar_audio_embedding(tokens), positions)

    @staticmethod
    def layout_mask(x_lens: torch.Tensor, y_lens: torch.Tensor, Lx: int, Ly: int) -> torch.Tensor:
        """(B, 1, S, S) bool: which key each query may attend to, for the [text | semantic] layout."""
        S = Lx + Ly
        ar = torch.arange(S, device=x_lens.device)
        is_text = ar < Lx
        valid = torch.where(is_text[None], ar[None] < x_lens[:, None], (ar[None] - Lx) < y_lens[:, None])
        causal = ar[:, None] >= ar[None, :]
        key_ok = is_text[None, :] | (~is_text[:, None] & causal)  # (S, S)
        allowed = key_ok[None] & valid[:, None, :] & valid[:, :, None]
        allowed |= torch.eye(S, dtype=torch.bool, device=x_lens.device)[None]  # pads see themselves
        return allowed[:, None]

    def prefill(self, phones, x_lens, bert, sem, y_lens, cache: KVCache | None = None,
                lora: list[list[torch.Tensor]] | None = None) -> torch.Tensor:
        """Run the [text | semantic] block; returns hidden states (B, Lx+Ly, C). `lora`: per layer,
        each row's LoRA factors (`AdapterSet.gather`), for rows of different voices in one batch."""
        Lx, Ly = phones.shape[1], sem.shape[1]
        x = self.embed_text(phones, bert)
        if Ly:
            x = torch.cat([x, self.embed_semantic(sem)], dim=1)
        return self.h(x, self.layout_mask(x_lens, y_lens, Lx, Ly), cache, lora)

    # ---------------------------------------------------------------- training
    def forward(self, phones, x_lens, bert, sem, y_lens) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced logits and mean cross-entropy over each line's tokens and its EOS.

        phones (B, Lx), bert (B, bert_dim, Lx), sem (B, Ly) semantic tokens; lengths (B,).
        """
        B, Lx = phones.shape
        Ly = sem.shape[1]
        ar = torch.arange(Ly + 1, device=sem.device)
        targets = F.pad(sem, (0, 1), value=self.cfg.eos)
        targets = torch.where(ar[None] < y_lens[:, None], targets, self.cfg.eos)  # (B, Ly+1)
        h = self.prefill(phones, x_lens, bert, targets[:, :Ly], y_lens)
        first = h[torch.arange(B), x_lens - 1][:, None]  # last text position predicts token 0
        logits = self.ar_predict_layer(torch.cat([first, h[:, Lx:]], dim=1))  # (B, Ly+1, V)
        keep = ar[None] <= y_lens[:, None]
        loss = F.cross_entropy(logits[keep], targets[keep])
        return logits, loss

    # ---------------------------------------------------------------- inference
    @torch.no_grad()
    def first_logits(self, phones, bert, prompt) -> torch.Tensor:
        """Logits for the first new token of a single line (1, V): no cache, no sampling."""
        x_lens = torch.tensor([phones.shape[1]])
        y_lens = torch.tensor([prompt.shape[1]])
        h = self.prefill(phones, x_lens, bert, prompt, y_lens)
        return self.ar_predict_layer(h[:, -1])

    @torch.no_grad()
    def generate(
        self,
        phones: list[torch.Tensor],
        bert: list[torch.Tensor],
        prompts: list[torch.Tensor | None],
        params: SamplingParams | list[SamplingParams] | None = None,
        seeds: list[int] | None = None,
        use_cache: bool = True,
        limits: list[int] | None = None,
        engine=None,
    ) -> GenerationResult:
        """Decode many lines together; each line stops at its own EOS or length guard.

        phones[i] (Lx_i,) phone ids; bert[i] (bert_dim, Lx_i); prompts[i] (Lp_i,) semantic tokens of
        the reference clip, or None for reference-free decoding. params: one for all lines or one
        per line. seeds[i] seeds line i's own random stream, so a line decodes the same alone or in
        any batch. limits[i] caps line i's new tokens (default: params.max_new_tokens, and
        max_tokens_per_phone x its phones). With the cache, decoding runs on a `DecodeEngine`
        (static KV cache, continuous batching, CUDA graphs on CUDA); without it every step re-runs
        the whole sequence (the slow reference path, kept to check the engine against).
        """
        B = len(phones)
        plist = params if isinstance(params, list) else [params or SamplingParams()] * B
        seeds = list(seeds or [0] * B)
        prompts = [q if q is not None else torch.zeros(0, dtype=torch.long) for q in prompts]
        lim = [min(p.max_new_tokens, int(limits[i])) if limits is not None else token_limit(p, len(phones[i]))
               for i, p in enumerate(plist)]
        if not use_cache:
            return self._generate_recompute(phones, bert, prompts, plist, seeds, lim)
        engine = engine or DecodeEngine(self, max_batch=max(B, 1))
        jobs = [DecodeJob(phones[i], bert[i], prompts[i].long(), plist[i], seeds[i], lim[i], key=i) for i in range(B)]
        outs = {o.key: o for o in engine.run(jobs)}
        return GenerationResult(tokens=[outs[i].tokens for i in range(B)], finished=[outs[i].finished for i in range(B)],
                                steps=engine.steps)

    def _generate_recompute(self, phones, bert, prompts, plist, seeds, limits) -> GenerationResult:
        dev = self.ar_predict_layer.weight.device
        dtype = self.ar_predict_layer.weight.dtype
        eos = self.cfg.eos
        out: list[list[int]] = [[] for _ in phones]
        finished = [False] * len(phones)
        for i in range(len(phones)):  # line by line: nothing shared, nothing padded
            rp = RowParams.build([plist[i]], [seeds[i]], dev)
            seen = torch.zeros(1, self.cfg.vocab_size, dtype=torch.bool, device=dev)
            seen[0, prompts[i].to(dev).long()] = True
            x = phones[i].to(dev)[None]
            b = bert[i].to(dev, dtype)[None]
            while True:
                sem = torch.cat([prompts[i].to(dev).long(), torch.tensor(out[i], dtype=torch.long, device=dev)])[None]
                h = self.prefill(x, torch.tensor([x.shape[1]], device=dev), b, sem,
                                 torch.tensor([sem.shape[1]], device=dev))
                logits = self.ar_predict_layer(h[:, -1])
                count = torch.tensor([len(out[i])], device=dev)
                tok, greedy = sample(logits, seen, rp, count, eos, use_top_p=plist[i].top_p < 1.0)
                t, g = int(tok), int(greedy)
                if t == eos or g == eos:
                    finished[i] = True
                    break
                out[i].append(t)
                seen[0, t] = True
                if len(out[i]) >= limits[i]:
                    break
        return GenerationResult(tokens=[torch.tensor(o, dtype=torch.long) for o in out], finished=finished)
