"""`voicefleet pretrained pull`: the official GPT-SoVITS weights from the Hugging Face Hub
(tasks/voices/pretrained_pull.py), and the base model enroll / render / demo use when no
`--pretrained` is given (`base_choice`)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .console import console, err
from .exits import EXIT_BAD_INPUT, EXIT_BUSY, EXIT_INTERNAL, EXIT_PARTIAL, CLIError, handled
from .options import check_pretrained

app = typer.Typer(help="Official GPT-SoVITS pretrained weights: `pull` fetches them once; enroll, render and demo "
                       "then use them by default.", no_args_is_help=True)


def pull(folder: Optional[str] = typer.Argument(None, metavar="[DIR]", help="Where to put them (default: "
                                                "$VOICEFLEET_HOME/pretrained/<version>, home ~/.cache/voicefleet)."),
         version: str = typer.Option("v2", "--version", help="v2, v2Pro or v2ProPlus (enroll/render/demo load each; "
                                     "v2 is looked for first)."),
         trust_unverified: bool = typer.Option(False, "--trust-unverified", help="Download files whose sha256 the "
                                               "manifest does not know (checked against the Hub's own sha256 where "
                                               "it states one)."),
         manifest: Optional[str] = typer.Option(None, "--manifest", help="Another manifest file (default: the one in "
                                                "the package).")):
    """Download the files a version needs from the Hugging Face Hub, checked by sha256.

    Exactly the files of --version, from lj1995/GPT-SoVITS at the revision the package's manifest pins.
    A rerun resumes an interrupted download and fetches only what is missing or wrong."""
    from voicefleet.tasks.voices import pretrained_pull as pp

    with handled():
        if version not in pp.VERSIONS:
            raise CLIError(f"--version must be one of {', '.join(pp.VERSIONS)}, not {version!r}", EXIT_BAD_INPUT)
        try:
            man = pp.load_manifest(manifest)
            target = Path(folder) if folder else pp.default_dir(version)
            console.print(f"{man.repo_id} @ {man.revision} ({version}) -> {target}", highlight=False)
            report = pp.pull(version, target, manifest=man, trust_unverified=trust_unverified,
                             say=lambda msg: console.print(f"  {msg}", highlight=False))
        except pp.DownloadFailed as e:  # not refused: stopped part way, and a rerun resumes
            err.print(f"[red]stopped[/]: {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_PARTIAL) from None
        except pp.PullError as e:
            raise CLIError(str(e), _exit_code(e)) from None
        _print_report(report, default=folder is None)


def _exit_code(e: Exception) -> int:
    from voicefleet.tasks.voices import pretrained_pull as pp

    if isinstance(e, pp.ManifestError):
        return EXIT_BAD_INPUT
    if isinstance(e, pp.PullBusy):
        return EXIT_BUSY
    if isinstance(e, (pp.UnverifiedFiles, pp.HubMismatch, pp.ChecksumMismatch, pp.DownloadFailed)):
        return EXIT_PARTIAL  # refused, or stopped part way (rerun resumes)
    return EXIT_INTERNAL


def _print_report(r, default: bool) -> None:
    from voicefleet.tasks.voices import pretrained_pull as pp

    n = len(r.downloaded) + len(r.kept)
    console.print(f"[green]done[/]: {n} files in {r.folder} ({len(r.downloaded)} downloaded, "
                  f"{r.bytes_downloaded / 1e6:.1f} MB; {len(r.kept)} already there and checked)", highlight=False)
    if r.resumed:
        console.print(f"  resumed from an earlier pull: {', '.join(r.resumed)}", highlight=False)
    for path, sha in sorted(r.unverified.items()):
        console.print(f"  [yellow]unverified[/] {path}: sha256 {sha} (not in the manifest)", highlight=False)
    if default:
        how = ("" if r.version == pp.DEFAULT_VERSION
               else f" with --model-version {r.version} (or when no v2 pull is there)")
        console.print(f"enroll, render and demo use this folder when --pretrained is not given{how}.", highlight=False)
    else:
        console.print(f"pass it as --pretrained {r.folder} (enroll, render and demo only look in "
                      f"{pp.default_dir(r.version)} by themselves).", highlight=False)


app.command("pull")(pull)


def base_choice(pretrained: Optional[str], tiny: bool = False,
                version: Optional[str] = None) -> tuple[Optional[str], str]:
    """The pretrained folder a command runs with, and one line saying which base (and model version) that is.

    `--pretrained DIR` wins (read as `version`, else as the version it holds); `--tiny` asks for the tiny
    random base (of `version`); otherwise the folder a finished `voicefleet pretrained pull` left in the
    default place of `version` (without one: of v2, else v2Pro, else v2ProPlus), else the tiny random base.
    """
    from voicefleet.tasks.voices import pretrained_pull as pp
    from voicefleet.tasks.voices.pretrained_layout import VERSIONS, pretrained_files

    if version is not None and version not in VERSIONS:
        raise CLIError(f"--model-version must be one of {', '.join(VERSIONS)}, not {version!r}", EXIT_BAD_INPUT)
    if pretrained and tiny:
        raise CLIError("--tiny and --pretrained ask for different base models; give one", EXIT_BAD_INPUT)
    if pretrained:
        check_pretrained(pretrained)
        held = pretrained_files(pretrained, version).version  # exact names; a folder of another version: exit 2
        return pretrained, f"official {held} weights from --pretrained {pretrained}"
    tiny_line = f"tiny random-weight {version or 'v2'} model"
    if tiny:
        return None, f"{tiny_line} (--tiny): the pipeline is real, the audio is not speech"
    looked = []
    for v in [version] if version else VERSIONS:
        found = pp.find_pulled(v)
        if found.complete:
            stamp = found.stamp or {}
            rev = str(stamp.get("revision", "?"))[:12]
            extra = f"; {len(stamp['unverified'])} file(s) unverified" if stamp.get("unverified") else ""
            return str(found.folder), (f"official {v} weights pulled from {stamp.get('repo_id', '?')}@"
                                       f"{rev} in {found.folder}{extra}")
        if found.problem:
            err.print(f"[yellow]warning[/]: not using {found.folder}: {found.problem}. Run `voicefleet pretrained pull"
                      f"{'' if v == pp.DEFAULT_VERSION else ' --version ' + v}` to finish it.", highlight=False)
        looked.append(str(found.folder))
    return None, (f"{tiny_line} (no pulled weights in {' or '.join(looked)}; `voicefleet pretrained pull` "
                  "fetches them): the pipeline is real, the audio is not speech")
