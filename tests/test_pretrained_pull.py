"""`voicefleet pretrained pull` against a local stand-in for the Hugging Face Hub (issue 25: the weights one
command away).

`FakeHub` answers huggingface_hub's requests on 127.0.0.1 as the Hub's resolve endpoint does:
`HEAD|GET /{repo_id}/resolve/{revision}/{path}` with `X-Repo-Commit`, `ETag` (an LFS file's sha256),
`Content-Length`, and `Range` requests (206 + `Content-Range`). It serves a v2 folder in the official
layout: the GPT and SoVITS checkpoints written by ../shared/reference/ref_weights.py in the official
file format (from manifests of our tiny architecture, so the files stay small and the strict loader
reads them); the discriminator, HuBERT and BERT folders are small stand-ins of the official layout
(ref_weights writes neither a discriminator nor transformers folders). The test's manifest is made from
the bytes served (the package's manifest pins the real files' sha256, which no test here can fetch).
"""
from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import huggingface_hub.constants
import pytest
import torch
from reference_case import ref_weights
from typer.testing import CliRunner

from voicefleet.flows.cli import app
from voicefleet.flows.commands.exits import EXIT_OK, EXIT_PARTIAL
from voicefleet.flows.commands.pretrained import base_choice
from voicefleet.model.checkpoint import gpt_checkpoint, sovits_checkpoint
from voicefleet.model.config import GPTConfig, SoVITSConfig
from voicefleet.model.discriminator import MultiPeriodDiscriminator
from voicefleet.model.gpt import Text2SemanticDecoder
from voicefleet.model.sovits import SynthesizerTrn
from voicefleet.model.ssl import SSLExtractor
from voicefleet.tasks.voices import pretrained_pull as pp
from voicefleet.tasks.voices.base_model import load_base
from voicefleet.tasks.voices.pretrained_layout import (
    BERT_DIR,
    DISC_FILE,
    GPT_FILE,
    HF_WEIGHTS,
    HUBERT_DIR,
    SOVITS_FILE,
    pretrained_files,
)

REPO = "lj1995/GPT-SoVITS"
REVISION = "0123456789abcdef0123456789abcdef01234567"  # the stand-in hub's only commit
V2 = pp.load_manifest().versions["v2"]


# ---------------------------------------------------------------- the files the stand-in hub serves
def _manifest_of(ckpt: dict) -> dict:
    """A ref_weights manifest (config + every key's shape, dtype and init) for a checkpoint of ours."""
    return {"config": ckpt["config"],
            "keys": {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch."), "init": [0.0, 0.02]}
                     for k, v in ckpt["weight"].items()}}


def _bytes(path: Path) -> bytes:
    return path.read_bytes()


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("hub-files")
    rw = ref_weights()
    torch.manual_seed(0)
    cfg = SoVITSConfig.tiny()
    gpt = gpt_checkpoint(Text2SemanticDecoder(GPTConfig.tiny()))
    sovits = sovits_checkpoint(SynthesizerTrn(cfg), with_posterior=True)  # the base carries enc_q
    rw.write_official_checkpoint(_manifest_of(gpt), 0, d / "gpt.ckpt")
    rw.write_official_checkpoint(_manifest_of(sovits), 0, d / "s2G.pth")
    torch.save({"weight": MultiPeriodDiscriminator(cfg.disc_channels_div).state_dict(), "iteration": 2333}, d / "s2D.pth")
    hubert = SSLExtractor.tiny(dim=cfg.ssl_dim).model
    torch.save(hubert.state_dict(), d / "hubert.bin")
    files = {GPT_FILE: _bytes(d / "gpt.ckpt"), SOVITS_FILE: _bytes(d / "s2G.pth"), DISC_FILE: _bytes(d / "s2D.pth"),
             f"{HUBERT_DIR}/config.json": hubert.config.to_json_string().encode(),
             f"{HUBERT_DIR}/preprocessor_config.json": json.dumps(
                 {"feature_extractor_type": "Wav2Vec2FeatureExtractor", "sampling_rate": 16000, "feature_size": 1,
                  "padding_value": 0.0, "do_normalize": True, "return_attention_mask": False}).encode(),
             f"{HUBERT_DIR}/pytorch_model.bin": _bytes(d / "hubert.bin")}
    files.update(_tiny_bert(d))
    assert set(files) == set(V2), "the stand-in serves exactly the package manifest's v2 files"
    return files


def _tiny_bert(d: Path) -> dict[str, bytes]:
    """One encoder layer at the GPT's BERT width (1024), fp16, with a WordPiece tokenizer.json."""
    from tokenizers import Tokenizer, models
    from transformers import BertConfig, BertForMaskedLM

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"你好我不对一个老虎"]
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=1024, num_hidden_layers=1, num_attention_heads=16,
                     intermediate_size=64, max_position_embeddings=32)
    torch.save({k: v.half() for k, v in BertForMaskedLM(cfg).state_dict().items()}, d / "bert.bin")
    Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]")).save(str(d / "tok.json"))
    return {f"{BERT_DIR}/config.json": cfg.to_json_string().encode(), f"{BERT_DIR}/tokenizer.json": _bytes(d / "tok.json"),
            f"{BERT_DIR}/pytorch_model.bin": _bytes(d / "bert.bin")}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def manifest(served, tmp_path) -> Path:
    """The package manifest's v2 file list, with the sha256 of what the stand-in hub serves."""
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"repo_id": REPO, "revision": REVISION, "versions": {"v2": list(V2)},
                                "files": {p: {"sha256": sha(served[p])} for p in V2}}))
    return path


# ---------------------------------------------------------------- the stand-in hub
class FakeHub:
    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.etag: dict[str, str] = {p: sha(b) for p, b in files.items()}  # what the hub states per file
        self.commit = REVISION                # what X-Repo-Commit says
        self.corrupt: set[str] = set()        # served with flipped bytes (the stated ETag stays right)
        self.cut: dict[str, int] = {}         # path -> GETs still to cut half way
        self.down_after_cut = False           # after a cut, every request gets 503 until `down` is cleared
        self.down = False
        self.log: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _serve(self, body: bool):
                m = re.fullmatch(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)", self.path.split("?")[0])
                path = unquote(m["path"]) if m else self.path
                hub.log.append((self.command, path, self.headers.get("Range")))
                if hub.down:
                    return self._error(503, "Unavailable")
                if not m or m["repo"] != REPO:
                    return self._error(404, "RepoNotFound")
                if m["rev"] != REVISION:
                    return self._error(404, "RevisionNotFound")
                if path not in hub.files:
                    return self._error(404, "EntryNotFound")
                data = hub.files[path]
                if path in hub.corrupt:
                    data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
                start = int(re.fullmatch(r"bytes=(\d+)-", self.headers["Range"])[1]) if self.headers.get("Range") else 0
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", hub.commit)
                self.send_header("ETag", f'"{hub.etag[path]}"')
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(data) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if not body:
                    return
                if hub.cut.get(path):
                    hub.cut[path] -= 1
                    self.wfile.write(data[start:start + (len(data) - start) // 2])
                    self.wfile.flush()
                    hub.down = hub.down_after_cut
                    self.connection.shutdown(socket.SHUT_RDWR)  # the connection drops mid-body
                    self.close_connection = True
                    return
                self.wfile.write(data[start:])

            def _error(self, code: int, kind: str):
                self.send_response(code)
                self.send_header("X-Error-Code", kind)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def gets(self, path: str | None = None) -> list[tuple[str, str, str | None]]:
        return [r for r in self.log if r[0] == "GET" and (path is None or r[1] == path)]


@pytest.fixture
def hub(served, monkeypatch, tmp_path):
    h = FakeHub(served)
    monkeypatch.setenv("HF_ENDPOINT", h.url)
    monkeypatch.setenv("VOICEFLEET_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # huggingface_hub writes what it receives in chunks of this size (10 MB): small ones here, so that a
    # connection dropped half way through these small files leaves bytes behind, as it does in a large one
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 16 * 1024)
    yield h
    h.server.shutdown()
    h.server.server_close()


def cli(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result


# ---------------------------------------------------------------- the package's manifest
def test_the_package_manifest_pins_a_commit_and_names_what_base_model_reads():
    man = pp.load_manifest()
    assert man.repo_id == REPO and re.fullmatch(r"[0-9a-f]{40}", man.revision)
    v2 = set(man.versions["v2"])
    assert {GPT_FILE, SOVITS_FILE, DISC_FILE, f"{HUBERT_DIR}/config.json", f"{BERT_DIR}/config.json"} <= v2
    assert any(f"{HUBERT_DIR}/{w}" in v2 for w in HF_WEIGHTS) and any(f"{BERT_DIR}/{w}" in v2 for w in HF_WEIGHTS)
    assert {f"{BERT_DIR}/tokenizer.json", f"{BERT_DIR}/vocab.txt"} & v2
    assert {"s1v3.ckpt", "v2Pro/s2Gv2Pro.pth", "v2Pro/s2Dv2Pro.pth", "sv/pretrained_eres2netv2w24s4ep4.ckpt"} \
        <= set(man.versions["v2Pro"])
    assert {"s1v3.ckpt", "v2Pro/s2Gv2ProPlus.pth", "v2Pro/s2Dv2ProPlus.pth"} <= set(man.versions["v2ProPlus"])
    assert set(man.versions) == set(pp.VERSIONS)
    assert "NOT computed by voicefleet" in json.loads(pp.MANIFEST.read_text())["provenance"]


def test_a_manifest_without_a_pinned_commit_is_refused(tmp_path):
    for revision in (None, "", "main"):
        path = tmp_path / "m.json"
        path.write_text(json.dumps({"repo_id": REPO, "revision": revision, "versions": {"v2": []}, "files": {}}))
        with pytest.raises(pp.ManifestError, match="pins no revision"):
            pp.load_manifest(path)


# ---------------------------------------------------------------- pulls
def test_a_pull_fetches_the_v2_folder_that_enroll_and_render_then_use_and_a_rerun_fetches_nothing(hub, manifest):
    r = cli("pretrained", "pull", "--manifest", str(manifest))
    assert r.exit_code == EXIT_OK, r.output
    folder = pp.default_dir("v2")
    assert str(folder) in r.output and "use this folder when --pretrained is not given" in r.output
    assert {p for _, p, _ in hub.gets()} == set(V2)
    files = pretrained_files(folder)  # the strict loader's by-name check
    assert files.bert is not None and files.gpt.read_bytes() == hub.files[GPT_FILE]
    base = load_base(f"pretrained:{folder}")  # and every file read strictly by its keys
    assert not base.untrained and base.sovits.has_posterior
    chosen, said = base_choice(None)
    assert chosen == str(folder) and f"{REPO}@{REVISION[:12]}" in said
    assert base_choice(None, tiny=True)[0] is None
    assert base_choice(str(folder)) == (str(folder), f"official v2 weights from --pretrained {folder}")

    hub.log.clear()
    again = pp.pull("v2", manifest=pp.load_manifest(manifest))
    assert hub.log == [] and again.downloaded == [] and sorted(again.kept) == sorted(V2)
    assert pp.find_pulled("v2").complete


def test_an_interrupted_download_resumes_where_it_stopped(hub, manifest):
    size = len(hub.files[GPT_FILE])
    hub.cut[GPT_FILE] = 1
    hub.down_after_cut = True  # the connection drops half way, and the network stays down
    r = cli("pretrained", "pull", "--manifest", str(manifest))
    assert r.exit_code == EXIT_PARTIAL, r.output
    assert "s1bert25hz" in r.output and "Run the same pull again" in r.output
    folder = pp.default_dir("v2")
    part = folder / pp.PARTIAL / REVISION / GPT_FILE
    kept = part.stat().st_size
    assert size // 4 < kept <= size // 2 and not (folder / GPT_FILE).exists()  # whole chunks of the first half
    found = pp.find_pulled("v2")
    assert not found.complete and "no finished pull" in found.problem
    assert base_choice(None)[0] is None  # an unfinished folder is not used

    hub.down = False
    hub.log.clear()
    report = pp.pull("v2", manifest=pp.load_manifest(manifest))
    assert report.resumed == [GPT_FILE]
    assert hub.gets(GPT_FILE) == [("GET", GPT_FILE, f"bytes={kept}-")]  # only what was missing
    assert (folder / GPT_FILE).read_bytes() == hub.files[GPT_FILE] and not part.exists()
    assert pp.find_pulled("v2").complete


def test_a_corrupted_download_is_refused_named_and_removed(hub, manifest):
    hub.corrupt.add(SOVITS_FILE)
    r = cli("pretrained", "pull", "--manifest", str(manifest))
    assert r.exit_code == EXIT_PARTIAL, r.output
    assert "s2G2333k.pth" in r.output and "deleted" in r.output
    folder = pp.default_dir("v2")
    assert not (folder / SOVITS_FILE).exists() and not (folder / pp.PARTIAL / REVISION / SOVITS_FILE).exists()
    assert (folder / GPT_FILE).is_file() and not pp.find_pulled("v2").complete

    hub.corrupt.clear()
    hub.log.clear()
    report = pp.pull("v2", manifest=pp.load_manifest(manifest))
    assert report.kept == [GPT_FILE] and GPT_FILE not in {p for _, p, _ in hub.log}
    assert (folder / SOVITS_FILE).read_bytes() == hub.files[SOVITS_FILE]


def test_a_file_changed_on_disk_is_fetched_again_and_nothing_else(hub, manifest):
    man = pp.load_manifest(manifest)
    pp.pull("v2", manifest=man)
    bad = pp.default_dir("v2") / HUBERT_DIR / "pytorch_model.bin"
    bad.write_bytes(b"\0" * 100)
    hub.log.clear()
    said = []
    report = pp.pull("v2", manifest=man, say=said.append)
    assert report.replaced == report.downloaded == [f"{HUBERT_DIR}/pytorch_model.bin"]
    assert {p for _, p, _ in hub.log} == {f"{HUBERT_DIR}/pytorch_model.bin"}
    assert any("downloading it again" in s for s in said)
    assert bad.read_bytes() == hub.files[f"{HUBERT_DIR}/pytorch_model.bin"]


def test_a_hub_that_disagrees_with_the_manifest_is_refused_before_any_download(hub, manifest):
    man = pp.load_manifest(manifest)
    hub.etag[DISC_FILE] = "f" * 64
    with pytest.raises(pp.HubMismatch, match=r"s2D2333k\.pth.*Hub states f{64}"):
        pp.pull("v2", manifest=man)
    assert hub.gets(DISC_FILE) == []
    hub.etag[DISC_FILE] = sha(hub.files[DISC_FILE])
    hub.commit = "9" * 40
    with pytest.raises(pp.HubMismatch, match="answered for commit '9999"):
        pp.pull("v2", manifest=man)


def test_files_the_manifest_has_no_sha256_for_need_trust_unverified(hub, served, tmp_path):
    path = tmp_path / "m.json"
    unknown = f"{HUBERT_DIR}/preprocessor_config.json"
    path.write_text(json.dumps({"repo_id": REPO, "revision": REVISION, "versions": {"v2": list(V2)},
                                "files": {p: {"sha256": None if p == unknown else sha(served[p])} for p in V2}}))
    r = cli("pretrained", "pull", "--manifest", str(path))
    assert r.exit_code == EXIT_PARTIAL and "preprocessor_config.json" in r.output and "--trust-unverified" in r.output
    assert hub.log == []  # nothing was asked of the hub
    report = pp.pull("v2", manifest=pp.load_manifest(path), trust_unverified=True)
    assert report.unverified == {unknown: sha(served[unknown])}
    assert pp.read_stamp(pp.default_dir("v2"))["unverified"] == [unknown]
    hub.log.clear()
    assert pp.pull("v2", manifest=pp.load_manifest(path), trust_unverified=True).downloaded == []  # the stamp vouches
    assert hub.log == []


def test_a_pull_into_a_named_folder_and_of_another_version(hub, served, tmp_path):
    own = ["s1v3.ckpt", "v2Pro/s2Gv2Pro.pth", "v2Pro/s2Dv2Pro.pth", "sv/pretrained_eres2netv2w24s4ep4.ckpt"]
    shared = [p for p in served if p.startswith((HUBERT_DIR, BERT_DIR))]
    pro = own + shared
    hub.files = {**served, **{p: f"stand-in {p}".encode() for p in own}}
    hub.etag.update({p: sha(hub.files[p]) for p in own})
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"repo_id": REPO, "revision": REVISION, "versions": {"v2Pro": pro},
                                "files": {p: {"sha256": sha(hub.files[p])} for p in pro}}))
    r = cli("pretrained", "pull", str(tmp_path / "mine"), "--version", "v2Pro", "--manifest", str(path))
    assert r.exit_code == EXIT_OK, r.output
    assert (tmp_path / "mine" / "v2Pro" / "s2Gv2Pro.pth").is_file() and "pass it as --pretrained" in r.output
    assert pp.find_pulled("v2Pro", tmp_path / "mine").complete  # the layout enroll reads as v2Pro, by name
    assert cli("pretrained", "pull", "--version", "v3").exit_code == 2
