"""One config object per model: `GPTConfig` (text-to-semantic, "s1") and `SoVITSConfig` ("s2").

`v2()` gives the official GPT-SoVITS v2 sizes (so official checkpoints load strictly), `tiny()` a
model of a few hundred thousand parameters with the same architecture, for tests and the demo.
`from_official` / `to_official` translate to and from the config dicts stored inside the official
checkpoint files (the s1 yaml and the s2 json), so a voice saved here opens in the reference project.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

PRO_VERSIONS = ("v2Pro", "v2ProPlus")
SOVITS_VERSIONS = ("v2", *PRO_VERSIONS)


@dataclass
class GPTConfig:
    phoneme_vocab_size: int = 732  # v2 symbol table
    vocab_size: int = 1025  # 1024 semantic tokens + EOS
    eos: int = 1024
    embedding_dim: int = 512
    hidden_dim: int = 512
    n_head: int = 16
    n_layer: int = 24
    linear_units: int = 2048
    dropout: float = 0.0
    bert_dim: int = 1024  # chinese-roberta-wwm-ext-large hidden size
    # inference defaults (s1 yaml "inference" + TTS defaults)
    top_k: int = 15
    top_p: float = 1.0
    temperature: float = 1.0
    repetition_penalty: float = 1.35
    hz: int = 25  # semantic tokens per second
    max_sec: int = 54  # data.max_sec: longest utterance seen in training

    @classmethod
    def v2(cls) -> GPTConfig:
        return cls()

    @classmethod
    def tiny(cls) -> GPTConfig:
        return cls(embedding_dim=48, hidden_dim=48, n_head=2, n_layer=2, linear_units=96)

    @classmethod
    def from_official(cls, cfg: dict[str, Any]) -> GPTConfig:
        m = cfg["model"]
        kw = dict(
            phoneme_vocab_size=m["phoneme_vocab_size"], vocab_size=m["vocab_size"], eos=m["EOS"],
            embedding_dim=m["embedding_dim"], hidden_dim=m["hidden_dim"], n_head=m["head"],
            n_layer=m["n_layer"], linear_units=m["linear_units"], dropout=m.get("dropout", 0.0),
        )
        if "bert_dim" in m:
            kw["bert_dim"] = m["bert_dim"]
        if "inference" in cfg and "top_k" in cfg["inference"]:
            kw["top_k"] = cfg["inference"]["top_k"]
        if "data" in cfg and "max_sec" in cfg["data"]:
            kw["max_sec"] = cfg["data"]["max_sec"]
        return cls(**kw)

    def to_official(self) -> dict[str, Any]:
        """The config dict stored in a GPT `.ckpt`, shaped like the reference's s1 yaml."""
        model = {
            "vocab_size": self.vocab_size, "phoneme_vocab_size": self.phoneme_vocab_size,
            "embedding_dim": self.embedding_dim, "hidden_dim": self.hidden_dim, "head": self.n_head,
            "linear_units": self.linear_units, "n_layer": self.n_layer, "dropout": self.dropout,
            "EOS": self.eos, "random_bert": 0,
        }
        if self.bert_dim != 1024:
            model["bert_dim"] = self.bert_dim
        return {
            "train": {"seed": 1234, "epochs": 20, "batch_size": 8, "save_every_n_epoch": 1,
                      "precision": "16-mixed", "gradient_clip": 1.0},
            "optimizer": {"lr": 0.01, "lr_init": 0.00001, "lr_end": 0.0001,
                          "warmup_steps": 2000, "decay_steps": 40000},
            "data": {"max_eval_sample": 8, "max_sec": self.max_sec, "num_workers": 4, "pad_val": self.eos},
            "model": model,
            "inference": {"top_k": self.top_k},
        }


@dataclass
class SoVITSConfig:
    # audio / spectrogram (s2.json "data")
    sampling_rate: int = 32000
    filter_length: int = 2048
    hop_length: int = 640
    win_length: int = 2048
    n_mel_channels: int = 128
    mel_fmin: float = 0.0
    mel_fmax: float | None = None
    # model (s2.json "model")
    inter_channels: int = 192
    hidden_channels: int = 192
    filter_channels: int = 768
    n_heads: int = 2
    n_layers: int = 6
    kernel_size: int = 3
    p_dropout: float = 0.1
    resblock: str = "1"
    resblock_kernel_sizes: list[int] = field(default_factory=lambda: [3, 7, 11])
    resblock_dilation_sizes: list[list[int]] = field(default_factory=lambda: [[1, 3, 5]] * 3)
    upsample_rates: list[int] = field(default_factory=lambda: [10, 8, 2, 2, 2])
    upsample_initial_channel: int = 512
    upsample_kernel_sizes: list[int] = field(default_factory=lambda: [16, 16, 8, 2, 2])
    gin_channels: int = 512
    semantic_frame_rate: str = "25hz"
    freeze_quantizer: bool = True
    n_symbols: int = 732
    # sizes the reference hard-codes; explicit here so `tiny` can shrink them
    ssl_dim: int = 768  # chinese-hubert-base hidden size
    codebook_size: int = 1024
    ref_spec_bins: int = 704  # v2 reference encoder reads the lowest 704 of 1025 bins
    style_hidden: int = 128
    mrte_hidden: int = 512
    mrte_heads: int = 4
    flow_layers: int = 4  # WN layers per coupling
    posterior_layers: int = 16
    sv_dim: int = 20480  # v2Pro: width of the speaker-verification embedding (ERes2NetV2 2048 x 10)
    disc_channels_div: int = 1  # discriminator width divisor (training only)
    # training (s2.json "train")
    segment_size: int = 20480
    learning_rate: float = 1e-4
    betas: tuple[float, float] = (0.8, 0.99)
    eps: float = 1e-9
    lr_decay: float = 0.999875
    c_mel: float = 45.0
    c_kl: float = 1.0
    text_low_lr_rate: float = 0.4
    version: str = "v2"

    @property
    def is_pro(self) -> bool:
        """v2Pro / v2ProPlus: the style vector also takes a speaker-verification embedding."""
        return self.version in PRO_VERSIONS

    @property
    def disc_periods(self) -> tuple[int, ...]:
        """Periods of the multi-period discriminator used to fine-tune this version."""
        return (2, 3, 5, 7, 11, 17, 23) if self.is_pro else (2, 3, 5, 7, 11)

    @property
    def spec_channels(self) -> int:
        return self.filter_length // 2 + 1

    @property
    def total_upsample(self) -> int:
        out = 1
        for r in self.upsample_rates:
            out *= r
        return out

    @classmethod
    def v2(cls) -> SoVITSConfig:
        return cls()

    @classmethod
    def v2pro(cls) -> SoVITSConfig:
        """s2v2Pro.json: v2 with gin 1024 (style vector + speaker embedding) and no dropout."""
        return cls(gin_channels=1024, p_dropout=0.0, version="v2Pro")

    @classmethod
    def v2proplus(cls) -> SoVITSConfig:
        """s2v2ProPlus.json: v2Pro with a wider decoder (768 channels, first upsampling kernel 20)."""
        return cls(gin_channels=1024, p_dropout=0.0, upsample_initial_channel=768,
                   upsample_kernel_sizes=[20, 16, 8, 2, 2], version="v2ProPlus")

    @classmethod
    def for_version(cls, version: str) -> SoVITSConfig:
        """Official sizes of a supported SoVITS version ("v2", "v2Pro", "v2ProPlus")."""
        makers = {"v2": cls.v2, "v2Pro": cls.v2pro, "v2ProPlus": cls.v2proplus}
        if version not in makers:
            raise ValueError(f"unsupported SoVITS version {version!r}; supported: {', '.join(makers)}")
        return makers[version]()

    @classmethod
    def tiny(cls, version: str = "v2") -> SoVITSConfig:
        """A few hundred thousand parameters; `version` v2Pro/v2ProPlus adds the speaker-embedding path
        (its embedding is `sv_dim` 1280 wide, what `sv.ERes2NetV2.tiny()` produces)."""
        if version != "v2":
            extra = {"version": version, "sv_dim": 1280, "p_dropout": 0.0}
            if version == "v2ProPlus":
                extra.update(upsample_initial_channel=48, upsample_kernel_sizes=[20, 16, 8, 2, 2])
            elif version != "v2Pro":
                raise ValueError(f"unsupported SoVITS version {version!r}")
            return dataclasses.replace(cls.tiny(), **extra)
        return cls(
            inter_channels=16, hidden_channels=16, filter_channels=32, n_heads=2, n_layers=2,
            resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]], upsample_initial_channel=32,
            gin_channels=32, ssl_dim=32, style_hidden=16, mrte_hidden=32, mrte_heads=2,
            flow_layers=2, posterior_layers=4, disc_channels_div=32, segment_size=6400,
        )

    @classmethod
    def from_official(cls, hps: dict[str, Any]) -> SoVITSConfig:
        """From the s2 json (as a dict; HParams objects are converted by the checkpoint loader)."""
        known = {f.name for f in dataclasses.fields(cls)}
        kw: dict[str, Any] = {}
        for section in ("data", "model", "train"):
            for k, v in (hps.get(section) or {}).items():
                if k in known:
                    kw[k] = v
        if "betas" in kw:
            kw["betas"] = tuple(kw["betas"])
        if "version" in hps:
            kw["version"] = hps["version"]
        kw.setdefault("resblock", "1")
        return cls(**kw)

    def to_official(self) -> dict[str, Any]:
        """The config stored in a SoVITS `.pth`, shaped like the reference's s2.json."""
        extra = {}
        tiny_fields = ("ssl_dim", "codebook_size", "ref_spec_bins", "style_hidden", "mrte_hidden",
                       "mrte_heads", "flow_layers", "posterior_layers", "disc_channels_div", "sv_dim")
        default = SoVITSConfig()
        for name in tiny_fields:
            if getattr(self, name) != getattr(default, name):
                extra[name] = getattr(self, name)
        return {
            "train": {"log_interval": 100, "eval_interval": 500, "seed": 1234, "epochs": 100,
                      "learning_rate": self.learning_rate, "betas": list(self.betas), "eps": self.eps,
                      "batch_size": 32, "fp16_run": True, "lr_decay": self.lr_decay,
                      "segment_size": self.segment_size, "init_lr_ratio": 1, "warmup_epochs": 0,
                      "c_mel": self.c_mel, "c_kl": self.c_kl, "text_low_lr_rate": self.text_low_lr_rate,
                      "grad_ckpt": False},
            "data": {"max_wav_value": 32768.0, "sampling_rate": self.sampling_rate,
                     "filter_length": self.filter_length, "hop_length": self.hop_length,
                     "win_length": self.win_length, "n_mel_channels": self.n_mel_channels,
                     "mel_fmin": self.mel_fmin, "mel_fmax": self.mel_fmax, "add_blank": True,
                     "n_speakers": 300, "cleaned_text": True},
            "model": {"inter_channels": self.inter_channels, "hidden_channels": self.hidden_channels,
                      "filter_channels": self.filter_channels, "n_heads": self.n_heads,
                      "n_layers": self.n_layers, "kernel_size": self.kernel_size,
                      "p_dropout": self.p_dropout, "resblock": self.resblock,
                      "resblock_kernel_sizes": list(self.resblock_kernel_sizes),
                      "resblock_dilation_sizes": [list(d) for d in self.resblock_dilation_sizes],
                      "upsample_rates": list(self.upsample_rates),
                      "upsample_initial_channel": self.upsample_initial_channel,
                      "upsample_kernel_sizes": list(self.upsample_kernel_sizes), "n_layers_q": 3,
                      "use_spectral_norm": False, "gin_channels": self.gin_channels,
                      "semantic_frame_rate": self.semantic_frame_rate,
                      "freeze_quantizer": self.freeze_quantizer, "version": self.version, **extra},
            "s2_ckpt_dir": "logs/s2", "content_module": "cnhubert", "version": self.version,
        }
