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


class KVCache:
    """Per-layer key/value buffers (B, H, capacity, D) that grow in chunks as tokens are added."""

    def __init__(self, n_layer: int, chunk: int = 256):
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer
        self.length = 0  # filled positions, the same for every layer after a full forward
        self.chunk = chunk

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self.length, self.length + k.shape[2]
        buf_k, buf_v = self.k[layer], self.v[layer]
        if buf_k is None or buf_k.shape[2] < end:
            cap = end + self.chunk
            new_k = k.new_empty(k.shape[0], k.shape[1], cap, k.shape[3])
            new_v = v.new_empty(v.shape[0], v.shape[1], cap, v.shape[3])
            if buf_k is not None:
                new_k[:, :, :start] = buf_k[:, :, :start]
                new_v[:, :, :start] = buf_v[:, :, :start]
            buf_k, buf_v = new_k, new_v
            self.k[layer], self.v[layer] = buf_k, buf_v
        buf_k[:, :, start:end] = k
        buf_v[:, :, start:end] = v
        return buf_k[:, :, :end], buf_v[:, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def keep(self, rows: torch.Tensor) -> None:
        """Drop batch rows that finished decoding."""
        self.k = [None if t is None else t[rows] for t in self.k]
        self.v = [None if t is None else t[rows] for t in self.v]


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

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, cache: KVCache | None = None,
                layer: int = 0) -> torch.Tensor:
        # x (B, T, C); allowed (B, 1, T, S) bool, True where a query may attend to a key
        B, T, C = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.append(layer, k, v)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, C))


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

    def forward(self, x, allowed, cache=None, layer=0):
        x = self.norm1(x + self.dropout(self.self_attn(x, allowed, cache, layer)))
        return self.norm2(x + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(x))))))


class TransformerEncoder(nn.Module):
    def __init__(self, cfg: GPTConfig, dropout: float = 0.1):
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerLayer(cfg.hidden_dim, cfg.n_head, cfg.linear_units, dropout) for _ in range(cfg.n_layer)
        )

    def forward(self, x, allowed, cache: KVCache | None = None):
        for i, layer in enumerate(self.layers):
            x = layer(x, allowed, cache, i)
        if cache is not None:
            cache.advance(x.shape[1])
        return x


@dataclass
class SamplingParams:
    top_k: int = 15
    top_p: float = 1.0
    temperature: float = 1.0
    repetition_penalty: float = 1.35
    min_new_tokens: int = 11  # EOS is masked for the first 11 steps (0.44 s), as the reference does
    max_new_tokens: int = 1350  # hard cap per line: 54 s at 25 Hz
    max_tokens_per_phone: float | None = 6.0  # runaway guard: ~3x the typical 2 tokens (80 ms) per phone


@dataclass
class GenerationResult:
    tokens: list[torch.Tensor]  # per line: new semantic tokens (no prompt, no EOS)
    finished: list[bool]  # True: ended with EOS; False: stopped by the length guard
    steps: int = 0
    extra: dict = field(default_factory=dict)


def pad_1d(seqs: list[torch.Tensor], value: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    lens = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = seqs[0].new_full((len(seqs), max(int(lens.max()), 1)), value)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out, lens


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

    def prefill(self, phones, x_lens, bert, sem, y_lens, cache: KVCache | None = None) -> torch.Tensor:
        """Run the [text | semantic] block; returns hidden states (B, Lx+Ly, C)."""
        Lx, Ly = phones.shape[1], sem.shape[1]
        x = self.embed_text(phones, bert)
        if Ly:
            x = torch.cat([x, self.embed_semantic(sem)], dim=1)
        return self.h(x, self.layout_mask(x_lens, y_lens, Lx, Ly), cache)

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
        params: SamplingParams | None = None,
        seeds: list[int] | None = None,
        use_cache: bool = True,
        limits: list[int] | None = None,
    ) -> GenerationResult:
        """Decode many lines together; each line stops at its own EOS or length guard.

        phones[i] (Lx_i,) phone ids; bert[i] (bert_dim, Lx_i); prompts[i] (Lp_i,) semantic tokens of
        the reference clip, or None for reference-free decoding. seeds[i] seeds line i's own
        random stream, so a line decodes the same alone or in any batch. limits[i] caps line i's
        new tokens (default: params.max_new_tokens, and max_tokens_per_phone x its phones).
        """
        p = params or SamplingParams()
        dev = self.ar_predict_layer.weight.device
        B = len(phones)
        eos, V = self.cfg.eos, self.cfg.vocab_size
        gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in (seeds or [0] * B)]
        prompts = [q if q is not None else torch.zeros(0, dtype=torch.long) for q in prompts]
        x, x_lens = pad_1d([t.to(dev) for t in phones])
        y, y_lens = pad_1d([t.to(dev).long() for t in prompts])
        if int(y_lens.max()) == 0:
            y = y[:, :0]
        x_lens, y_lens = x_lens.to(dev), y_lens.to(dev)
        Lx = x.shape[1]
        bert_pad = torch.zeros(B, self.cfg.bert_dim, Lx, device=dev)
        for i, b in enumerate(bert):
            bert_pad[i, :, : b.shape[-1]] = b.to(dev)

        limit = torch.full((B,), p.max_new_tokens, dtype=torch.long)
        if limits is not None:
            limit = torch.minimum(limit, torch.as_tensor(limits, dtype=torch.long))
        elif p.max_tokens_per_phone is not None:
            guard = (x_lens.cpu().float() * p.max_tokens_per_phone).ceil().long().clamp(min=p.min_new_tokens + 1)
            limit = torch.minimum(limit, guard)

        limit_list = limit.tolist()
        seen = torch.zeros(B, V, dtype=torch.bool, device=dev)  # tokens the repetition penalty applies to
        for i, q in enumerate(prompts):
            seen[i, q.to(dev)] = True

        out: list[list[int]] = [[] for _ in range(B)]
        finished = [False] * B
        rows = torch.arange(B)  # original index of each active row
        cache = KVCache(self.cfg.n_layer) if use_cache else None
        h = self.prefill(x, x_lens, bert_pad, y, y_lens, cache)
        last = torch.where(y_lens > 0, Lx + y_lens - 1, x_lens - 1)
        logits = self.ar_predict_layer(h[torch.arange(B, device=dev), last])
        valid_keys = torch.cat([torch.arange(Lx, device=dev)[None] < x_lens[:, None],
                                torch.arange(y.shape[1], device=dev)[None] < y_lens[:, None]], dim=1)

        step = 0
        while True:
            if step < p.min_new_tokens:
                logits[:, eos] = float("-inf")
            logits = apply_repetition_penalty(logits, seen, p.repetition_penalty)
            greedy = logits.argmax(-1)
            tok = sample_rows(logits, gens, rows, p)
            step += 1
            keep = []
            # one host transfer per step (not one per row): matters on CUDA
            for j, (r, t, g) in enumerate(zip(rows.tolist(), tok.tolist(), greedy.tolist())):
                if t == eos or g == eos:
                    finished[r] = True
                    continue
                out[r].append(t)
                if len(out[r]) >= limit_list[r]:
                    continue
                keep.append(j)
            if not keep:
                break
            if len(keep) < len(rows):
                sel = torch.tensor(keep, device=dev)
                rows, tok, y_lens, valid_keys, seen = rows[keep], tok[sel], y_lens[sel], valid_keys[sel], seen[sel]
                x_lens, x, bert_pad = x_lens[sel], x[sel], bert_pad[sel]
                if cache is not None:
                    cache.keep(sel)
            seen[torch.arange(len(rows), device=dev), tok] = True
            if cache is not None:
                pos = (y_lens + step - 1)[:, None]
                emb = self.embed_semantic(tok[:, None], pos)
                valid_keys = F.pad(valid_keys, (0, 1), value=True)
                h = self.h(emb, valid_keys[:, None, None, :], cache)
                logits = self.ar_predict_layer(h[:, -1])
            else:
                sem = [torch.cat([prompts[r].to(dev), torch.tensor(out[r], device=dev)]) for r in rows.tolist()]
                ys, ys_lens = pad_1d(sem)
                hs = self.prefill(x, x_lens, bert_pad, ys, ys_lens.to(dev))
                logits = self.ar_predict_layer(hs[torch.arange(len(rows), device=dev), Lx + ys_lens.to(dev) - 1])
        tokens = [torch.tensor(o, dtype=torch.long) for o in out]
        return GenerationResult(tokens=tokens, finished=finished, steps=step)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Scale down the logits of tokens already seen (prompt or generated): once per token."""
    if penalty == 1.0:
        return logits
    scaled = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, scaled, logits)


def sample_rows(logits: torch.Tensor, gens: list[torch.Generator], rows: torch.Tensor,
                p: SamplingParams) -> torch.Tensor:
    """top-p, temperature, top-k, then one draw per row from that row's own generator."""
    if p.top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop_sorted = cum > p.top_p
        drop_sorted[:, 0] = False
        drop = drop_sorted.scatter(1, idx, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    logits = logits / max(p.temperature, 1e-5)
    if p.top_k and p.top_k > 0:
        kth = torch.topk(logits, min(p.top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits.float(), dim=-1)
    # exponential race: argmax(p / q), q ~ Exp(1), is a draw from p (no device sync needed)
    q = torch.stack([torch.empty(probs.shape[-1]).exponential_(1, generator=gens[int(r)]) for r in rows])
    return (probs / q.to(probs.device)).argmax(-1)
