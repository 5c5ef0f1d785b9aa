"""Decode engine for the GPT: static KV cache, device-side state, continuous batching, CUDA graphs.

A fixed number of slots (rows) decode together. Every slot's whole state lives on the device:
its KV cache (packed [text | prompt | generated], no inner padding), current length, sampling
knobs, repetition mask, generated tokens, and done / EOS flags. One decode step samples a token
per row from the logits left by the previous step, updates the bookkeeping and runs the new
tokens through the transformer, with no host round trip; the host looks at the state only every
`sync_every` steps. Then finished rows hand back their tokens and their slots take the next
waiting jobs (continuous batching: a batch never waits for its longest line); when nothing waits,
the live rows are packed to the front so the step runs on fewer rows.

On CUDA the step is captured as a CUDA graph per (batch size, cache span) of two ladders (rows 1,
2, 4, ...; positions 256, 512, 1024, ... up to the buffer) over views of the same buffers, and the
smallest graph that holds the live rows replays, so a step attends over the positions at hand;
elsewhere it runs eagerly, attending only to the filled prefix of the cache. Both run the same
`_step` code. The buffers are kept across `run` calls while they fit, and allocated again (graphs
recaptured) when a call needs at most half their positions: one outlier sentence does not size the
cache for good. Every row stops at its job's `limit` and its `params.max_new_tokens` (54 s).

Rows of different LoRA voices share a batch when their adapters are bound (`bind_adapters`) and
each job names its adapter: every slot holds its row's factors, and the prefill and each step add
each row's own low-rank delta over the shared base (model/multi_lora.py).

    jobs --admit--> slots --step x sync_every--> harvest finished --refill / pack--> ...
"""
from __future__ import annotations

import copy
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F

from .decode_job import DecodeJob, DecodeOutput, token_limit
from .decode_step import StepWeights
from .kv_cache import KVCache
from .multi_lora import AdapterError, AdapterSet, GPTAdapter
from .sampler import RowParams, SamplingParams, sample

__all__ = ["DecodeEngine", "DecodeJob", "DecodeOutput", "span_ladder", "token_limit"]

LADDER = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
SPAN = 256  # cache positions are allocated, and graphs' spans laddered, in multiples of this


def span_ladder(S: int) -> list[int]:
    """The attention spans graphs are captured for, up to a buffer of S positions: 256, 512, ..., S."""
    return [s for s in (SPAN << i for i in range(16)) if s < S] + [S]


def pad_1d(seqs: list[torch.Tensor], value: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    lens = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = seqs[0].new_full((len(seqs), max(int(lens.max()), 1)), value)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out, lens


@dataclass
class _State:
    """Per-slot device buffers, (B, ...) each; the step reads and writes views of the first b rows."""

    k: list[torch.Tensor]  # per layer (B, H, S, D)
    v: list[torch.Tensor]
    logits: torch.Tensor  # (B, V) float32: logits for each row's next token
    seen: torch.Tensor  # (B, V) bool: tokens the repetition penalty applies to
    out: torch.Tensor  # (B, W) long: generated tokens
    n_new: torch.Tensor  # (B,) long: tokens generated so far
    limit: torch.Tensor  # (B,) long
    cur_len: torch.Tensor  # (B,) long: filled cache positions
    sem_pos: torch.Tensor  # (B,) long: sine position of the next fed token
    done: torch.Tensor  # (B,) bool: finished or free slot
    eos: torch.Tensor  # (B,) bool: ended with EOS
    last: torch.Tensor  # (B,) long: the token drawn last
    fed: torch.Tensor  # (B,) bool: the row was live when it was drawn
    rp: RowParams
    lora: list[list[torch.Tensor]] = field(default_factory=list)  # per layer: each slot's LoRA factors
    graphs: dict[tuple[int, int], Any] = field(default_factory=dict)  # (rows, span) -> CUDA graph

    def rows(self) -> list[torch.Tensor]:
        """Every (B, ...) buffer, for packing rows."""
        return [*self.k, *self.v, self.logits, self.seen, self.out, self.n_new, self.limit, self.cur_len,
                self.sem_pos, self.done, self.eos, self.last, self.fed,
                *(getattr(self.rp, f) for f in self.rp.fields()), *(t for layer in self.lora for t in layer)]


class DecodeEngine:
    """`DecodeEngine(gpt).run(jobs)` -> one DecodeOutput per job, in completion order.

    `cuda_graphs=None` uses them on CUDA devices; `sync_every` steps run between host looks.
    """

    def __init__(self, model, max_batch: int = 64, sync_every: int | None = None, cuda_graphs: bool | None = None):
        self.max_batch = max_batch
        dev = model.ar_predict_layer.weight.device
        # a host look costs a device sync on CUDA; on the CPU it is free, and every step past a
        # row's end is wasted work, so look after every step there
        self.sync_every = sync_every or (8 if dev.type == "cuda" else 1)
        self.device = dev
        self.graphs = (dev.type == "cuda") if cuda_graphs is None else cuda_graphs
        # graphs hold the addresses of the weights they were captured with: decode with a resident
        # copy, into which `bind` copies another voice's weights
        self.model = copy.deepcopy(model) if self.graphs else model
        self._bound = model
        self.adapters: AdapterSet | None = None
        self._state: _State | None = None
        self._shape: tuple | None = None
        self._step_weights: StepWeights | None = None
        self.steps = 0
        self.allocations = 0  # times the buffers were (re)allocated, graphs (re)captured with them
        self.replays: Counter[tuple[int, int]] = Counter()  # CUDA graph replays per (rows, span)

    @torch.no_grad()
    def bind(self, model) -> None:
        """Decode with `model`'s weights from now on (same architecture, device and dtype)."""
        if model is self._bound:
            return
        if self.graphs:
            for dst, src in zip(self.model.state_dict().values(), model.state_dict().values(), strict=True):
                dst.copy_(src)
            if self._step_weights is not None:
                self._step_weights.refresh()  # in place: the graphs hold its address
        else:
            self.model = model
        self._bound = model
        self.adapters = None  # factors are made for one base

    def bind_adapters(self, adapters: dict[Any, GPTAdapter] | None) -> None:
        """LoRA adapters of the bound (base) model, by id: a job naming one decodes with it, in the
        same batch as other voices' rows; None unbinds them."""
        self.adapters = AdapterSet(self.model, adapters) if adapters else None

    @property
    def cache_shape(self) -> tuple[int, int] | None:
        """(slots, cache positions) of the buffers kept now; None before the first run."""
        return None if self._state is None else (self._state.done.shape[0], self._state.k[0].shape[2])

    # ---------------------------------------------------------------- buffers
    @property
    def dtype(self) -> torch.dtype:
        return self.model.ar_audio_embedding.word_embeddings.weight.dtype

    def _allocate(self, B: int, S: int, W: int, use_top_p: bool, R: int) -> _State:
        """Buffers for B slots, S cache positions, W tokens, LoRA rank R (0: none). The kept ones serve
        while they fit and hold at most twice the positions needed; otherwise they are replaced."""
        if self._state is not None and self._shape is not None:
            b0, s0, w0, p0, d0, r0 = self._shape
            if b0 >= B and S <= s0 <= 2 * S and w0 >= W and (p0 == use_top_p or not self.graphs) \
                    and d0 == self.dtype and (r0 == R or R == 0):
                self._state.done.fill_(True)
                return self._state  # keep buffers and captured graphs across calls
        self._state = self._shape = None  # free the old buffers (and graphs) before allocating
        cfg, dev = self.model.cfg, self.device
        H, D = cfg.n_head, cfg.hidden_dim // cfg.n_head
        z = dict(device=dev)
        st = _State(
            k=[torch.zeros(B, H, S, D, dtype=self.dtype, **z) for _ in range(cfg.n_layer)],
            v=[torch.zeros(B, H, S, D, dtype=self.dtype, **z) for _ in range(cfg.n_layer)],
            logits=torch.zeros(B, cfg.vocab_size, **z), seen=torch.zeros(B, cfg.vocab_size, dtype=torch.bool, **z),
            out=torch.zeros(B, W, dtype=torch.long, **z), n_new=torch.zeros(B, dtype=torch.long, **z),
            limit=torch.ones(B, dtype=torch.long, **z), cur_len=torch.zeros(B, dtype=torch.long, **z),
            sem_pos=torch.zeros(B, dtype=torch.long, **z), done=torch.ones(B, dtype=torch.bool, **z),
            eos=torch.zeros(B, dtype=torch.bool, **z), last=torch.zeros(B, dtype=torch.long, **z),
            fed=torch.zeros(B, dtype=torch.bool, **z),
            rp=RowParams.build([SamplingParams()] * B, [0] * B, dev))
        if R:
            st.lora = [[torch.zeros(B, *t.shape[1:], dtype=self.dtype, **z) for t in layer]
                       for layer in self.adapters.stacks]
        self.model.ar_audio_position.table(S + 1)  # grow the sine table now, never inside a step
        self._state, self._shape = st, (B, S, W, use_top_p, self.dtype, R)
        self.allocations += 1
        if self.graphs:
            self._capture(st, B, S, use_top_p)
        return st

    def _capture(self, st: _State, B: int, S: int, use_top_p: bool) -> None:
        """One CUDA graph per (ladder size <= B, span <= S), over views of the first b rows and s
        positions (all slots free now)."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        pool = None
        for b in reversed([x for x in LADDER if x <= B] + ([B] if B not in LADDER else [])):
            for s in reversed(span_ladder(S)):
                with torch.cuda.stream(side):
                    for _ in range(2):  # warm-up: free slots change nothing that matters
                        self._step(st, b, s, use_top_p)
                torch.cuda.current_stream().wait_stream(side)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, pool=pool):
                    self._step(st, b, s, use_top_p)
                pool = g.pool()
                st.graphs[(b, s)] = g
        torch.cuda.synchronize()

    # ---------------------------------------------------------------- one step (graph-capturable)
    def _step(self, st: _State, b: int, S: int, use_top_p: bool) -> None:
        self._sample(st, b, use_top_p)
        self._feed(st, b, S)

    def _sample(self, st: _State, b: int, use_top_p: bool) -> None:
        """Draw each row's next token from its logits and update its bookkeeping."""
        eos = self.model.cfg.eos
        rp = RowParams(*(getattr(st.rp, f)[:b] for f in st.rp.fields()))
        done, n_new = st.done[:b], st.n_new[:b]
        tok, greedy = sample(st.logits[:b], st.seen[:b], rp, n_new, eos, use_top_p)
        live = ~done
        stop = (tok == eos) | (greedy == eos)
        append = live & ~stop
        ar = torch.arange(b, device=tok.device)
        at = n_new.clamp(max=st.out.shape[1] - 1)
        out = st.out[:b]
        out[ar, at] = torch.where(append, tok, out[ar, at])
        seen = st.seen[:b]
        seen[ar, tok] = seen[ar, tok] | append
        st.eos[:b] |= live & stop
        n_new += append.long()
        done |= (live & stop) | (n_new >= st.limit[:b])
        st.last[:b] = tok
        st.fed[:b] = live

    def _feed(self, st: _State, b: int, S: int, masked: bool = True, lora: bool = True) -> None:
        """Run each row's new token through the transformer: its key/value go to cur_len.
        `masked=False` when every row attends to all S positions (one row, S = its cur_len + 1):
        then its key/value go to position S - 1, known on the host, with no index tensor.
        `lora=False` skips the slots' LoRA factors (eager runs where no row has an adapter)."""
        w = self._weights()
        tok, live, cur_len = st.last[:b], st.fed[:b], st.cur_len[:b]
        x = F.embedding(tok, w.embedding).add_(w.position[st.sem_pos[:b]])  # (b, C)
        if masked:
            mask = (torch.arange(S, device=tok.device)[None] <= cur_len[:, None])[:, None, None, :]
            at = cur_len.clamp(max=S - 1).view(b, 1, 1, 1).expand(b, w.n_head, 1, w.head_dim)
        else:
            mask, at = None, None
        x = w.run(x, st.k, st.v, S, at, S - 1, mask, st.lora if lora else None)
        st.logits[:b] = F.linear(x, w.predict).float()
        st.sem_pos[:b] += live.long()
        cur_len += live.long()

    def _weights(self) -> StepWeights:
        """The bound model's step weights, built again after a voice switch (without graphs) or
        after `_allocate` grew the sine table; kept otherwise, as captured graphs hold them."""
        w = self._step_weights
        if w is None or w.model is not self.model or len(w.position) != len(self.model.ar_audio_position.pe):
            self._step_weights = w = StepWeights(self.model)
        return w

    # ---------------------------------------------------------------- admission
    # a prefill group's padded positions stay within this factor of its real ones. On the CPU a
    # prefill is compute-bound and a group's GEMMs are already large at a few rows of ~200
    # positions, so padding is pure waste: at 1.1, the 64-voice script's mixed prefill groups pad
    # 84.5 k positions for 79.3 k real (92.3 k at 1.25) and run 9.3 s against 10.3 s (1 thread,
    # process time), per-voice groups unchanged (8.9 / 9.1 s). On CUDA fewer, larger groups
    # launch fewer kernels: 1.25 there (not measured yet).
    PAD_WASTE, PAD_WASTE_CPU = 1.25, 1.1

    @torch.no_grad()
    def _admit(self, st: _State, slots: list[int], jobs: list[DecodeJob]) -> None:
        """Prefill the jobs in groups of like lengths (text and prompt are padded to the group's
        longest: lines of many voices differ most), each group in one batch."""
        order = sorted(range(len(jobs)), key=lambda i: (len(jobs[i].prompt), len(jobs[i].phones)))
        waste = self.PAD_WASTE_CPU if self.device.type == "cpu" else self.PAD_WASTE
        group: list[int] = []
        for i in order + [-1]:
            if i >= 0 and group:
                g = [jobs[k] for k in group + [i]]
                padded = len(g) * (max(len(j.phones) for j in g) + max(len(j.prompt) for j in g))
                if padded <= waste * sum(len(j.phones) + len(j.prompt) for j in g):
                    group.append(i)
                    continue
            if group:
                self._admit_group(st, [slots[k] for k in group], [jobs[k] for k in group])
            group = [i]

    def _admit_group(self, st: _State, slots: list[int], jobs: list[DecodeJob]) -> None:
        """Prefill the jobs together and pack each one's [text | prompt] keys/values into its slot."""
        m, dev = self.model, self.device
        n = len(jobs)
        idx = torch.tensor(slots, device=dev)
        lora = None
        if st.lora:  # each row's factors (zeros for rows without an adapter) into its slot
            rows = [self.adapters.index(j.adapter) if self.adapters else 0 for j in jobs]
            lora = self.adapters.gather(torch.tensor(rows)) if any(rows) else None
            for layer in range(len(st.lora)):
                for t, buf in enumerate(st.lora[layer]):
                    buf[idx] = lora[layer][t] if lora is not None else 0
        x, x_lens = pad_1d([j.phones.to(dev).long() for j in jobs])
        y, y_lens = pad_1d([j.prompt.to(dev).long() for j in jobs])
        if int(y_lens.max()) == 0:
            y = y[:, :0]
        x_lens, y_lens = x_lens.to(dev), y_lens.to(dev)
        Lx = x.shape[1]
        bert = torch.zeros(n, m.cfg.bert_dim, Lx, device=dev, dtype=self.dtype)
        for i, j in enumerate(jobs):
            bert[i, :, : j.bert.shape[-1]] = j.bert.to(dev, self.dtype)
        cache = KVCache(m.cfg.n_layer, chunk=0)
        h = m.prefill(x, x_lens, bert, y, y_lens, cache, lora)
        last = torch.where(y_lens > 0, Lx + y_lens - 1, x_lens - 1)
        ar = torch.arange(n, device=dev)
        logits = m.ar_predict_layer(h[ar, last]).float()
        # packed position p of row i comes from padded position p (text) or Lx + p - x_len (prompt)
        lens = x_lens + y_lens
        P = int(lens.max())
        p = torch.arange(P, device=dev)[None].expand(n, P)
        src = torch.where(p < x_lens[:, None], p, Lx + p - x_lens[:, None]).clamp(max=h.shape[1] - 1)
        for layer in range(m.cfg.n_layer):
            for buf, cached in ((st.k[layer], cache.k[layer]), (st.v[layer], cache.v[layer])):
                H, D = cached.shape[1], cached.shape[3]
                packed = cached[:, :, : h.shape[1]].gather(2, src[:, None, :, None].expand(n, H, P, D))
                buf[idx, :, :P] = packed
        seen = torch.zeros(n, m.cfg.vocab_size, dtype=torch.bool, device=dev)
        for i, j in enumerate(jobs):
            seen[i, j.prompt.to(dev).long()] = True
        rp = RowParams.build([j.params for j in jobs], [j.seed for j in jobs], dev)
        st.logits[idx] = logits
        st.seen[idx] = seen
        st.out[idx] = 0
        st.n_new[idx] = 0
        st.limit[idx] = torch.tensor([j.cap() for j in jobs], device=dev)
        st.cur_len[idx] = lens
        st.sem_pos[idx] = y_lens
        st.done[idx] = False
        st.eos[idx] = False
        for f in rp.fields():
            getattr(st.rp, f)[idx] = getattr(rp, f)

    # ---------------------------------------------------------------- the loop
    @torch.no_grad()
    def run(self, jobs: Iterable[DecodeJob], on_done: Callable[[DecodeOutput], None] | None = None) -> list[DecodeOutput]:
        """Decode every job; slots are refilled as rows finish. Jobs are admitted in the given order."""
        jobs = list(jobs)
        if not jobs:
            return []
        use_lora = any(j.adapter is not None for j in jobs)
        for j in jobs:
            if j.adapter is not None and (self.adapters is None or j.adapter not in self.adapters):
                raise AdapterError(f"job {j.key!r} names adapter {j.adapter!r}, which is not bound to the engine")
        self.model.eval()
        B = min(self.max_batch, len(jobs))
        if self.graphs:
            B = next(x for x in LADDER + (1 << 30,) if x >= B)
        caps = [j.cap() for j in jobs]
        # round up so later calls reuse the buffers (and graphs)
        S = -(-(max(len(j.phones) + len(j.prompt) + c for j, c in zip(jobs, caps)) + 1) // SPAN) * SPAN
        W = -(-(max(caps) + 1) // SPAN) * SPAN
        use_top_p = any(j.params.top_p < 1.0 for j in jobs)
        R = self.adapters.rank if use_lora or (self.graphs and self.adapters) else 0
        st = self._allocate(B, S, W, use_top_p, R)
        S_buf = st.k[0].shape[2]
        spans = span_ladder(S_buf)
        waiting = deque(jobs)
        slot_job: list[DecodeJob | None] = [None] * st.done.shape[0]
        results: list[DecodeOutput] = []

        def fill(free: list[int]) -> None:
            take = [waiting.popleft() for _ in range(min(len(free), len(waiting)))]
            if take:
                self._admit(st, free[: len(take)], take)
                for s, j in zip(free, take):
                    slot_job[s] = j

        fill(list(range(B)))
        b = sum(j is not None for j in slot_job)
        while b:
            if self.graphs:
                # the smallest graph holding the live rows and the positions this block writes
                longest = int(st.cur_len[:b].max())
                rows = min(x for x, _ in st.graphs if x >= b)
                span = next((s for s in spans if s >= longest + self.sync_every), S_buf)
                for _ in range(self.sync_every):
                    st.graphs[(rows, span)].replay()
                self.replays[(rows, span)] += self.sync_every
            else:
                # eager: attend only to the filled prefix of the cache (no mask at all for one row)
                longest = int(st.cur_len[:b].max())
                for i in range(self.sync_every):
                    self._sample(st, b, use_top_p)
                    if i == self.sync_every - 1 and bool(st.done[:b].all()):
                        break  # nobody needs the next logits
                    self._feed(st, b, min(S_buf, longest + i + 1), masked=b > 1, lora=use_lora)
            self.steps += self.sync_every
            done = st.done[:b].cpu()
            finished = [r for r in range(b) if slot_job[r] is not None and bool(done[r])]
            if finished:
                idx = torch.tensor(finished, device=self.device)
                n_new = st.n_new[idx].cpu()
                eos = st.eos[idx].cpu()
                toks = st.out[idx, : int(n_new.max()) if len(n_new) else 0].cpu()
                for i, r in enumerate(finished):
                    o = DecodeOutput(slot_job[r].key, toks[i, : int(n_new[i])].clone(), bool(eos[i]))
                    results.append(o)
                    slot_job[r] = None
                    if on_done:
                        on_done(o)
            b = self._pack(st, slot_job, b)
            # refill the free slots at the end once enough of them wait: one prefill of several rows
            # costs far less than one per row (on a CPU the prompts' prefill is a large share of a line)
            if waiting and (B - b >= self.admit_min(B) or b == 0):
                fill(list(range(b, B)))
                b = sum(j is not None for j in slot_job)
        return results

    @staticmethod
    def admit_min(B: int) -> int:
        """Free slots that wait for company before a refill: an eighth of the slots."""
        return max(1, B // 8)

    def _pack(self, st: _State, slot_job: list, b: int) -> int:
        """Make the live rows the first ones when some rows are free, moving only the rows past the
        new end into the holes before it; returns the new live count."""
        n = sum(j is not None for j in slot_job[:b])
        holes = [r for r in range(n) if slot_job[r] is None]
        if holes:
            movers = [r for r in range(n, b) if slot_job[r] is not None]
            src, dst = torch.tensor(movers, device=self.device), torch.tensor(holes, device=self.device)
            upto = int(st.cur_len[src].max()) + 1  # cache positions worth moving
            for buf in st.k + st.v:
                buf[dst, :, :upto] = buf[src, :, :upto]
            for buf in st.rows()[2 * len(st.k):]:
                buf[dst] = buf[src]
            for h, m in zip(holes, movers, strict=True):
                slot_job[h], slot_job[m] = slot_job[m], None
        st.done[n:b] = True
        return n
