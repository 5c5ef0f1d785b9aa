"""A --pretrained folder is read strictly: every official file by its exact name, checked by its keys, and
anything missing or odd is an error that names the file (issue 24: a discriminator read with a bare
`.get("weight")` silently became random; a RoBERTa folder was taken as HuBERT)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from voicefleet.model.checkpoint import CheckpointError, save_gpt, save_sovits
from voicefleet.model.config import GPTConfig, SoVITSConfig
from voicefleet.model.discriminator import MultiPeriodDiscriminator
from voicefleet.model.gpt import Text2SemanticDecoder
from voicefleet.model.sovits import SynthesizerTrn
from voicefleet.model.ssl import SSLExtractor
from voicefleet.tasks.voices.base_model import load_base
from voicefleet.tasks.voices.pretrained_layout import (
    BERT_DIR,
    DISC_FILE,
    GPT_FILE,
    HUBERT_DIR,
    SOVITS_FILE,
    V2_DIR,
    PretrainedMismatch,
    PretrainedNotFound,
    pretrained_files,
)


def tiny_bert(path: Path, hidden: int = 1024, vocab: int = 24) -> None:
    """A one-layer BERT of the GPT's BERT width (1024), saved as transformers does, with its tokenizer."""
    from transformers import BertConfig, BertForMaskedLM

    path.mkdir(parents=True)
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
                                               *"你好我不对一个老虎喜欢的真很用。"][:vocab]) + "\n", encoding="utf-8")
    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=16,
                     intermediate_size=64, max_position_embeddings=64)
    BertForMaskedLM(cfg).save_pretrained(path)


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> Path:
    """Tiny models of the official architecture, written under the official names and layouts."""
    root = tmp_path_factory.mktemp("pretrained")
    (root / V2_DIR).mkdir()
    torch.manual_seed(0)
    sovits_cfg = SoVITSConfig.tiny()
    save_gpt(Text2SemanticDecoder(GPTConfig.tiny()), root / GPT_FILE)
    save_sovits(SynthesizerTrn(sovits_cfg), root / SOVITS_FILE, with_posterior=True)
    torch.save({"weight": MultiPeriodDiscriminator(sovits_cfg.disc_channels_div).state_dict(), "iteration": 2333},
               root / DISC_FILE)
    SSLExtractor.tiny(dim=sovits_cfg.ssl_dim).save_pretrained(root / HUBERT_DIR)
    tiny_bert(root / BERT_DIR)
    return root


@pytest.fixture
def folder(official, tmp_path) -> Path:
    """A copy of the official folder this test may break."""
    return Path(shutil.copytree(official, tmp_path / "pretrained"))


def test_the_official_layout_loads_with_every_part_checked(official) -> None:
    base = load_base(f"pretrained:{official}")
    assert not base.untrained and base.name == "pretrained:" + official.name
    assert base.sovits.has_posterior
    assert base.bert_dir == str(official / BERT_DIR)
    expected = MultiPeriodDiscriminator(base.sovits.cfg.disc_channels_div).state_dict()
    assert set(base.discriminator_state) == set(expected)
    saved = torch.load(official / DISC_FILE, weights_only=True)["weight"]
    assert all(torch.equal(base.discriminator_state[k], saved[k]) for k in saved)   # the file's weights, not random
    assert base.ssl.dim == base.sovits.cfg.ssl_dim


def test_a_discriminator_without_its_weight_key_is_an_error_naming_the_file(folder) -> None:
    state = torch.load(folder / DISC_FILE, weights_only=True)
    torch.save({"model": state["weight"], "iteration": 2333}, folder / DISC_FILE)  # a trainer's raw save
    with pytest.raises(PretrainedMismatch, match=r"s2D2333k\.pth.*no 'weight' entry"):
        load_base(f"pretrained:{folder}")


def test_a_discriminator_with_missing_or_foreign_keys_is_refused(folder) -> None:
    state = torch.load(folder / DISC_FILE, weights_only=True)
    weight = state["weight"]
    dropped = next(iter(weight))
    weight.pop(dropped)
    weight["module.extra"] = torch.zeros(1)
    torch.save(state, folder / DISC_FILE)
    with pytest.raises(PretrainedMismatch) as caught:
        load_base(f"pretrained:{folder}")
    msg = str(caught.value)
    assert "s2D2333k.pth" in msg and dropped in msg and "module.extra" in msg
    assert isinstance(caught.value, CheckpointError)   # the CLI maps it to a bad-input exit


def test_no_hubert_folder_is_an_error_even_with_a_roberta_config_beside_it(folder) -> None:
    """The old loader took any folder with a config.json as HuBERT and built a random one from RoBERTa's."""
    shutil.rmtree(folder / HUBERT_DIR)
    assert (folder / BERT_DIR / "config.json").is_file()
    with pytest.raises(PretrainedNotFound, match=r"lacks chinese-hubert-base/ \(HuBERT"):
        load_base(f"pretrained:{folder}")


def test_a_hubert_folder_holding_another_model_or_missing_weights_is_refused(folder, tmp_path) -> None:
    cfg = json.loads((folder / HUBERT_DIR / "config.json").read_text())
    (folder / HUBERT_DIR / "config.json").write_text(json.dumps({**cfg, "model_type": "bert"}))
    with pytest.raises(PretrainedMismatch, match=r"chinese-hubert-base/config.json says model_type 'bert'"):
        pretrained_files(folder)
    (folder / HUBERT_DIR / "config.json").write_text(json.dumps(cfg))
    from safetensors.torch import load_file, save_file

    weights = folder / HUBERT_DIR / "model.safetensors"
    state = load_file(weights)
    state.pop("encoder.layers.0.attention.k_proj.weight")
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(PretrainedMismatch, match=r"chinese-hubert-base is not a complete HuBERT: 1 weights missing "
                                                 r"from the file, left random .*k_proj"):
        load_base(f"pretrained:{folder}")
    weights.unlink()
    with pytest.raises(PretrainedNotFound, match=r"chinese-hubert-base/model.safetensors or pytorch_model.bin"):
        pretrained_files(folder)


def test_files_are_found_by_their_exact_names_only(folder) -> None:
    (folder / GPT_FILE).rename(folder / V2_DIR / "s1bert25hz-2kh-longer-epoch=68e-step=50232.ckpt")
    (folder / DISC_FILE).unlink()
    with pytest.raises(PretrainedNotFound) as caught:
        pretrained_files(folder)
    msg = str(caught.value)
    assert GPT_FILE in msg and DISC_FILE in msg and "(SoVITS discriminator)" in msg
    assert "s1bert25hz-2kh-longer-epoch=68e-step=50232.ckpt" in msg   # what is there instead, as a hint
    with pytest.raises(PretrainedNotFound, match="pretrained folder .*nowhere does not exist"):
        pretrained_files(folder / "nowhere")


def test_an_exported_voice_in_place_of_the_pretrained_generator_is_refused(folder) -> None:
    """Fine-tuning starts from the generator's posterior encoder: a file without it would leave enc_q random."""
    save_sovits(SynthesizerTrn(SoVITSConfig.tiny()), folder / SOVITS_FILE, with_posterior=False)
    with pytest.raises(PretrainedMismatch, match=r"s2G2333k\.pth lacks \d+ of the posterior encoder's \d+ keys"):
        load_base(f"pretrained:{folder}")


def test_a_bert_of_the_wrong_width_or_without_layers_is_refused(folder) -> None:
    shutil.rmtree(folder / BERT_DIR)
    tiny_bert(folder / BERT_DIR, hidden=32)
    with pytest.raises(PretrainedMismatch, match=r"chinese-roberta-wwm-ext-large/config.json has hidden size 32"):
        load_base(f"pretrained:{folder}")
    shutil.rmtree(folder / BERT_DIR)
    tiny_bert(folder / BERT_DIR)
    cfg = json.loads((folder / BERT_DIR / "config.json").read_text())
    (folder / BERT_DIR / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 3}))
    with pytest.raises(PretrainedMismatch, match=r"model.safetensors lacks encoder layers \[1, 2\] of 3"):
        load_base(f"pretrained:{folder}")
    shutil.rmtree(folder / BERT_DIR)  # optional: without it Chinese text gets zero BERT features
    assert load_base(f"pretrained:{folder}").bert_dir is None


def test_the_published_base_carries_the_pretrained_discriminator(official, tmp_path) -> None:
    from voicefleet.tasks.store.storage import Store
    from voicefleet.tasks.voices.base_store import cached_base, publish_base

    store = Store(str(tmp_path / "store"))
    ref = publish_base(store, f"pretrained:{official}")
    assert ref.prefix != publish_base(store, "tiny").prefix and ref.bert_dir == str(official / BERT_DIR)
    disc = cached_base(store, ref.prefix).discriminator_state
    saved = torch.load(official / DISC_FILE, weights_only=True)["weight"]
    assert set(disc) == set(saved) and all(torch.equal(disc[k], saved[k]) for k in saved)


def test_enrollment_stops_before_any_work_on_an_incomplete_folder(folder, tmp_path, monkeypatch) -> None:
    import voicefleet.flows.enroll as flow

    monkeypatch.setattr(flow, "ensure_ray", lambda: pytest.fail("Ray started before the folder was checked"))
    (folder / DISC_FILE).unlink()
    with pytest.raises(PretrainedNotFound, match=r"lacks gsv-v2final-pretrained/s2D2333k\.pth \(SoVITS discriminator\)"):
        flow.enroll_batch.fn(str(tmp_path / "src"), str(tmp_path / "store"), pretrained=str(folder))


def test_render_finds_the_chinese_bert_by_its_exact_name_only(folder, tmp_path) -> None:
    """The render flow's BERT folder: the official one, or none; a folder merely named like it (what the
    render flow once took) is not it, and a folder that is not an official one is an error naming it."""
    import shutil

    from voicefleet.flows.render import bert_dir_of
    from voicefleet.tasks.voices.pretrained_layout import BERT_DIR, PretrainedNotFound

    assert bert_dir_of(None) is None
    assert bert_dir_of(str(folder)) == str(folder / BERT_DIR)
    shutil.move(folder / BERT_DIR, folder / "my-roberta-copy")
    assert bert_dir_of(str(folder)) is None
    with pytest.raises(PretrainedNotFound, match="lacks"):
        bert_dir_of(str(tmp_path))
