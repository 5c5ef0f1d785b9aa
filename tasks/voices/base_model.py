"""The base model a voice is fine-tuned from: official pretrained weights (v2, v2Pro or v2ProPlus), or a tiny
random one.

`--pretrained DIR` is read by exact names (tasks/voices/pretrained_layout.py says which, per version, and which
version a folder holds). Each file is checked by its keys before it is used: GPT and SoVITS strictly
(model/checkpoint.py; the generator must carry every `enc_q` key, since fine-tuning starts from it, and must be
of the version its name says: a `v2Pro/s2Gv2Pro.pth` holding a v2 or v2ProPlus model is refused), the
discriminator's `weight` against the discriminator of that version (v2Pro adds periods 17 and 23), the
speaker-verification model (v2Pro) strictly into the ERes2NetV2 whose embedding the generator's `sv_emb`
reads, HuBERT with no weight left randomly initialised, BERT's embeddings and every encoder layer. A missing
file raises `PretrainedNotFound`, a file that is there but wrong `PretrainedMismatch`; both name the file and
say what was expected.

Without `--pretrained`, `tiny` builds the same architecture at a few hundred thousand parameters from a fixed
seed (`tiny:v2Pro` / `tiny:v2ProPlus`: the Pro generator and a tiny ERes2NetV2): the pipeline runs end to
end, and every voice made from it is marked untrained.

`load_base` loads everything a training needs (GPT, SoVITS with enc_q, discriminator, the sv model for v2Pro,
HuBERT, BERT's files checked). Enrollment's prepare step needs far less: phones (the text frontend, no BERT:
the dataset stores no BERT features) and semantic tokens (HuBERT, then the generator's `ssl_proj` +
`quantizer`). `load_feature_base` loads exactly that: HuBERT and a `SemanticEncoder` of a few million weights
read out of the generator file; no GPT, no decoder, no discriminator, no sv model, no BERT
(benchmarks/README.md, "Prepare memory").
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from voicefleet.model.checkpoint import (
    CheckpointError,
    gpt_from_checkpoint,
    load_sv,
    safe_torch_load,
    sovits_from_checkpoint,
)
from voicefleet.model.config import GPTConfig, SoVITSConfig
from voicefleet.model.discriminator import MultiPeriodDiscriminator
from voicefleet.model.gpt import Text2SemanticDecoder
from voicefleet.model.quantizer import ResidualVectorQuantizer
from voicefleet.model.sovits import SynthesizerTrn
from voicefleet.model.ssl import SSLExtractor
from voicefleet.model.sv import ERes2NetV2
from voicefleet.model.text.symbols import SYMBOLS_V2

from .pretrained_layout import (
    HF_WEIGHTS,
    PretrainedFiles,
    PretrainedMismatch,
    PretrainedNotFound,
    parse_spec,
    pretrained_files,
)

TINY = "tiny-random-v1"
TINY_SEED = 1234
# HuBERT's learned mask vector is only used to mask frames in pre-training, never for features
HUBERT_TRAINING_ONLY = {"masked_spec_embed"}


@dataclass
class BaseModel:
    name: str
    untrained: bool
    gpt: Text2SemanticDecoder
    sovits: SynthesizerTrn  # with enc_q, ready to fine-tune
    ssl: SSLExtractor
    bert_dir: str | None = None
    discriminator_state: dict | None = None
    sv: ERes2NetV2 | None = None  # v2Pro / v2ProPlus: the speaker-verification model whose embedding sv_emb reads

    @property
    def version(self) -> str:
        return self.sovits.cfg.version


SEMANTIC_KEYS = ("ssl_proj.", "quantizer.")  # the generator's keys that make semantic tokens


class SemanticEncoder(torch.nn.Module):
    """The SoVITS generator's token path alone: SSL features -> `ssl_proj` -> codebook -> 25 Hz semantic tokens.

    Its attributes carry the generator's own names, so the generator's `ssl_proj.*` and `quantizer.*` keys
    load into it unchanged, and `extract_latent` is `SynthesizerTrn.extract_latent`: the same tokens."""

    def __init__(self, cfg: SoVITSConfig):
        super().__init__()
        self.cfg = cfg
        stride = 2 if cfg.semantic_frame_rate == "25hz" else 1
        self.ssl_proj = torch.nn.Conv1d(cfg.ssl_dim, cfg.ssl_dim, stride, stride=stride)
        self.quantizer = ResidualVectorQuantizer(dimension=cfg.ssl_dim, n_q=1, bins=cfg.codebook_size)

    @classmethod
    def of(cls, sovits: SynthesizerTrn) -> SemanticEncoder:
        """The token path of a loaded generator (its weights copied, the generator left alone)."""
        out = cls(sovits.cfg)
        out.load_state_dict({k: v for k, v in sovits.state_dict().items() if k.startswith(SEMANTIC_KEYS)})
        return out.eval()

    @torch.no_grad()
    def extract_latent(self, ssl: torch.Tensor) -> torch.Tensor:
        """SSL features (B, ssl_dim, T50) -> semantic tokens (B, 1, T25)."""
        return self.quantizer.encode(self.ssl_proj(ssl)).transpose(0, 1)


@dataclass
class FeatureBase:
    """What enrollment's prepare step needs of a base: SSL features and the tokens made of them.

    `sovits` is only the generator's token path (`SemanticEncoder`), under the name `BaseModel` gives the
    whole generator, so feature code reads either one: `base.sovits.extract_latent(base.ssl(wav))`."""

    name: str
    untrained: bool
    ssl: SSLExtractor
    sovits: SemanticEncoder


def load_base(spec: str = "tiny") -> BaseModel:
    kind, version, root = parse_spec(spec)
    if kind == "tiny":
        return tiny_base(version)
    files = pretrained_files(root, version)
    gpt = _load_gpt(files.gpt)
    sovits = _load_sovits(files.sovits, files.version)
    _check_vocabularies(files, gpt, sovits)
    disc = _load_discriminator(files.disc, sovits.cfg)
    sv = _load_sv(files.sv, sovits.cfg.sv_dim) if files.sv else None
    ssl = _load_hubert(files.hubert, sovits.cfg.ssl_dim)
    bert = _check_bert(files.bert, gpt.cfg.bert_dim) if files.bert else None
    return BaseModel(_name(files), False, gpt, sovits, ssl, bert, disc, sv)


def _name(files: PretrainedFiles) -> str:
    return f"pretrained:{files.root.name}" + ("" if files.version == "v2" else f":{files.version}")


def load_feature_base(spec: str = "tiny") -> FeatureBase:
    """HuBERT and the generator's token path of the base named by `spec`; nothing else is loaded.

    The tokens equal those of `load_base(spec)` (same weights: for the tiny base the very same seeded
    models, for a pretrained folder the same files). HuBERT is checked as `load_base` checks it; the
    generator's `ssl_proj` / `quantizer` keys load strictly. The rest of the folder is checked where it is
    loaded (`publish_base`, before training)."""
    kind, version, root = parse_spec(spec)
    if kind == "tiny":
        base = tiny_base(version)  # a few hundred thousand weights: built whole, so the seeded draws are the same
        return FeatureBase(base.name, True, base.ssl, SemanticEncoder.of(base.sovits))
    files = pretrained_files(root, version)
    encoder = _load_semantic_encoder(files.sovits)  # first: the generator file is read and dropped before HuBERT
    ssl = _load_hubert(files.hubert, encoder.cfg.ssl_dim)
    return FeatureBase(_name(files), False, ssl, encoder)


def _load_semantic_encoder(path: Path) -> SemanticEncoder:
    ckpt, tag = _checkpoint(path)
    try:
        config = ckpt.get("config")
        cfg = SoVITSConfig.from_official(config) if config else SoVITSConfig.for_version(tag or "v2")
        state = {k: v for k, v in ckpt["weight"].items() if k.startswith(SEMANTIC_KEYS)}
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise PretrainedMismatch(f"{path} is not a GPT-SoVITS v2 SoVITS generator: {type(e).__name__}: {e}") from e
    del ckpt  # the rest of the generator is not kept
    encoder = SemanticEncoder(cfg)
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(state))
    shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}" for k, v in state.items()
              if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    unexpected = sorted(set(state) - set(expected))
    if missing or shapes or unexpected:
        parts = [f"{len(x)} {what} (e.g. {x[:3]})" for x, what in ((missing, "missing keys"),
                 (unexpected, "unexpected keys"), (shapes, "shape mismatches")) if x]
        raise PretrainedMismatch(f"{path}: its semantic token path (ssl_proj, quantizer) does not load: "
                                 f"{'; '.join(parts)}")
    encoder.load_state_dict(state)
    return encoder.eval()


def _checkpoint(path: Path) -> tuple[dict, str | None]:
    try:
        return safe_torch_load(path.read_bytes())
    except CheckpointError as e:
        raise PretrainedMismatch(f"{path}: {e}") from e


def _load_gpt(path: Path) -> Text2SemanticDecoder:
    ckpt, _ = _checkpoint(path)
    try:
        return gpt_from_checkpoint(ckpt).model
    except (CheckpointError, KeyError, TypeError) as e:
        raise PretrainedMismatch(f"{path} is not a GPT-SoVITS v2 GPT checkpoint: {type(e).__name__}: {e}") from e


def _load_sovits(path: Path, version: str = "v2") -> SynthesizerTrn:
    """The generator at `path`, which must be a `version` model (by its tag, else its weights and config)."""
    ckpt, tag = _checkpoint(path)
    try:
        weight = ckpt["weight"]
        with torch.device("meta"):  # key names and shapes only, no memory
            posterior = sorted(k for k in SynthesizerTrn(SoVITSConfig.from_official(ckpt["config"]),
                                                         with_posterior=True).state_dict() if k.startswith("enc_q."))
        absent = [k for k in posterior if k not in weight]
        if absent:
            raise PretrainedMismatch(
                f"{path} lacks {len(absent)} of the posterior encoder's {len(posterior)} keys (e.g. {absent[:3]}): "
                "fine-tuning starts from the pretrained generator's enc_q, so this looks like an exported voice, "
                "not s2G2333k.pth")
        loaded = sovits_from_checkpoint(ckpt, tag, with_posterior=True)
    except PretrainedMismatch:
        raise
    except (CheckpointError, KeyError, TypeError) as e:
        raise PretrainedMismatch(f"{path} is not a GPT-SoVITS v2 SoVITS generator: {type(e).__name__}: {e}") from e
    if loaded.version != version:
        raise PretrainedMismatch(f"{path} holds a SoVITS {loaded.version} model; the {version} layout names this file "
                                 f"for a {version} generator")
    return loaded.model


def _check_vocabularies(files: PretrainedFiles, gpt: Text2SemanticDecoder, sovits: SynthesizerTrn) -> None:
    """Phone ids index both models' embeddings and semantic tokens the codebook: an id beyond either is a
    device-side assert on CUDA, so the sizes must be the v2 table's and the codebook's."""
    n = len(SYMBOLS_V2)
    if gpt.cfg.phoneme_vocab_size != n:
        raise PretrainedMismatch(f"{files.gpt} has a phone vocabulary of {gpt.cfg.phoneme_vocab_size}; the v2 "
                                 f"symbol table has {n} (a v1 GPT?)")
    if sovits.cfg.n_symbols != n:
        raise PretrainedMismatch(f"{files.sovits} has {sovits.cfg.n_symbols} phone symbols; the v2 table has {n}")
    if gpt.cfg.eos != sovits.cfg.codebook_size:
        raise PretrainedMismatch(f"{files.gpt} ends its {gpt.cfg.vocab_size} audio tokens with EOS {gpt.cfg.eos}, "
                                 f"but {files.sovits} has a codebook of {sovits.cfg.codebook_size}")


def _load_discriminator(path: Path, cfg: SoVITSConfig) -> dict:
    ckpt, _ = _checkpoint(path)  # no "weight" entry: PretrainedMismatch naming the file
    state = ckpt["weight"]
    if not isinstance(state, dict):
        raise PretrainedMismatch(f"{path}: 'weight' is a {type(state).__name__}, not a state dict")
    with torch.device("meta"):
        expected = MultiPeriodDiscriminator(cfg.disc_channels_div, periods=cfg.disc_periods).state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items()
              if k in state and tuple(getattr(state[k], "shape", ())) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = [f"{len(x)} {what} (e.g. {x[:3]})" for x, what in ((missing, "missing keys"),
                 (unexpected, "unexpected keys"), (shapes, "shape mismatches")) if x]
        raise PretrainedMismatch(f"{path} does not match the SoVITS {cfg.version} discriminator (periods "
                                 f"{cfg.disc_periods}): {'; '.join(parts)}")
    return state


def sv_net_for(sv_dim: int) -> ERes2NetV2:
    """The ERes2NetV2 whose embedding is `sv_dim` wide: the official one (20480), or the tiny config's (1280)."""
    for make in (ERes2NetV2, ERes2NetV2.tiny):
        with torch.device("meta"):
            width = make().embedding_dim
        if width == sv_dim:
            return make()
    raise PretrainedMismatch(f"no speaker-verification model gives the {sv_dim}-wide embedding the generator's "
                             "sv_emb reads (ERes2NetV2 w24s4ep4: 20480)")


def _load_sv(path: Path, sv_dim: int) -> ERes2NetV2:
    try:
        return load_sv(path.read_bytes(), sv_net_for(sv_dim))
    except CheckpointError as e:
        raise PretrainedMismatch(f"{path} is not the speaker-verification model the generator reads "
                                 f"(ERes2NetV2, {sv_dim}-wide embedding): {e}") from e


def _load_hubert(folder: Path, ssl_dim: int) -> SSLExtractor:
    from transformers import HubertModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model, info = HubertModel.from_pretrained(str(folder), local_files_only=True, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise PretrainedMismatch(f"{folder} cannot be loaded as HuBERT: {type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:300]}") from e
    random = sorted(set(info.get("missing_keys", ())) - HUBERT_TRAINING_ONLY)
    mismatched = sorted(map(str, info.get("mismatched_keys", ())))
    if random or mismatched:
        detail = "; ".join(f"{len(x)} {what} (e.g. {x[:3]})" for x, what in
                           ((random, "weights missing from the file, left random"),
                            (mismatched, "shape mismatches")) if x)
        raise PretrainedMismatch(f"{folder} is not a complete HuBERT: {detail}")
    if model.config.hidden_size != ssl_dim:
        raise PretrainedMismatch(f"{folder} has hidden size {model.config.hidden_size}; the SoVITS generator's ssl_proj "
                                 f"reads {ssl_dim} (chinese-hubert-base: 768)")
    return SSLExtractor(model)


def _check_bert(folder: Path, bert_dim: int) -> str:
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.is_file())
    return _checked_bert(str(folder), bert_dim, stamp)


@lru_cache(maxsize=4)
def _checked_bert(folder: str, bert_dim: int, stamp: tuple) -> str:
    """BERT is loaded by the text frontend where it runs; here its files are checked once per process:
    the config's sizes, a tokenizer, and weights with the embeddings and every encoder layer."""
    path = Path(folder)
    cfg = json.loads((path / "config.json").read_text("utf-8"))
    hidden, layers, vocab = cfg.get("hidden_size"), cfg.get("num_hidden_layers"), cfg.get("vocab_size")
    if hidden != bert_dim:
        raise PretrainedMismatch(f"{path / 'config.json'} has hidden size {hidden}; the GPT's bert_proj reads "
                                 f"{bert_dim} (chinese-roberta-wwm-ext-large: 1024)")
    if not any((path / t).is_file() for t in ("vocab.txt", "tokenizer.json")):
        raise PretrainedNotFound(f"{path} has no tokenizer (vocab.txt or tokenizer.json)")
    weights = next(path / w for w in HF_WEIGHTS if (path / w).is_file())
    shapes = {k.removeprefix("bert."): s for k, s in _tensor_shapes(weights).items()}
    emb = shapes.get("embeddings.word_embeddings.weight")
    if emb != (vocab, hidden):
        raise PretrainedMismatch(f"{weights}: embeddings.word_embeddings.weight is {emb or 'absent'}, expected "
                                 f"{(vocab, hidden)} from config.json")
    absent = [i for i in range(int(layers or 0)) if not any(k.startswith(f"encoder.layer.{i}.") for k in shapes)]
    if absent:
        raise PretrainedMismatch(f"{weights} lacks encoder layers {absent[:5]} of {layers} (config.json)")
    return folder


def _tensor_shapes(path: Path) -> dict[str, tuple]:
    """Key -> shape of a weights file, without loading tensors where the format allows."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 — safe_open is no mapping
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the legacy (pre-zip) format cannot be memory-mapped
            state = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable weights file is a mismatch naming it
        raise PretrainedMismatch(f"{path} cannot be read as weights: {type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:300]}") from e
    if not isinstance(state, dict):
        raise PretrainedMismatch(f"{path} holds a {type(state).__name__}, not a state dict")
    return {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}


def tiny_base(version: str = "v2") -> BaseModel:
    """Deterministic tiny models: the same weights in every process for the same torch version. v2Pro /
    v2ProPlus add the Pro generator and a tiny ERes2NetV2 (drawn after the GPT, so the GPT is v2's)."""
    with torch.random.fork_rng():
        torch.manual_seed(TINY_SEED)
        gpt = Text2SemanticDecoder(GPTConfig.tiny())
        sovits = SynthesizerTrn(SoVITSConfig.tiny(version))
        sv = sv_net_for(sovits.cfg.sv_dim).eval() if sovits.cfg.is_pro else None
    ssl = SSLExtractor.tiny(dim=sovits.cfg.ssl_dim, seed=TINY_SEED)
    return BaseModel(TINY if version == "v2" else f"{TINY}-{version}", True, gpt.eval(), sovits.eval(), ssl, sv=sv)
