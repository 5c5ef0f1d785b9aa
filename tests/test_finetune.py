"""Fine-tuning in one process on a real speaker (piper's joe, tiny model configs): the loss falls
and the weights move; a run stopped after an epoch resumes to the same weights; LoRA trains only
its adapters and its delta rebuilds the voice over the base; bad data fails with its reason."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from voicefleet.flows.demo.enrollment import EN_ENROLL
from voicefleet.flows.demo.training_rows import demo_rows
from voicefleet.model.lora import apply_lora, clone
from voicefleet.tasks.enroll.prepare import make_frontend
from voicefleet.tasks.train.evaluate import Gate
from voicefleet.tasks.train.finetune import PLAIN_GPT, Recipe, TrainingFailed, finetune
from voicefleet.tasks.voices.base_model import tiny_base

RECIPE = Recipe(sovits_epochs=1, gpt_epochs=4, batch_size=4, sovits_lr=5e-4, gpt_lr=2e-3, min_items_per_epoch=8, **PLAIN_GPT)


@pytest.fixture(scope="module")
def base():
    return tiny_base()


@pytest.fixture(scope="module")
def rows(base):
    torch.set_num_threads(1)  # two OpenMP threads stall each other on a busy 2-core machine
    return demo_rows("joe", list(EN_ENROLL[:4]), base, make_frontend())


class MemoryCheckpoint:
    """A Checkpointer that round-trips the state through torch.save / weights_only load, like the store's."""

    def __init__(self):
        self.data, self.saves = None, 0

    def load(self):
        return None if self.data is None else torch.load(io.BytesIO(self.data), weights_only=True)

    def save(self, state):
        buf = io.BytesIO()
        torch.save(state, buf)
        self.data, self.saves = buf.getvalue(), self.saves + 1


def relative_change(before: dict, after: dict, prefix: str = "") -> float:
    keys = [k for k in before if k.startswith(prefix) and before[k].is_floating_point()]
    num = sum(float((after[k] - before[k]).norm() ** 2) for k in keys)
    den = sum(float(before[k].norm() ** 2) for k in keys)
    return (num / den) ** 0.5


def test_loss_falls_and_weights_move_on_a_real_speaker(base, rows):
    gpt, sovits = clone(base.gpt), clone(base.sovits)
    g0 = {k: v.clone() for k, v in gpt.state_dict().items()}
    s0 = {k: v.clone() for k, v in sovits.state_dict().items()}
    result = finetune(rows, gpt, sovits, RECIPE, log=lambda *_: None)

    losses = result.metrics["gpt_loss"]
    assert len(losses) == 4 and losses[-1] < 0.9 * losses[0], losses
    assert all(b < a for a, b in zip(losses, losses[1:])), losses  # falls every epoch
    assert np.isfinite(result.metrics["sovits_mel"]).all()
    g1, s1 = result.gpt.state_dict(), result.sovits.state_dict()
    assert relative_change(g0, g1) > 0.01
    assert relative_change(s0, s1, "dec.") > 1e-3 and relative_change(s0, s1, "enc_p.") > 1e-4
    assert relative_change(s0, s1, "quantizer.") == 0.0  # frozen, as in the reference
    assert [e["epoch"] for e in result.metrics["epoch_log"]] == list(range(1, 6))


def test_a_run_stopped_after_an_epoch_resumes_to_the_same_weights(base, rows):
    recipe = RECIPE.model_copy(update={"sovits_epochs": 1, "gpt_epochs": 2, "min_items_per_epoch": 4})
    straight = finetune(rows, clone(base.gpt), clone(base.sovits), recipe, log=lambda *_: None)

    class Stop(Exception):
        pass

    def stop_after_2(event, epoch):
        if event == "checkpoint" and epoch == 2:
            raise Stop

    ckpt = MemoryCheckpoint()
    with pytest.raises(Stop):
        finetune(rows, clone(base.gpt), clone(base.sovits), recipe, log=lambda *_: None, checkpoint=ckpt,
                 hook=stop_after_2)
    started = []
    resumed = finetune(rows, clone(base.gpt), clone(base.sovits), recipe, log=lambda *_: None, checkpoint=ckpt,
                       hook=lambda event, epoch: started.append(epoch) if event == "epoch_start" else None)

    assert started == [3] and resumed.metrics["resumed_from"] == [2]
    assert resumed.metrics["gpt_loss"] == straight.metrics["gpt_loss"]
    for a, b in ((straight.gpt, resumed.gpt), (straight.sovits, resumed.sovits)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa)


def test_lora_trains_only_adapters_and_its_delta_rebuilds_the_voice(base, rows):
    recipe = RECIPE.model_copy(update={"sovits_epochs": 1, "gpt_epochs": 3, "lora_rank": 4, "gpt_lr": 1e-2,
                                       "min_items_per_epoch": 4})
    full_params = sum(p.numel() for p in base.gpt.parameters())
    result = finetune(rows, clone(base.gpt), clone(base.sovits), recipe, log=lambda *_: None)

    assert result.lora is not None and 0 < result.metrics["trainable_params"]["gpt"] < 0.05 * full_params
    assert result.metrics["gpt_loss"][-1] < result.metrics["gpt_loss"][0]
    assert all("lora_" in k for k in result.lora["gpt"]) and all("lora_" in k for k in result.lora["sovits"])
    cfg = recipe.lora()
    rebuilt = apply_lora(base.gpt, result.lora["gpt"], cfg.gpt_targets, cfg).eval()
    phones = torch.tensor([rows[0]["phones"]])
    bert, sem = torch.as_tensor(rows[0]["bert"])[None], torch.tensor([rows[0]["semantic"]])
    lens = (torch.tensor([phones.shape[1]]), torch.tensor([sem.shape[1]]))
    with torch.no_grad():
        want = result.gpt(phones, lens[0], bert, sem, lens[1])[0]
        got = rebuilt(phones, lens[0], bert, sem, lens[1])[0]
        untouched = base.gpt(phones, lens[0], bert, sem, lens[1])[0]
    assert torch.allclose(want, got, atol=1e-4)
    assert not torch.allclose(untouched, got, atol=1e-3)  # the delta changes the voice


def test_out_of_vocabulary_phones_fail_the_voice_with_the_reason(base, rows):
    bad = [dict(r, semantic=[5000] * len(r["semantic"])) for r in rows]
    with pytest.raises((TrainingFailed, IndexError, RuntimeError), match="index|out of range|NaN"):
        finetune(bad, clone(base.gpt), clone(base.sovits), RECIPE.model_copy(update={"sovits_epochs": 0}),
                 log=lambda *_: None)


def test_nan_loss_fails_with_the_epoch_named(base, rows):
    bad = [dict(r, audio=np.full_like(r["audio"], np.nan)) for r in rows]
    with pytest.raises(TrainingFailed, match="SoVITS mel loss is nan in epoch 1"):
        finetune(bad, clone(base.gpt), clone(base.sovits), RECIPE.model_copy(update={"min_items_per_epoch": 4}),
                 log=lambda *_: None)


def test_gate_names_each_figure_below_the_bar():
    gate = Gate(min_similarity=0.8, max_wer=0.3)
    assert gate.judge({"similarity": 0.9, "wer": 0.1}) == (True, [])
    ok, reasons = gate.judge({"similarity": 0.42, "wer": 0.9})
    assert not ok and reasons == ["speaker similarity 0.42 < 0.8", "word error rate 0.90 > 0.3"]
    assert gate.judge({"similarity": 0.9, "wer": None}) == (True, [])  # no ASR for the language


def test_enroll_refuses_an_unknown_gate_mode_as_bad_input(tmp_path):
    from typer.testing import CliRunner

    from voicefleet.flows.cli import app

    out = CliRunner().invoke(app, ["enroll", str(tmp_path), "--store", str(tmp_path / "s"), "--gate", "maybe"])
    assert out.exit_code == 2 and "--gate 'maybe' is not one of enforce, report, off" in out.output
    out = CliRunner().invoke(app, ["enroll", str(tmp_path), "--store", str(tmp_path / "s"), "--min-similarity", "3"])
    assert out.exit_code == 2 and "min_similarity" in out.output
