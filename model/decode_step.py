"""The GPT's per-token transformer step, as one TorchScript function over bare weights.

A batch-1 decode step on a CPU is 24 layers of ~15 small ops around four matrix-vector products,
so what each op costs to *call* matters as much as what it computes. Called from Python, an op
pays for argument parsing: ~3 us for an add here, ~8 us for `F.linear`, and ~52 us for fbgemm's
int8 `quantized::linear_dynamic`, whose packed-weight argument goes through a slow conversion;
from TorchScript ~2, ~6 and ~4 us (`python benchmarks/op_call_cost.py`, this 2-core EPYC).
So the layers run as one scripted function (`model/torchscript.py`), with the weights passed in
as lists; the reference implementation scripts its decode blocks for the same reason.

`StepWeights(model)` gathers those lists from a `Text2SemanticDecoder` (float weights, or the int8
packed weights of `model/quantize.py`); the tensors are the model's own, so in-place weight
updates are seen. `layers_step` is what `DecodeEngine` calls: scripted on the CPU, as plain Python
on CUDA, where the step is captured as a CUDA graph and replayed with no per-op host cost.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F

from .multi_lora import add_lora_delta
from .torchscript import for_device


class StepWeights:
    """One model's decode-step weights as the lists `layers_step` takes."""

    def __init__(self, model):
        self.model = model
        cfg = model.cfg
        self.n_head, self.head_dim = cfg.n_head, cfg.hidden_dim // cfg.n_head
        self.embedding = model.ar_audio_embedding.word_embeddings.weight
        self.position = self._position()
        self.predict = model.ar_predict_layer.weight
        self.tensors: list[list[torch.Tensor]] = []  # per layer: 4 x (weight, bias), norm1 (w, b), norm2 (w, b)
        self.packed: list[list] = []  # per layer: 4 int8 packed linears, or nothing (float weights)
        self.eps: list[float] = []  # per layer: norm1, norm2
        for layer in model.h.layers:
            a = layer.self_attn
            linears = [a._modules.get("in_proj"), a.out_proj, layer.linear1, layer.linear2]
            packed = [getattr(m, "_packed_params", None) for m in linears]
            if all(p is not None for p in packed):  # torch.ao dynamic int8 Linears
                self.packed.append([p._packed_params for p in packed])
                flat = [torch.empty(0)] * 8
            else:
                flat = [a.in_proj_weight, a.in_proj_bias]
                for m in linears[1:]:
                    flat += [m.weight, m.bias]
            self.tensors.append(flat + [layer.norm1.weight, layer.norm1.bias, layer.norm2.weight, layer.norm2.bias])
            self.eps += [layer.norm1.eps, layer.norm2.eps]
        if self.packed and len(self.packed) != len(self.tensors):
            raise ValueError("some transformer layers are int8 and some are not")

    def _position(self) -> torch.Tensor:
        """The sine table scaled by the learned alpha, in the model's dtype: one gather a step."""
        pos = self.model.ar_audio_position
        return pos.alpha * pos.pe.to(self.embedding.dtype)

    @torch.no_grad()
    def refresh(self) -> None:
        """After the model's weights were overwritten in place (only alpha's product is a copy)."""
        self.position.copy_(self._position())

    def run(self, x: torch.Tensor, K: list[torch.Tensor], V: list[torch.Tensor], S: int,
            at: torch.Tensor | None, at_pos: int, mask: torch.Tensor | None,
            lora: list[list[torch.Tensor]] | None = None) -> torch.Tensor:
        return for_device(layers_step, x.device)(x, self.tensors, self.packed, self.eps, K, V, S, at, at_pos, mask,
                                                 lora or [])


def _linear(x: torch.Tensor, w: List[torch.Tensor], packed: List[torch.classes.quantized.LinearPackedParamsBase],
            j: int, lora: List[torch.Tensor]) -> torch.Tensor:
    if len(packed) > 0:
        y = torch.ops.quantized.linear_dynamic(x, packed[j], True)  # reduce_range, as fbgemm's module does
    else:
        y = F.linear(x, w[2 * j], w[2 * j + 1])
    if len(lora) > 0 and j > 0:  # per-row LoRA on out_proj, linear1, linear2 (model/multi_lora.py)
        b = x.shape[0]
        y = add_lora_delta(y.unsqueeze(1), x.unsqueeze(1), lora[2 * j - 2][:b], lora[2 * j - 1][:b]).squeeze(1)
    return y


def layers_step(x: torch.Tensor, tensors: List[List[torch.Tensor]],
                packed: List[List[torch.classes.quantized.LinearPackedParamsBase]], eps: List[float],
                K: List[torch.Tensor], V: List[torch.Tensor], S: int, at: Optional[torch.Tensor], at_pos: int,
                mask: Optional[torch.Tensor], lora: List[List[torch.Tensor]]) -> torch.Tensor:
    """Every post-norm layer for one new token per row. x (b, C); K[i], V[i] (B, H, S_buf, D) caches.
    `lora[i]`: layer i's per-slot LoRA factors (B, in, r) / (B, r, out), or no list at all (one voice).

    Row r's key/value go to its cache position: `at` (b, H, 1, D) holds cur_len[r] per row, or,
    when `at` is None, every row writes at `at_pos`. Attention reads positions [0, S), under
    `mask` (b, 1, 1, S) when given.
    """
    b, C = x.shape[0], x.shape[1]
    for i in range(len(tensors)):
        w = tensors[i]
        p = packed[i] if len(packed) > 0 else torch.jit.annotate(List[torch.classes.quantized.LinearPackedParamsBase], [])
        lo = lora[i] if len(lora) > 0 else torch.jit.annotate(List[torch.Tensor], [])
        Ki, Vi = K[i][:b, :, :S], V[i][:b, :, :S]
        H = Ki.shape[1]
        qkv = _linear(x, w, p, 0, lo).view(b, 3, H, 1, C // H)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        if at is None:
            Ki.select(2, at_pos).copy_(k.squeeze(2))
            Vi.select(2, at_pos).copy_(v.squeeze(2))
        else:
            Ki.scatter_(2, at, k)
            Vi.scatter_(2, at, v)
        y = F.scaled_dot_product_attention(q, Ki, Vi, attn_mask=mask).view(b, C)
        x = F.layer_norm(_linear(y, w, p, 1, lo) + x, [C], w[8], w[9], eps[2 * i])
        h = torch.relu(_linear(x, w, p, 2, lo))
        x = F.layer_norm(_linear(h, w, p, 3, lo) + x, [C], w[10], w[11], eps[2 * i + 1])
    return x

