"""Which files make a pretrained base of each model version, where they lie, and which version a folder holds.

A `--pretrained DIR` is laid out like the reference's `GPT_SoVITS/pretrained_models/` (names from its
config.py `pretrained_gpt_name` / `pretrained_sovits_name`, the discriminator named by `s2G` -> `s2D`, and
`sv_path`):

    v2         gsv-v2final-pretrained/s1bert25hz-5kh-longer-epoch=12-step=369668.ckpt   GPT
               gsv-v2final-pretrained/s2G2333k.pth      SoVITS generator, with its posterior encoder enc_q
               gsv-v2final-pretrained/s2D2333k.pth      discriminator ({"weight": state dict})
    v2Pro      s1v3.ckpt                                GPT (v2's architecture)
               v2Pro/s2Gv2Pro.pth, v2Pro/s2Dv2Pro.pth
               sv/pretrained_eres2netv2w24s4ep4.ckpt    speaker-verification model (ERes2NetV2)
    v2ProPlus  s1v3.ckpt, v2Pro/s2Gv2ProPlus.pth, v2Pro/s2Dv2ProPlus.pth, the same sv model
    every one  chinese-hubert-base/                     HuBERT (transformers: config.json + weights)
               chinese-roberta-wwm-ext-large/           BERT for Chinese (optional: without it, zero features)

A version is in a folder when its SoVITS generator is (the one file no two versions share). The version
is the one asked for (`--model-version`), else the only one whose generator the folder holds; a folder
with several (the reference's own folder often holds them all) must be told which. Every file of the
version is then found by exactly its name; nothing else is guessed at. A missing file raises
`PretrainedNotFound`, a file or folder that is there but wrong `PretrainedMismatch`; both name it.

A base is named to workers by a spec string (`base_spec`): `tiny`, `tiny:v2Pro`, `tiny:v2ProPlus`, or
`pretrained:<version>:<absolute dir>` (`pretrained:<dir>`: the folder's own version).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from voicefleet.model.checkpoint import CheckpointError

VERSIONS = ("v2", "v2Pro", "v2ProPlus")

V2_DIR = "gsv-v2final-pretrained"
GPT_FILE = f"{V2_DIR}/s1bert25hz-5kh-longer-epoch=12-step=369668.ckpt"
SOVITS_FILE = f"{V2_DIR}/s2G2333k.pth"
DISC_FILE = f"{V2_DIR}/s2D2333k.pth"
PRO_DIR = "v2Pro"
PRO_GPT_FILE = "s1v3.ckpt"
SV_FILE = "sv/pretrained_eres2netv2w24s4ep4.ckpt"
HUBERT_DIR = "chinese-hubert-base"
BERT_DIR = "chinese-roberta-wwm-ext-large"
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # a transformers folder's weights, either name


@dataclass(frozen=True)
class VersionLayout:
    gpt: str
    sovits: str
    disc: str
    sv: str | None  # v2Pro / v2ProPlus only


LAYOUTS = {
    "v2": VersionLayout(GPT_FILE, SOVITS_FILE, DISC_FILE, None),
    "v2Pro": VersionLayout(PRO_GPT_FILE, f"{PRO_DIR}/s2Gv2Pro.pth", f"{PRO_DIR}/s2Dv2Pro.pth", SV_FILE),
    "v2ProPlus": VersionLayout(PRO_GPT_FILE, f"{PRO_DIR}/s2Gv2ProPlus.pth", f"{PRO_DIR}/s2Dv2ProPlus.pth", SV_FILE),
}


class PretrainedNotFound(FileNotFoundError):
    """The --pretrained folder lacks a file the pipeline needs (the message names each one)."""


class PretrainedMismatch(CheckpointError):
    """A file of the --pretrained folder is there but is not what its name promises (wrong keys,
    shapes, model type, sizes or model version), or the folder is not of the version asked for; the
    message names the file."""


@dataclass(frozen=True)
class PretrainedFiles:
    """Where each official file of a --pretrained folder is (located by name only, nothing read)."""

    root: Path
    gpt: Path
    sovits: Path
    disc: Path
    hubert: Path
    bert: Path | None  # optional
    version: str = "v2"
    sv: Path | None = None  # v2Pro / v2ProPlus


def check_version(version: str) -> str:
    if version not in VERSIONS:
        raise ValueError(f"unknown model version {version!r}; use one of {', '.join(VERSIONS)}")
    return version


def base_spec(pretrained: str | None, version: str | None = None) -> str:
    """The string a flow passes to workers: 'tiny' / 'tiny:<version>' or 'pretrained:<version>:<dir>'."""
    if pretrained:
        folder = Path(pretrained).resolve()
        return f"pretrained:{check_version(version)}:{folder}" if version else f"pretrained:{folder}"
    version = check_version(version or "v2")
    return "tiny" if version == "v2" else f"tiny:{version}"


def parse_spec(spec: str) -> tuple[str, str | None, str | None]:
    """(kind 'tiny' | 'pretrained', version or None: the folder's own, folder or None)."""
    if spec == "tiny":
        return "tiny", "v2", None
    kind, _, rest = spec.partition(":")
    if kind == "tiny" and rest in VERSIONS:
        return "tiny", rest, None
    if kind == "pretrained" and rest:
        head, sep, folder = rest.partition(":")
        if sep and head in VERSIONS:
            return "pretrained", head, folder
        return "pretrained", None, rest
    raise ValueError(f"unknown base model {spec!r}; use 'tiny', 'tiny:<version>' or 'pretrained:[<version>:]<dir>'")


def folder_versions(root: str | Path) -> list[str]:
    """The versions whose SoVITS generator `root` holds, by exact name."""
    return [v for v, lay in LAYOUTS.items() if (Path(root) / lay.sovits).is_file()]


def pick_version(root: str | Path, version: str | None = None) -> str:
    """The version a folder is read as: `version` (the folder must hold its generator), else the folder's
    only one; v2 when it holds none (the missing files are then named by `pretrained_files`)."""
    root = Path(root)
    present = folder_versions(root)
    if version is not None:
        check_version(version)
        if version not in present and present:
            held = ", ".join(f"{v} ({LAYOUTS[v].sovits})" for v in present)
            raise PretrainedMismatch(f"--model-version {version} needs {LAYOUTS[version].sovits}, but pretrained "
                                     f"folder {root} holds the SoVITS generator of {held}: pass --model-version "
                                     f"{present[0]}, or a folder with the {version} files")
        return version
    if len(present) > 1:
        held = ", ".join(f"{v} ({LAYOUTS[v].sovits})" for v in present)
        raise PretrainedMismatch(f"pretrained folder {root} holds the SoVITS generators of several versions: {held}; "
                                 f"say which with --model-version {'|'.join(present)}")
    return present[0] if present else "v2"


def pretrained_files(root: str | Path, version: str | None = None) -> PretrainedFiles:
    """Find every official file of `root` for `version` (default: the folder's own, `pick_version`) by its
    exact name; `PretrainedNotFound` lists all that are absent.

    Cheap (no file is read beyond the transformers folders' config.json): the flow calls it before any
    work starts, `load_base` before it loads.
    """
    root = Path(root)
    if not root.is_dir():
        raise PretrainedNotFound(f"pretrained folder {root} does not exist")
    version = pick_version(root, version)
    lay = LAYOUTS[version]
    parts = [(lay.gpt, "GPT"), (lay.sovits, "SoVITS generator"), (lay.disc, "SoVITS discriminator")]
    if lay.sv:
        parts.append((lay.sv, "speaker-verification model"))
    missing = [f"{rel} ({what})" for rel, what in parts if not (root / rel).is_file()]
    hubert = root / HUBERT_DIR
    missing += _hf_folder_missing(hubert, "HuBERT")
    bert = root / BERT_DIR
    if bert.exists():
        missing += _hf_folder_missing(bert, "Chinese BERT")
    if missing:
        official = {p for lay_ in LAYOUTS.values() for p in (lay_.gpt, lay_.sovits, lay_.disc)}
        folders = sorted({str(Path(rel).parent) for rel, _ in parts[:3] if "/" in rel})
        near = sorted(rel for d in folders if (root / d).is_dir() for p in (root / d).glob("*")
                      if p.suffix in (".ckpt", ".pth") and (rel := p.relative_to(root).as_posix()) not in official)
        hint = f" ({', '.join(folders)}/ holds {', '.join(p.split('/')[-1] for p in near)} instead)" if near else ""
        raise PretrainedNotFound(f"pretrained folder {root} lacks {'; '.join(missing)}{hint}. Lay it out like the "
                                 f"reference's GPT_SoVITS/pretrained_models/ ({version} files, exact names)")
    _check_model_type(hubert, "hubert")
    if bert.exists():
        _check_model_type(bert, "bert")
    return PretrainedFiles(root, root / lay.gpt, root / lay.sovits, root / lay.disc, hubert,
                           bert if bert.exists() else None, version, root / lay.sv if lay.sv else None)


def _hf_folder_missing(folder: Path, what: str) -> list[str]:
    name = folder.name
    if not folder.is_dir():
        return [f"{name}/ ({what}, a transformers folder)"]
    out = [] if (folder / "config.json").is_file() else [f"{name}/config.json ({what} config)"]
    if not any((folder / w).is_file() for w in HF_WEIGHTS):
        out.append(f"{name}/{' or '.join(HF_WEIGHTS)} ({what} weights)")
    return out


def _check_model_type(folder: Path, expected: str) -> None:
    path = folder / "config.json"
    try:
        model_type = json.loads(path.read_text("utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as e:
        raise PretrainedMismatch(f"{path} is not a transformers config ({e})") from e
    if model_type != expected:
        raise PretrainedMismatch(f"{path} says model_type {model_type!r}; {folder.name}/ must hold a {expected!r} "
                                 "model")
