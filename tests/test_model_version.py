"""Enrollment picks the model version (v2, v2Pro, v2ProPlus) from the pretrained folder or `--model-version`,
strictly: a folder of another version, a folder holding several, or a file of the wrong version is an error
naming the files. A v2Pro base carries its speaker-verification model to the training workers; a Pro voice
fine-tunes on each utterance's embedding and renders with its reference clip's, computed once."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from voicefleet.model.checkpoint import save_gpt, save_sovits, save_sv
from voicefleet.model.config import GPTConfig, SoVITSConfig
from voicefleet.model.discriminator import MultiPeriodDiscriminator
from voicefleet.model.gpt import Text2SemanticDecoder
from voicefleet.model.sovits import SynthesizerTrn
from voicefleet.model.ssl import SSLExtractor
from voicefleet.model.sv import ERes2NetV2
from voicefleet.tasks.enroll.upload_fingerprint import base_identity
from voicefleet.tasks.voices.base_model import load_base, load_feature_base, tiny_base
from voicefleet.tasks.voices.pretrained_layout import (
    HUBERT_DIR,
    LAYOUTS,
    VERSIONS,
    PretrainedMismatch,
    PretrainedNotFound,
    base_spec,
    parse_spec,
    pretrained_files,
)


def write_pro(root: Path, version: str, sovits_name: str | None = None, seed: int = 0) -> None:
    """A tiny model of `version` under the official names (the generator under `sovits_name` if given)."""
    lay = LAYOUTS[version]
    torch.manual_seed(seed)
    cfg = SoVITSConfig.tiny(version)
    for rel in (lay.gpt, lay.sovits, lay.disc, lay.sv):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
    save_gpt(Text2SemanticDecoder(GPTConfig.tiny()), root / lay.gpt)
    save_sovits(SynthesizerTrn(cfg), root / (sovits_name or lay.sovits), with_posterior=True)
    disc = MultiPeriodDiscriminator(cfg.disc_channels_div, periods=cfg.disc_periods)
    torch.save({"weight": disc.state_dict(), "info": "tiny"}, root / lay.disc)
    save_sv(ERes2NetV2.tiny(), root / lay.sv)
    if not (root / HUBERT_DIR).exists():
        SSLExtractor.tiny(dim=cfg.ssl_dim).save_pretrained(root / HUBERT_DIR)


@pytest.fixture(scope="module")
def pro(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pretrained-pro")
    write_pro(root, "v2Pro")
    return root


@pytest.fixture
def folder(pro, tmp_path) -> Path:
    return Path(shutil.copytree(pro, tmp_path / "pretrained"))


def test_the_layouts_are_the_files_the_package_manifest_pulls():
    from voicefleet.tasks.voices import pretrained_pull as pp

    man = pp.load_manifest()
    assert set(LAYOUTS) == set(VERSIONS) == set(pp.VERSIONS)
    for version, lay in LAYOUTS.items():
        files = set(man.versions[version])
        assert {lay.gpt, lay.sovits, lay.disc} | ({lay.sv} if lay.sv else set()) <= files, version
        assert f"{HUBERT_DIR}/config.json" in files


def test_a_folder_with_v2pro_files_is_read_as_v2pro_with_every_part_checked(pro):
    files = pretrained_files(pro)
    assert files.version == "v2Pro" and files.sv == pro / "sv/pretrained_eres2netv2w24s4ep4.ckpt"
    assert files.gpt == pro / "s1v3.ckpt" and files.sovits == pro / "v2Pro/s2Gv2Pro.pth"
    base = load_base(f"pretrained:{pro}")
    assert base.version == "v2Pro" and base.sovits.cfg.is_pro and not base.untrained
    assert base.name == f"pretrained:{pro.name}:v2Pro"
    saved = torch.load(pro / "v2Pro/s2Dv2Pro.pth", weights_only=True)["weight"]
    assert set(base.discriminator_state) == set(saved)  # periods 17 and 23 included
    assert any(k.startswith(f"discriminators.{len(base.sovits.cfg.disc_periods)}.") for k in saved)
    sv = torch.load(pro / "sv/pretrained_eres2netv2w24s4ep4.ckpt", weights_only=True)
    assert all(torch.equal(base.sv.state_dict()[k], v) for k, v in sv.items())  # the file's weights, not random
    assert load_base(base_spec(str(pro), "v2Pro")).version == "v2Pro"
    features = load_feature_base(f"pretrained:{pro}")  # enrollment's prepare step: the Pro generator's tokens
    wav = torch.randn(1, 16000)
    assert features.name == base.name
    assert torch.equal(features.sovits.extract_latent(features.ssl(wav)), base.sovits.extract_latent(base.ssl(wav)))


def test_a_model_version_the_folder_does_not_hold_is_a_clear_error(pro, tmp_path):
    with pytest.raises(PretrainedMismatch, match=r"--model-version v2 needs gsv-v2final-pretrained/s2G2333k\.pth, "
                                                 r"but pretrained folder .* holds the SoVITS generator of v2Pro "
                                                 r"\(v2Pro/s2Gv2Pro\.pth\): pass --model-version v2Pro"):
        pretrained_files(pro, "v2")
    with pytest.raises(PretrainedMismatch, match=r"--model-version v2ProPlus needs v2Pro/s2Gv2ProPlus\.pth"):
        load_base(base_spec(str(pro), "v2ProPlus"))
    from voicefleet.flows.cli import app

    (tmp_path / "src").mkdir()
    r = CliRunner().invoke(app, ["enroll", str(tmp_path / "src"), "--pretrained", str(pro), "--model-version", "v2",
                                 "--store", str(tmp_path / "store")])
    assert r.exit_code == 2 and "--model-version v2 needs" in r.output and "Traceback" not in r.output, r.output
    r = CliRunner().invoke(app, ["enroll", str(tmp_path / "src"), "--tiny", "--model-version", "v3"])
    assert r.exit_code == 2 and "--model-version must be one of v2, v2Pro, v2ProPlus" in r.output, r.output


def test_enrollment_stops_before_any_work_when_the_folder_is_not_of_the_version_asked(pro, tmp_path, monkeypatch):
    import voicefleet.flows.enroll as flow

    monkeypatch.setattr(flow, "ensure_ray", lambda: pytest.fail("Ray started before the folder was checked"))
    with pytest.raises(PretrainedMismatch, match=r"--model-version v2ProPlus needs v2Pro/s2Gv2ProPlus\.pth"):
        flow.enroll_batch.fn(str(tmp_path / "src"), str(tmp_path / "store"), pretrained=str(pro),
                             model_version="v2ProPlus")


def test_a_folder_with_several_versions_must_be_told_which(folder):
    write_pro(folder, "v2ProPlus", seed=1)
    (folder / LAYOUTS["v2ProPlus"].disc).unlink()
    with pytest.raises(PretrainedMismatch, match=r"several versions: v2Pro \(v2Pro/s2Gv2Pro\.pth\), v2ProPlus "
                                                 r"\(v2Pro/s2Gv2ProPlus\.pth\); say which with --model-version"):
        pretrained_files(folder)
    assert pretrained_files(folder, "v2Pro").version == "v2Pro"
    with pytest.raises(PretrainedNotFound, match=r"lacks v2Pro/s2Dv2ProPlus\.pth \(SoVITS discriminator\)"):
        pretrained_files(folder, "v2ProPlus")


def test_files_of_the_wrong_version_or_missing_are_refused_naming_them(folder):
    write_pro(folder, "v2ProPlus", sovits_name=LAYOUTS["v2Pro"].sovits)  # a ProPlus generator under the Pro name
    with pytest.raises(PretrainedMismatch, match=r"s2Gv2Pro\.pth holds a SoVITS v2ProPlus model"):
        load_base(f"pretrained:{folder}")
    write_pro(folder, "v2Pro")
    cfg = SoVITSConfig.tiny()
    torch.save({"weight": MultiPeriodDiscriminator(cfg.disc_channels_div).state_dict()}, folder / LAYOUTS["v2Pro"].disc)
    with pytest.raises(PretrainedMismatch, match=r"s2Dv2Pro\.pth does not match the SoVITS v2Pro discriminator "
                                                 r"\(periods \(2, 3, 5, 7, 11, 17, 23\)\): \d+ missing keys"):
        load_base(f"pretrained:{folder}")
    write_pro(folder, "v2Pro")
    save_sv(ERes2NetV2(num_blocks=(1, 1, 1, 1), m_channels=8, expansion=4), folder / LAYOUTS["v2Pro"].sv)
    with pytest.raises(PretrainedMismatch, match=r"eres2netv2w24s4ep4\.ckpt is not the speaker-verification"):
        load_base(f"pretrained:{folder}")
    (folder / LAYOUTS["v2Pro"].sv).unlink()
    with pytest.raises(PretrainedNotFound, match=r"lacks sv/pretrained_eres2netv2w24s4ep4\.ckpt "
                                                 r"\(speaker-verification model\)"):
        pretrained_files(folder)


def test_base_specs_name_the_version_and_enrollment_tells_them_apart(pro):
    assert base_spec(None) == "tiny" and base_spec(None, "v2Pro") == "tiny:v2Pro"
    assert base_spec(str(pro), "v2Pro") == f"pretrained:v2Pro:{pro.resolve()}"
    assert parse_spec(f"pretrained:v2Pro:{pro}") == ("pretrained", "v2Pro", str(pro))
    assert parse_spec(f"pretrained:{pro}") == ("pretrained", None, str(pro))
    assert parse_spec("tiny:v2ProPlus") == ("tiny", "v2ProPlus", None)
    for bad in ("tiny:v3", "pretrained:", "remote:x"):
        with pytest.raises(ValueError, match="unknown base model"):
            parse_spec(bad)
    with pytest.raises(ValueError, match="unknown model version 'v4'"):
        base_spec(None, "v4")
    assert len({base_identity("tiny"), base_identity("tiny:v2Pro"), base_identity("tiny:v2ProPlus")}) == 3
    digest = base_identity(f"pretrained:v2:{pro}").split(":")[1]
    assert base_identity(f"pretrained:v2Pro:{pro}") == f"pretrained:v2Pro:{digest}"
    assert base_identity(f"pretrained:{pro}") == f"pretrained:{digest}"  # a v2 voice's identity as before


def test_the_published_pro_base_carries_its_speaker_verification_model(tmp_path):
    from voicefleet.tasks.store.storage import Store
    from voicefleet.tasks.voices.base_store import cached_base, publish_base

    store = Store(str(tmp_path / "store"))
    ref = publish_base(store, "tiny:v2Pro")
    assert ref.prefix != publish_base(store, "tiny").prefix and ref.name == "tiny-random-v1-v2Pro"
    cached = cached_base(store, ref.prefix)
    want = tiny_base("v2Pro").sv.state_dict()
    assert cached.sovits.cfg.version == "v2Pro"
    assert all(torch.equal(cached.sv.state_dict()[k], v) for k, v in want.items())
    assert cached_base(store, publish_base(store, "tiny").prefix).sv is None
    store.delete(f"{ref.prefix}/sv.ckpt")
    from voicefleet.tasks.voices import base_store

    base_store._CACHE.clear()
    with pytest.raises(FileNotFoundError):  # a Pro base without its sv model cannot make embeddings
        cached_base(store, ref.prefix)


def test_a_pro_voice_fine_tunes_on_each_utterances_embedding_and_renders_with_its_own(tmp_path):
    from voicefleet.flows.demo.enrollment import EN_ENROLL
    from voicefleet.flows.demo.training_rows import demo_rows
    from voicefleet.model.synthesizer import LineRequest, LineSettings, Synthesizer, VoicePrompt
    from voicefleet.tasks.enroll.prepare import make_frontend
    from voicefleet.tasks.measure.audio import encode_flac
    from voicefleet.tasks.store.storage import Store
    from voicefleet.tasks.train.finetune import Recipe, finetune
    from voicefleet.tasks.train.unit import speaker_embeddings
    from voicefleet.tasks.voices.artifacts import load_sv_emb, save_sv_emb

    torch.set_num_threads(1)
    base = tiny_base("v2ProPlus")
    frontend = make_frontend()
    rows = demo_rows("joe", list(EN_ENROLL[:3]), base, frontend)
    ref = rows[0]["audio"]
    emb = speaker_embeddings(base.sv, rows, encode_flac(ref, 32000), "cpu")
    assert emb.shape == (base.sovits.cfg.sv_dim,) and np.isfinite(emb).all()
    assert all(r["sv_emb"].shape == (base.sovits.cfg.sv_dim,) for r in rows)
    assert not torch.equal(rows[0]["sv_emb"], rows[1]["sv_emb"])  # each utterance its own
    # the reference clip's own embedding (through a 16-bit FLAC round trip), not another utterance's
    near, far = (float(np.abs(emb - rows[i]["sv_emb"].numpy()).max()) for i in (0, 1))
    assert near < 0.01 < far, (near, far)

    gpt, sovits = tiny_base("v2ProPlus").gpt, tiny_base("v2ProPlus").sovits
    before = sovits.sv_emb.weight.detach().clone()
    recipe = Recipe(sovits_epochs=1, gpt_epochs=1, batch_size=3, sovits_lr=5e-4, gpt_lr=2e-3, min_items_per_epoch=3)
    result = finetune(rows, gpt, sovits, recipe, discriminator_state=None, log=lambda *_: None)
    assert not torch.equal(before, result.sovits.sv_emb.weight)  # the embedding path was trained

    store = Store(str(tmp_path / "store"))
    files = save_sv_emb(store, "voices/v/runs/r", emb)
    assert np.array_equal(load_sv_emb(store, files), emb.astype(np.float32)) and load_sv_emb(store, {}) is None
    synth = Synthesizer(frontend)
    two = rows[:2]  # a clip of 3-10 s (one of piper's takes may be under 3 s)
    prompt = VoicePrompt(np.concatenate([r["audio"] for r in two]), " ".join(r["text"] for r in two), "en",
                         np.concatenate([r["semantic"] for r in two]), sv_emb=load_sv_emb(store, files))
    voice = synth.load_voice(result.gpt, result.sovits, prompt)
    [out] = synth.synthesize(voice, [LineRequest("Hello there.", "en", LineSettings(seed=0, max_tokens_per_phone=2.5))])
    assert out.wav.size > 0 and np.isfinite(out.wav).all()
