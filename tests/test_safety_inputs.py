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


def test_cli_refuses_traversal_ids(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("VOICEFLEET_LOCAL_MODE", "1")  # `--as user:a --local`: a single-user machine
    monkeypatch.delenv("VOICEFLEET_PRINCIPAL_KEY", raising=False)
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


def _script_with(path, text_column) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"line_id": ["l1"], "voice_id": ["ada"], "text": text_column, "language": ["en"]}), path)


def test_a_parquet_script_whose_column_would_unpickle_is_refused_unread(tmp_path, monkeypatch) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray.data  # noqa: F401  registers arrow_pickled_object, as in any process that uses Ray Data
    from ray.air.util.object_extensions.arrow import ArrowPythonObjectType

    from voicefleet.tasks.render.script import ScriptError, iter_batches

    def pickled(marker) -> pa.ExtensionArray:
        storage = pa.array([pickle.dumps(RunsCode(str(marker)))], pa.large_binary())
        return pa.ExtensionArray.from_storage(ArrowPythonObjectType(), storage)

    live = tmp_path / "live.parquet"
    _script_with(live, pickled(tmp_path / "ran"))
    pq.read_table(live).column("text").to_pylist()  # the payload is live: reading it as Ray does runs it
    assert (tmp_path / "ran").exists()

    marker = tmp_path / "pwned"
    script = tmp_path / "script.parquet"
    _script_with(script, pickled(marker))
    with pytest.raises(ScriptError, match=r"column 'text' has the Arrow extension type "
                                          r"'ray\.data\.arrow_pickled_object'.*its values were not read"):
        list(iter_batches(str(script)))
    monkeypatch.setenv("VOICEFLEET_LOCAL_MODE", "1")
    monkeypatch.delenv("VOICEFLEET_PRINCIPAL_KEY", raising=False)
    r = CliRunner().invoke(app, ["render", str(script), "--as", "user:a", "--local", "--store", str(tmp_path / "s")])
    assert r.exit_code == EXIT_BAD_INPUT and "ray.data.arrow_pickled_object" in r.output, r.output
    assert not marker.exists()


def test_a_parquet_script_with_an_unregistered_extension_type_is_refused_alike(tmp_path) -> None:
    import pyarrow as pa

    from voicefleet.tasks.render.script import ScriptError, iter_batches

    class Opaque(pa.ExtensionType):
        def __init__(self) -> None:
            super().__init__(pa.large_binary(), "example.opaque")

        def __arrow_ext_serialize__(self) -> bytes:
            return b""

        @classmethod
        def __arrow_ext_deserialize__(cls, storage_type, serialized):
            return Opaque()

    pa.register_extension_type(Opaque())
    try:
        opaque = pa.ExtensionArray.from_storage(Opaque(), pa.array([b"x"], pa.large_binary()))
        nested = pa.StructArray.from_arrays([opaque], names=["a"])
        _script_with(tmp_path / "s.parquet", nested)
    finally:
        pa.unregister_extension_type("example.opaque")  # the reading process does not know the type
    with pytest.raises(ScriptError, match=r"column 'text' has the Arrow extension type 'example\.opaque'"):
        list(iter_batches(str(tmp_path / "s.parquet")))


def _reference_hparams():
    """A class that pickles as the reference trainer's `utils.HParams` (the one class checkpoints may hold)."""
    import sys
    import types

    class HParams:
        def __init__(self, **kwargs) -> None:
            self.__dict__.update(kwargs)

    HParams.__module__, HParams.__qualname__ = "utils", "HParams"
    module = types.ModuleType("utils")
    module.HParams = HParams
    return HParams, module, sys.modules


@pytest.mark.parametrize("loader", [load_gpt, load_sovits])
def test_a_self_referencing_hparams_config_is_refused_with_a_clear_error(loader, monkeypatch) -> None:
    HParams, module, modules = _reference_hparams()
    monkeypatch.setitem(modules, "utils", module)
    config = HParams(train=HParams(batch_size=4))
    config.train.parent = config  # config.train.parent is config: a cycle
    cyclic = io.BytesIO()
    torch.save({"weight": {"w": torch.zeros(1)}, "config": config, "info": "x"}, cyclic)
    deep: dict = {}
    node = deep
    for _ in range(200):
        node["next"] = node = {}
    nested = io.BytesIO()
    torch.save({"weight": {"w": torch.zeros(1)}, "config": {"data": [deep]}, "info": "x"}, nested)
    with pytest.raises(CheckpointError, match=r"checkpoint\.config\.train\.parent refers back to a value that "
                                              r"contains it \(a self-referencing config\)"):
        loader(cyclic.getvalue())
    with pytest.raises(CheckpointError, match=r"nests deeper than 32 levels"):
        loader(nested.getvalue())
