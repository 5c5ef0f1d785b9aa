"""Hostile inputs at the trust boundaries: path-traversal ids and keys, code-running checkpoints."""
from __future__ import annotations

import io
import os
import pickle

import pytest
import torch
from typer.testing import CliRunner

from voicefleet.flows.cli import app
from voicefleet.flows.commands.exits import EXIT_BAD_INPUT
from voicefleet.model.checkpoint import CheckpointError, load_gpt, load_sovits
from voicefleet.tasks.store.ids import InvalidId
from voicefleet.tasks.store.storage import InvalidKey, Store
from voicefleet.tasks.voices.registry import VoiceRegistry

TRAVERSALS = ["../etc", "..", "a/b", "/etc/passwd", "s3:x", "voice\x00", "a\\..\\b", ".hidden"]


@pytest.mark.parametrize("bad", TRAVERSALS)
def test_path_traversal_ids_are_refused_everywhere_an_id_becomes_a_key(bad, local_store: Store) -> None:
    registry = VoiceRegistry(local_store)
    with pytest.raises(InvalidId):
        registry.ensure_voice(bad, "user:a")
    with pytest.raises(InvalidId):
        registry.grant(bad, "user:b")
    with pytest.raises(InvalidId):
        registry.withdraw(bad, "user:a")
    assert local_store.list() == []


@pytest.mark.parametrize("key", ["../outside", "a/../../b", "/abs", "a//b", "a/./b", "c:\\x"])
def test_storage_keys_cannot_leave_the_store(key, local_store: Store) -> None:
    with pytest.raises(InvalidKey):
        local_store.write_bytes(key, b"x")
    with pytest.raises(InvalidKey):
        local_store.create_bytes(key, b"x")


def test_cli_refuses_traversal_ids(tmp_path) -> None:
    runner = CliRunner()
    for args in (["jobs", "show", "../../etc"], ["voices", "show", "../x"],
                 ["voices", "grant", "../x", "--to", "user:b", "--as", "user:a", "--local"]):
        r = runner.invoke(app, [*args, "--store", str(tmp_path / "s")])
        assert r.exit_code == EXIT_BAD_INPUT and "not a safe id" in r.output, (args, r.output)


class RunsCode:
    """Unpickling this would run a shell command (pickle calls os.system with the argument)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("loader", [load_gpt, load_sovits])
def test_a_checkpoint_that_would_run_code_is_refused(loader, tmp_path) -> None:
    marker = str(tmp_path / "pwned")
    zipped = io.BytesIO()
    torch.save({"weight": {"w": torch.zeros(1)}, "config": RunsCode(marker), "info": "x"}, zipped)
    raw = pickle.dumps({"weight": RunsCode(marker)}, protocol=2)  # a bare pickle stream, no zip
    for data in (zipped.getvalue(), b"01" + raw[2:], raw):
        with pytest.raises(CheckpointError, match="refused to load checkpoint|not a torch checkpoint"):
            loader(data)
    assert not os.path.exists(marker)
