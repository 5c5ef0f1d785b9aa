"""Many LoRA voices in one GPT batch: per-row adapters over a shared base (the S-LoRA / Punica idea).

A LoRA voice changes the shared base GPT only by low-rank factors on each transformer layer's
attention output (`self_attn.out_proj`) and FFN (`linear1`, `linear2`): y = W x + s * B (A x).
Merging them (model/lora.py `apply_lora`) gives one model per voice, so a batch can hold one voice.
Kept apart instead, the base runs once for the whole batch and each row adds its own delta: the
rows' factors are gathered into (b, in, r) and (b, r, out) stacks and applied with two small
batched matmuls, `bmm(bmm(x, A_rows), B_rows)`. A row with no adapter gathers zero factors.

    voices' lora states --GPTAdapter.from_state--> AdapterSet (stacked, index 0 = none)
        --gather(row indices)--> per layer [A_out, B_out, A_1, B_1, A_2, B_2]  (b, in, r) / (b, r, out)

The decode engine copies a row's gathered factors into its slot when the row is admitted
(model/engine.py), the prefill and each decode step add each row's delta to the adapted linears' output in place
(`add_lora_delta`)
(model/gpt.py, model/decode_step.py). SoVITS is not adapted per row: its LoRA voices are merged
and batched per voice.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, List

import torch

from .lora import LoRAConfig

# the adapted projections of each layer, in the order `layers_step` applies them (its j = 1, 2, 3)
TARGETS = ("self_attn.out_proj", "linear1", "linear2")
_KEY = re.compile(r"^h\.layers\.(\d+)\.(self_attn\.out_proj|linear1|linear2)\.lora_([AB])\.weight$")


class AdapterError(ValueError):
    """A LoRA state cannot be decoded per row over this base (other layers, shapes, unknown id)."""


def add_lora_delta(y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """y (n, T, out) += each row's low-rank delta (x (n, T, in) @ a (n, in, r)) @ b (n, r, out), in place.

    One pass over y: `bmm` then `+` writes the (n, T, out) delta and reads it back, which cost a
    64-row x 200-position prefill's `linear1` +51 % over the base linear, against +9 % in place
    (1 thread, `python benchmarks/lora_delta_cost.py`)."""
    return y.baddbmm_(torch.bmm(x, a), b)


@dataclass
class GPTAdapter:
    """One voice's GPT LoRA factors, per (layer, target): A (r, in) and B (out, r) scaled by alpha / r."""

    factors: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]
    rank: int

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], cfg: LoRAConfig) -> "GPTAdapter":
        """From `lora_state(gpt)` (peft's key names, as a LoRA voice stores them under `gpt/`)."""
        parts: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
        for key, t in state.items():
            m = _KEY.match(key)
            if m is None:
                raise AdapterError(f"LoRA key {key!r} is outside the per-row decodable layers "
                                   f"({', '.join(TARGETS)} of each transformer layer); decode this voice merged")
            parts.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = t.detach().float()
        factors = {}
        for where, ab in parts.items():
            if set(ab) != {"A", "B"}:
                raise AdapterError(f"LoRA layer {where} has only lora_{''.join(ab)}")
            a, b = ab["A"], ab["B"]
            if a.dim() != 2 or b.dim() != 2 or a.shape[0] != cfg.rank or b.shape[1] != cfg.rank:
                raise AdapterError(f"LoRA layer {where}: A {tuple(a.shape)}, B {tuple(b.shape)} "
                                   f"do not fit rank {cfg.rank}")
            factors[where] = (a, b * (cfg.alpha / cfg.rank))
        if not factors:
            raise AdapterError("the LoRA state has no GPT factors")
        return cls(factors, cfg.rank)


class AdapterSet:
    """Adapters a decode engine binds: `index(id)` -> row index (0: no adapter), `gather(rows)` ->
    each layer's stacked factors for those rows. Ranks are zero-padded to the largest one."""

    def __init__(self, base, adapters: dict[Any, GPTAdapter]):
        if not adapters:
            raise AdapterError("an adapter set needs at least one adapter")
        cfg = base.cfg
        dev = base.ar_predict_layer.weight.device
        dtype = base.ar_audio_embedding.word_embeddings.weight.dtype
        C, Fd = cfg.hidden_dim, cfg.linear_units
        dims = {"self_attn.out_proj": (C, C), "linear1": (C, Fd), "linear2": (Fd, C)}  # (in, out)
        self.rank = max(a.rank for a in adapters.values())
        self.ids = {key: i + 1 for i, key in enumerate(adapters)}
        n, r = len(adapters) + 1, self.rank
        # per layer [A_out, B_out, A_1, B_1, A_2, B_2]: A (n, in, r), B (n, r, out); row 0 stays zero
        self.stacks: list[list[torch.Tensor]] = []
        for layer in range(cfg.n_layer):
            row = []
            for t in TARGETS:
                fin, fout = dims[t]
                row += [torch.zeros(n, fin, r), torch.zeros(n, r, fout)]
            self.stacks.append(row)
        for key, ad in adapters.items():
            i = self.ids[key]
            for (layer, t), (a, b) in ad.factors.items():
                if layer >= cfg.n_layer:
                    raise AdapterError(f"adapter {key!r} adapts layer {layer}; the base has {cfg.n_layer}")
                j = TARGETS.index(t)
                fin, fout = dims[t]
                if a.shape[1] != fin or b.shape[0] != fout:
                    raise AdapterError(f"adapter {key!r}, layer {layer} {t}: factors {tuple(a.shape)} x "
                                       f"{tuple(b.shape)} do not fit the base's {fin} -> {fout}")
                self.stacks[layer][2 * j][i, :, : a.shape[0]] = a.T
                self.stacks[layer][2 * j + 1][i, : b.shape[1]] = b.T
        self.stacks = [[s.to(dev, dtype) for s in row] for row in self.stacks]
        self.device, self.dtype = dev, dtype

    def __contains__(self, key: Any) -> bool:
        return key is None or key in self.ids

    def index(self, key: Any) -> int:
        if key is None:
            return 0
        if key not in self.ids:
            raise AdapterError(f"adapter {key!r} is not bound to the engine (bound: {len(self.ids)})")
        return self.ids[key]

    def gather(self, rows: torch.Tensor) -> List[List[torch.Tensor]]:
        """rows (n,) long adapter indices -> per layer [A_out, B_out, A_1, B_1, A_2, B_2], (n, ...) each."""
        rows = rows.to(self.device)
        return [[s.index_select(0, rows) for s in row] for row in self.stacks]
