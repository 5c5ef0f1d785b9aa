"""SoVITS ("s2") of GPT-SoVITS v2/v2Pro/v2ProPlus: semantic tokens + phones + reference timbre -> 32 kHz waveform.

`SynthesizerTrn` assembles: `ssl_proj` + `quantizer` (SSL features -> 25 Hz tokens), `enc_p` (token
content encoder, text encoder and MRTE), `ref_enc` (style vector from the reference spectrogram),
`flow` (normalising flow), `dec` (HiFi-GAN generator) and, for training only, `enc_q` (posterior
encoder over linear spectrograms). Attribute names are the official checkpoint's key prefixes.
v2Pro/v2ProPlus add `sv_emb` + `prelu` (the speaker-verification embedding of the reference clip
joins the style vector, gin 1024) and `ge_to512` (the style the text encoder takes).

`decode` is batched: lines of different lengths are padded and masked so that each line's audio
equals what it would be decoded alone (the generator masks every conv input, so padding never
leaks into a line's last frames).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import weight_norm

from . import attentions
from .config import SoVITSConfig
from .modules import (
    LRELU_SLOPE,
    WN,
    Flip,
    MelStyleEncoder,
    ResBlock1,
    ResBlock2,
    ResidualCouplingLayer,
    init_weights,
    sequence_mask,
)
from .quantizer import ResidualVectorQuantizer


class TextEncoder(nn.Module):
    """Content path: SSL/quantized features (ssl_dim, 50 Hz) + phones -> prior mean/log-std."""

    def __init__(self, cfg: SoVITSConfig):
        super().__init__()
        h = cfg.hidden_channels
        self.out_channels = cfg.inter_channels
        self.ssl_proj = nn.Conv1d(cfg.ssl_dim, h, 1)
        half = cfg.n_layers // 2
        self.encoder_ssl = attentions.Encoder(h, cfg.filter_channels, cfg.n_heads, half, cfg.kernel_size, cfg.p_dropout)
        self.encoder_text = attentions.Encoder(
            h, cfg.filter_channels, cfg.n_heads, cfg.n_layers, cfg.kernel_size, cfg.p_dropout)
        self.text_embedding = nn.Embedding(cfg.n_symbols, h)
        self.mrte = attentions.MRTE(h, cfg.mrte_hidden, h, cfg.mrte_heads)
        self.encoder2 = attentions.Encoder(h, cfg.filter_channels, cfg.n_heads, half, cfg.kernel_size, cfg.p_dropout)
        self.proj = nn.Conv1d(h, cfg.inter_channels * 2, 1)

    def forward(self, y, y_lengths, text, text_lengths, ge, speed: float | list[float] = 1.0):
        """y (B, ssl_dim, T); text (B, Tt) ids; ge (B, gin, 1) -> (x, m, logs, mask), time-scaled by 1/speed."""
        y_mask = sequence_mask(y_lengths, y.size(2)).unsqueeze(1).to(y.dtype)
        y = self.ssl_proj(y * y_mask) * y_mask
        y = self.encoder_ssl(y * y_mask, y_mask)
        text_mask = sequence_mask(text_lengths, text.size(1)).unsqueeze(1).to(y.dtype)
        t = self.encoder_text(self.text_embedding(text).transpose(1, 2) * text_mask, text_mask)
        y = self.mrte(y, y_mask, t, text_mask, ge)
        y = self.encoder2(y * y_mask, y_mask)
        speeds = speed if isinstance(speed, (list, tuple)) else [speed] * y.shape[0]
        if any(s != 1 for s in speeds):
            y, y_mask = stretch(y, y_lengths, speeds)
        m, logs = torch.split(self.proj(y) * y_mask, self.out_channels, dim=1)
        return y, m, logs, y_mask


def stretch(y: torch.Tensor, lengths: torch.Tensor, speeds: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Linearly resample each line's frames to int(T / speed) + 1 (speed 1: unchanged)."""
    parts = []
    for i, s in enumerate(speeds):
        yi = y[i: i + 1, :, : int(lengths[i])]
        if s != 1:
            yi = F.interpolate(yi, size=int(yi.shape[-1] / s) + 1, mode="linear")
        parts.append(yi)
    new_len = torch.tensor([p.shape[-1] for p in parts], device=y.device)
    out = y.new_zeros(y.shape[0], y.shape[1], int(new_len.max()))
    for i, p in enumerate(parts):
        out[i, :, : p.shape[-1]] = p[0]
    return out, sequence_mask(new_len, out.shape[-1]).unsqueeze(1).to(y.dtype)


class ResidualCouplingBlock(nn.Module):
    def __init__(self, channels, hidden, kernel_size, dilation_rate, n_layers, n_flows=4, gin_channels=0):
        super().__init__()
        self.flows = nn.ModuleList()
        for _ in range(n_flows):
            self.flows.append(ResidualCouplingLayer(channels, hidden, kernel_size, dilation_rate, n_layers, gin_channels))
            self.flows.append(Flip())

    def forward(self, x, x_mask, g=None, reverse: bool = False):
        if not reverse:
            for f in self.flows:
                x, _ = f(x, x_mask, g=g)
            return x
        for f in reversed(self.flows):
            x = f(x, x_mask, g=g, reverse=True)
        return x


class PosteriorEncoder(nn.Module):
    """Linear spectrogram -> latent z (training only: `enc_q`)."""

    def __init__(self, in_ch, out_ch, hidden, kernel_size, dilation_rate, n_layers, gin_channels=0):
        super().__init__()
        self.out_ch = out_ch
        self.pre = nn.Conv1d(in_ch, hidden, 1)
        self.enc = WN(hidden, kernel_size, dilation_rate, n_layers, gin_channels=gin_channels)
        self.proj = nn.Conv1d(hidden, out_ch * 2, 1)

    def forward(self, x, x_lengths, g=None):
        x_mask = sequence_mask(x_lengths, x.size(2)).unsqueeze(1).to(x.dtype)
        h = self.enc(self.pre(x) * x_mask, x_mask, g=None if g is None else g.detach())
        m, logs = torch.split(self.proj(h) * x_mask, self.out_ch, dim=1)
        z = (m + torch.randn_like(m) * torch.exp(logs)) * x_mask
        return z, m, logs, x_mask


class Generator(nn.Module):
    """HiFi-GAN generator with a global condition; `x_mask` keeps padded frames silent."""

    def __init__(self, cfg: SoVITSConfig):
        super().__init__()
        ch0 = cfg.upsample_initial_channel
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        self.upsample_rates = list(cfg.upsample_rates)
        self.conv_pre = nn.Conv1d(cfg.inter_channels, ch0, 7, 1, padding=3)
        block = ResBlock1 if cfg.resblock == "1" else ResBlock2
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
            self.ups.append(weight_norm(nn.ConvTranspose1d(ch0 // 2**i, ch0 // 2 ** (i + 1), k, u, padding=(k - u) // 2)))
            ch = ch0 // 2 ** (i + 1)
            for rk, rd in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes):
                self.resblocks.append(block(ch, rk, rd))
        self.conv_post = nn.Conv1d(ch, 1, 7, 1, padding=3, bias=False)
        self.ups.apply(init_weights)
        if cfg.gin_channels:
            self.cond = nn.Conv1d(cfg.gin_channels, ch0, 1)

    def forward(self, x, g=None, x_mask=None):
        # x (B, inter, T) -> (B, 1, T * prod(upsample_rates))
        x = self.conv_pre(x)
        if g is not None:
            x = x + self.cond(g)
        for i, up in enumerate(self.ups):
            x = F.leaky_relu(x, LRELU_SLOPE)
            if x_mask is not None:
                x = x * x_mask
                x_mask = x_mask.repeat_interleave(self.upsample_rates[i], dim=2)
            x = up(x)
            blocks = self.resblocks[i * self.num_kernels: (i + 1) * self.num_kernels]
            x = sum(b(x, x_mask) for b in blocks) / self.num_kernels
        x = F.leaky_relu(x)
        if x_mask is not None:
            x = x * x_mask
        with torch.autocast(x.device.type, enabled=False):  # the last conv stays fp32 under autocast
            return torch.tanh(self.conv_post(x.float()))


class SynthesizerTrn(nn.Module):
    def __init__(self, cfg: SoVITSConfig, with_posterior: bool = True):
        super().__init__()
        self.cfg = cfg
        self.enc_p = TextEncoder(cfg)
        self.dec = Generator(cfg)
        if with_posterior:
            self.enc_q = PosteriorEncoder(cfg.spec_channels, cfg.inter_channels, cfg.hidden_channels, 5, 1,
                                          cfg.posterior_layers, gin_channels=cfg.gin_channels)
        self.flow = ResidualCouplingBlock(cfg.inter_channels, cfg.hidden_channels, 5, 1, cfg.flow_layers,
                                          gin_channels=cfg.gin_channels)
        self.ref_enc = MelStyleEncoder(cfg.ref_spec_bins, hidden=cfg.style_hidden, out_dim=cfg.gin_channels)
        stride = 2 if cfg.semantic_frame_rate == "25hz" else 1
        self.ssl_proj = nn.Conv1d(cfg.ssl_dim, cfg.ssl_dim, stride, stride=stride)
        self.quantizer = ResidualVectorQuantizer(dimension=cfg.ssl_dim, n_q=1, bins=cfg.codebook_size)
        if cfg.is_pro:  # v2Pro / v2ProPlus: speaker-verification embedding joins the style vector
            self.sv_emb = nn.Linear(cfg.sv_dim, cfg.gin_channels)
            self.ge_to512 = nn.Linear(cfg.gin_channels, cfg.mrte_hidden)
            self.prelu = nn.PReLU(num_parameters=cfg.gin_channels)

    @property
    def has_posterior(self) -> bool:
        return hasattr(self, "enc_q")

    # ---------------------------------------------------------------- tokens
    @torch.no_grad()
    def extract_latent(self, ssl: torch.Tensor) -> torch.Tensor:
        """SSL features (B, ssl_dim, T50) -> semantic tokens (B, 1, T25)."""
        return self.quantizer.encode(self.ssl_proj(ssl)).transpose(0, 1)

    # ---------------------------------------------------------------- style
    def style(self, refer: torch.Tensor | list[torch.Tensor], refer_lengths: torch.Tensor | None = None,
              sv_emb: torch.Tensor | list[torch.Tensor] | None = None) -> torch.Tensor:
        """Reference linear spectrogram (B, bins, T) -> style vector ge (B, gin, 1).

        v2Pro/v2ProPlus also need the clip's speaker embedding `sv_emb` (B, sv_dim):
        ge = PReLU(ref_enc(spec) + sv_emb Linear(sv_emb)). A list of spectrograms (with a list of
        embeddings beside it) gives the mean of their style vectors, as the reference does for
        several reference clips.
        """
        if isinstance(refer, (list, tuple)):
            svs = sv_emb if sv_emb is not None else [None] * len(refer)
            if len(svs) != len(refer):
                raise ValueError(f"{len(refer)} reference spectrograms but {len(svs)} speaker embeddings")
            return torch.stack([self.style(r, sv_emb=e) for r, e in zip(refer, svs)]).mean(0)
        if refer_lengths is None:
            refer_lengths = torch.full((refer.shape[0],), refer.shape[2], device=refer.device)
        mask = sequence_mask(refer_lengths, refer.size(2)).unsqueeze(1).to(refer.dtype)
        return self._add_speaker(self.ref_enc(refer[:, : self.cfg.ref_spec_bins] * mask, mask), sv_emb)

    def _add_speaker(self, ge: torch.Tensor, sv_emb: torch.Tensor | None) -> torch.Tensor:
        if not self.cfg.is_pro:
            if sv_emb is not None:
                raise ValueError(f"SoVITS {self.cfg.version} takes no speaker embedding (only v2Pro/v2ProPlus do)")
            return ge
        if sv_emb is None:
            raise ValueError(f"SoVITS {self.cfg.version} needs the reference clip's speaker embedding (sv_emb)")
        sv_emb = sv_emb.reshape(-1, self.cfg.sv_dim).to(ge.dtype)
        return self.prelu(ge + self.sv_emb(sv_emb).unsqueeze(-1))

    def text_style(self, ge: torch.Tensor) -> torch.Tensor:
        """The style the text encoder (MRTE) takes: ge itself, or for v2Pro ge_to512 across channels."""
        if not self.cfg.is_pro:
            return ge
        return self.ge_to512(ge.transpose(1, 2)).transpose(1, 2)

    # ---------------------------------------------------------------- inference
    @torch.no_grad()
    def decode(self, codes: torch.Tensor, text: torch.Tensor, refer: torch.Tensor | list[torch.Tensor] | None = None,
               noise_scale: float | list[float] = 0.5, speed: float | list[float] = 1.0, *, ge: torch.Tensor | None = None,
               sv_emb: torch.Tensor | list[torch.Tensor] | None = None,
               code_lengths: torch.Tensor | None = None, text_lengths: torch.Tensor | None = None,
               generator: list[torch.Generator] | None = None,
               precision: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Semantic codes (1, B, T25) + phones (B, Tt) + timbre -> (wav (B, 1, N), lengths (B,)).

        Timbre is the reference spectrogram `refer` (1 or B rows, or a list of clips to average) with,
        for v2Pro/v2ProPlus, its speaker embedding `sv_emb`; or a precomputed style `ge` (`style()`).
        Without lengths every line uses the full padded size (the reference code's single-line case).
        `generator` (one per line) makes the prior noise reproducible line by line.
        `precision` (torch.bfloat16 / float16) runs the text encoder and the decoder under autocast;
        the flow and the decoder's last conv stay in float32. None: the weights' own dtype.
        """
        def half():
            return torch.autocast(codes.device.type, dtype=precision or torch.bfloat16, enabled=precision is not None)
        B = codes.shape[1]
        if ge is None:
            ge = self.style(refer, sv_emb=sv_emb)
        if ge.shape[0] != B:
            ge = ge.expand(B, -1, -1)
        if code_lengths is None:
            code_lengths = torch.full((B,), codes.shape[2], device=codes.device)
        if text_lengths is None:
            text_lengths = torch.full((B,), text.shape[1], device=text.device)
        quantized = self.quantizer.decode(codes)
        if self.cfg.semantic_frame_rate == "25hz":
            quantized = F.interpolate(quantized, size=quantized.shape[-1] * 2, mode="nearest")
        y_lengths = code_lengths * 2
        with half():
            _, m_p, logs_p, y_mask = self.enc_p(quantized, y_lengths, text, text_lengths, self.text_style(ge), speed)
        if precision is not None:
            m_p, logs_p, y_mask = m_p.float(), logs_p.float(), y_mask.float()
        noise = torch.randn_like(m_p) if generator is None else torch.stack(
            # drawn time-major, so a line's noise is the same whatever the padded length of its batch
            [torch.randn(m_p.shape[2], m_p.shape[1], generator=g).t().to(m_p) for g in generator])
        scale = torch.as_tensor(noise_scale, dtype=m_p.dtype, device=m_p.device).reshape(-1, 1, 1)
        z_p = m_p + noise * torch.exp(logs_p) * scale
        z = self.flow(z_p, y_mask, g=ge, reverse=True)
        frames = y_mask[:, 0].sum(-1).long()
        full = bool((frames == y_mask.shape[-1]).all())
        with half():
            o = self.dec(z * y_mask, g=ge, x_mask=None if full else y_mask)
        return o, frames * self.cfg.total_upsample

    # ---------------------------------------------------------------- training
    def forward(self, ssl, spec, spec_lengths, text, text_lengths, codes=None, sv_emb=None):
        """Teacher-forced pass for training.

        ssl (B, ssl_dim, T50) SSL features aligned with spec (B, bins, T50) linear spectrogram
        frames; returns the waveform slice for the segment, its frame ids, masks and the prior /
        posterior statistics the KL loss needs. With a frozen quantizer the semantic tokens
        `codes` (1, B, T25) can stand in for `ssl`: the codebook lookup is the same quantized input.
        v2Pro/v2ProPlus take each utterance's speaker embedding `sv_emb` (B, sv_dim), as the reference
        trainer does.
        """
        y_mask = sequence_mask(spec_lengths, spec.size(2)).unsqueeze(1).to(spec.dtype)
        ge = self._add_speaker(self.ref_enc(spec[:, : self.cfg.ref_spec_bins] * y_mask, y_mask), sv_emb)
        with torch.autocast(device_type=spec.device.type, enabled=False):
            if codes is not None:
                quantized, commit_loss = self.quantizer.decode(codes), spec.new_zeros(())
            elif self.cfg.freeze_quantizer:
                self.ssl_proj.eval()
                self.quantizer.eval()
                with torch.no_grad():
                    quantized, _, commit_loss = self.quantizer(self.ssl_proj(ssl.float()))
            else:
                quantized, _, commit_loss = self.quantizer(self.ssl_proj(ssl.float()))
        if self.cfg.semantic_frame_rate == "25hz":
            quantized = F.interpolate(quantized, size=quantized.shape[-1] * 2, mode="nearest")
        quantized = quantized[..., : spec.shape[-1]]
        if quantized.shape[-1] < spec.shape[-1]:
            quantized = F.pad(quantized, (0, spec.shape[-1] - quantized.shape[-1]))
        _, m_p, logs_p, _ = self.enc_p(quantized, spec_lengths, text, text_lengths, self.text_style(ge))
        z, m_q, logs_q, _ = self.enc_q(spec, spec_lengths, g=ge)
        z_p = self.flow(z, y_mask, g=ge)
        seg_frames = self.cfg.segment_size // self.cfg.hop_length
        z_slice, ids = rand_slice_segments(z, spec_lengths, seg_frames)
        o = self.dec(z_slice, g=ge)
        return o, ids, y_mask, (z, z_p, m_p, logs_p, m_q, logs_q), commit_loss


def rand_slice_segments(x: torch.Tensor, lengths: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random `size`-frame window per line (zero-padded when a line is shorter)."""
    B = x.shape[0]
    max_start = (lengths - size).clamp(min=0)
    ids = (torch.rand(B, device=x.device) * (max_start + 1).float()).long()
    if x.shape[-1] < size:
        x = F.pad(x, (0, size - x.shape[-1]))
    out = torch.stack([x[i, :, int(s): int(s) + size] for i, s in enumerate(ids)])
    if out.shape[-1] < size:
        out = F.pad(out, (0, size - out.shape[-1]))
    return out, ids
