"""The official pretrained weights, fetched from the Hugging Face Hub: exactly the files a version needs,
at a pinned revision, each checked against the sha256 in `pretrained_manifest.json` (in this package).

    pull("v2")          -> $VOICEFLEET_HOME/pretrained/v2  (default home: $XDG_CACHE_HOME/voicefleet,
                           else ~/.cache/voicefleet), laid out as pretrained_layout.py reads it
    find_pulled("v2")   -> that folder, once a pull has finished there (enroll/render/demo's default)

For each file of the version:
- already in the folder with the manifest's sha256: kept, nothing is asked of the Hub;
- in the folder with other bytes: deleted, downloaded again;
- otherwise: HEAD `{endpoint}/{repo}/resolve/{revision}/{path}` (huggingface_hub's own request, so
  `HF_ENDPOINT`, `HF_TOKEN` and proxies apply). The Hub must answer for the pinned commit
  (X-Repo-Commit), and where it states the file's sha256 (an LFS file's ETag) that must be the
  manifest's: a manifest that disagrees with the Hub stops before any byte is fetched. Then the bytes
  are fetched into `.voicefleet/partial/<revision>/<path>` (huggingface_hub's `http_get`, which resumes
  with a Range request after a dropped connection). A pull that fails keeps that partial file, and the
  next pull resumes it from where it stopped: huggingface_hub's own `hf_hub_download` discards a
  partial download when it fails (2.x downloads to a process-unique temporary file), so it cannot
  resume across runs. Once complete, the file's sha256 must be the manifest's; a mismatch deletes it
  and names it. Only a checked file is moved into place.
A finished pull writes `.voicefleet/pulled.json` (repo, revision, version, each file's sha256); a
folder without it is not used by default. One pull at a time per folder (a lock file).

A manifest entry whose sha256 is null (unknown) is refused unless `trust_unverified`; then the
file is checked against the Hub's own sha256 where it states one, and its sha256 is reported so
that a maintainer can fill the entry. The manifest's `provenance` says where its values come from.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST = Path(__file__).with_name("pretrained_manifest.json")
VERSIONS = ("v2", "v2Pro", "v2ProPlus")
DEFAULT_VERSION = "v2"  # pulled, and looked for first by enroll/render/demo, when no version is named
STATE_DIR = ".voicefleet"
STAMP = f"{STATE_DIR}/pulled.json"
LOCK = f"{STATE_DIR}/pull.lock"
PARTIAL = f"{STATE_DIR}/partial"
_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class PullError(RuntimeError):
    """A pull that could not finish; the message says which file and what to do."""


class ManifestError(PullError):
    """The manifest is missing, unreadable, or pins no revision."""


class UnverifiedFiles(PullError):
    """The version needs files whose sha256 the manifest does not know (`trust_unverified` not given)."""


class HubMismatch(PullError):
    """The Hub answered for another commit, or states another sha256 than the manifest's."""


class ChecksumMismatch(PullError):
    """Downloaded bytes whose sha256 is not the expected one (the file was deleted)."""


class DownloadFailed(PullError):
    """The transfer stopped (network, server error); the partial file is kept for the next pull."""


class PullBusy(PullError):
    """Another pull is writing the same folder."""


@dataclass(frozen=True)
class Entry:
    path: str
    sha256: str | None  # None: unknown, refused unless trust_unverified


@dataclass(frozen=True)
class Manifest:
    repo_id: str
    revision: str
    versions: dict[str, tuple[str, ...]]
    files: dict[str, Entry]
    source: Path

    def entries(self, version: str) -> list[Entry]:
        if version not in self.versions:
            raise ManifestError(f"{self.source} has no version {version!r} (it has {', '.join(self.versions)})")
        return [self.files[p] for p in self.versions[version]]


@dataclass
class PullReport:
    version: str
    folder: Path
    repo_id: str
    revision: str
    downloaded: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)   # were in the folder with other bytes
    resumed: list[str] = field(default_factory=list)    # continued from an earlier pull's partial file
    unverified: dict[str, str] = field(default_factory=dict)  # path -> sha256 computed here (no manifest value)
    bytes_downloaded: int = 0


@dataclass(frozen=True)
class Pulled:
    """What the default folder of a version holds."""

    folder: Path
    complete: bool
    problem: str | None = None  # why an existing folder is not used
    stamp: dict | None = None


def load_manifest(path: str | Path | None = None) -> Manifest:
    src = Path(path) if path else MANIFEST
    try:
        raw = json.loads(src.read_text("utf-8"))
    except (OSError, ValueError) as e:
        raise ManifestError(f"pretrained manifest {src} cannot be read: {e}") from e
    try:
        repo_id, revision = raw["repo_id"], raw.get("revision")
        versions = {v: tuple(paths) for v, paths in raw["versions"].items()}
        files = {}
        for p, spec in raw["files"].items():
            sha = spec.get("sha256")
            if sha is not None and not _SHA256.fullmatch(str(sha)):
                raise ManifestError(f"{src}: {p} has sha256 {sha!r}, not 64 lowercase hex digits (or null: unknown)")
            files[p] = Entry(p, sha)
    except (KeyError, TypeError, AttributeError) as e:
        raise ManifestError(f"pretrained manifest {src} lacks a field or has a wrong type: {e!r}") from e
    if not isinstance(revision, str) or not _COMMIT.fullmatch(revision):
        raise ManifestError(f"{src} pins no revision (revision: {revision!r}): a maintainer must set it to the "
                            f"40-hex commit of {repo_id} that the sha256 values were taken from; a branch name "
                            "like 'main' is not accepted")
    absent = sorted({p for paths in versions.values() for p in paths} - set(files))
    if absent:
        raise ManifestError(f"{src} lists files without an entry in 'files': {', '.join(absent)}")
    return Manifest(repo_id, revision, versions, files, src)


def home() -> Path:
    if named := os.environ.get("VOICEFLEET_HOME"):
        return Path(named).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "voicefleet"


def default_dir(version: str = DEFAULT_VERSION) -> Path:
    return home() / "pretrained" / version


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def read_stamp(folder: Path) -> dict | None:
    try:
        stamp = json.loads((Path(folder) / STAMP).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def find_pulled(version: str = DEFAULT_VERSION, folder: str | Path | None = None) -> Pulled:
    """The default folder (or `folder`) of `version`, and whether a finished pull is there. Cheap: no
    hashing (the pull checked every byte), only the stamp and pretrained_layout's by-name check."""
    root = Path(folder) if folder else default_dir(version)
    if not root.is_dir():
        return Pulled(root, False)
    stamp = read_stamp(root)
    if stamp is None or stamp.get("version") != version:
        return Pulled(root, False, "no finished pull is recorded there (an interrupted pull?)")
    missing = [p for p in stamp.get("files", {}) if not (root / p).is_file()]
    if missing:
        return Pulled(root, False, f"files have gone: {', '.join(missing)}", stamp)
    from .pretrained_layout import PretrainedMismatch, PretrainedNotFound, pretrained_files

    try:
        pretrained_files(root, version)
    except (PretrainedNotFound, PretrainedMismatch) as e:
        return Pulled(root, False, str(e), stamp)
    return Pulled(root, True, None, stamp)


def pull(version: str = DEFAULT_VERSION, folder: str | Path | None = None, *, manifest: Manifest | None = None,
         trust_unverified: bool = False, endpoint: str | None = None, token: str | bool | None = None,
         say: Callable[[str], None] | None = None) -> PullReport:
    """Bring `folder` (default: `default_dir(version)`) to exactly the manifest's files of `version`."""
    man = manifest or load_manifest()
    entries = man.entries(version)
    root = Path(folder) if folder else default_dir(version)
    say = say or (lambda _msg: None)
    unknown = [e.path for e in entries if e.sha256 is None]
    if unknown and not trust_unverified:
        raise UnverifiedFiles(f"the manifest ({man.source}) has no sha256 for {', '.join(unknown)}: they cannot be "
                              "checked, so they are not downloaded. Pass --trust-unverified to take them as the Hub "
                              "serves them (checked against the Hub's own sha256 where it states one)")
    root.mkdir(parents=True, exist_ok=True)
    report = PullReport(version, root, man.repo_id, man.revision)
    with _lock(root):
        previous = read_stamp(root) or {}
        (root / STAMP).unlink(missing_ok=True)  # the folder is in flux until this pull finishes
        recorded = previous.get("files", {}) if previous.get("revision") == man.revision else {}
        todo = []
        for e in entries:
            target = root / e.path
            if target.is_file():
                want = e.sha256 or recorded.get(e.path)
                have = sha256_file(target)
                if want and have == want:
                    report.kept.append(e.path)
                    if e.sha256 is None:
                        report.unverified[e.path] = have
                    continue
                target.unlink()
                report.replaced.append(e.path)
                say(f"{e.path}: the folder's copy has sha256 {have[:12]}…, not {want[:12]}…: downloading it again"
                    if want else f"{e.path}: no sha256 is known to check the folder's copy by: downloading it again")
            todo.append(e)
        if todo:
            hub = _Hub(man, endpoint, token)
            for e in todo:
                sha, n, resumed = _fetch(hub, e, root, say)
                report.downloaded.append(e.path)
                report.bytes_downloaded += n
                if resumed:
                    report.resumed.append(e.path)
                if e.sha256 is None:
                    report.unverified[e.path] = sha
        from .pretrained_layout import pretrained_files

        pretrained_files(root, version)  # the layout enroll/render load, by exact names
        files = {e.path: e.sha256 or report.unverified[e.path] for e in entries}
        _write_json(root / STAMP, {"repo_id": man.repo_id, "revision": man.revision, "version": version,
                                   "files": files, "unverified": sorted(report.unverified),
                                   "manifest": str(man.source),
                                   "pulled_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")})
    return report


class _Hub:
    """The few huggingface_hub calls a pull makes, with the endpoint read when the pull starts
    (`HF_ENDPOINT` is honoured even when huggingface_hub was imported before it was set)."""

    def __init__(self, man: Manifest, endpoint: str | None, token: str | bool | None):
        from huggingface_hub.utils import build_hf_headers

        self.man = man
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or "").rstrip("/") or None
        self.token = token
        self.headers = build_hf_headers(token=token, library_name="voicefleet")

    def metadata(self, path: str):
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        url = hf_hub_url(self.man.repo_id, path, revision=self.man.revision, endpoint=self.endpoint)
        try:
            return get_hf_file_metadata(url, token=self.token, endpoint=self.endpoint, retry_on_errors=True)
        except Exception as e:  # network, HTTP, offline mode: one message naming the file
            raise DownloadFailed(f"{path}: the Hub did not answer for {self.man.repo_id}@{self.man.revision[:12]} "
                                 f"({url}): {type(e).__name__}: {_first_line(e)}") from e

    def get(self, url: str, f, resume_size: int, size: int | None, path: str) -> None:
        from huggingface_hub.file_download import http_get

        http_get(url, f, resume_size=resume_size, headers=self.headers, expected_size=size, displayed_filename=path)


def _fetch(hub: _Hub, e: Entry, root: Path, say: Callable[[str], None]) -> tuple[str, int, bool]:
    """Download one file into place; returns (sha256, bytes transferred, resumed)."""
    man = hub.man
    meta = hub.metadata(e.path)
    if meta.commit_hash != man.revision:
        raise HubMismatch(f"{e.path}: asked for {man.repo_id} at {man.revision}, the Hub answered for commit "
                          f"{meta.commit_hash!r}; nothing was downloaded")
    hub_sha = meta.etag if meta.etag and _SHA256.fullmatch(meta.etag) else None  # an LFS file's ETag is its sha256
    if e.sha256 and hub_sha and hub_sha != e.sha256:
        raise HubMismatch(f"{e.path}: the manifest pins sha256 {e.sha256} but the Hub states {hub_sha} for it at "
                          f"{man.revision[:12]}: the manifest ({man.source}) is wrong or the Hub changed; nothing was "
                          "downloaded")
    want = e.sha256 or hub_sha
    part = root / PARTIAL / man.revision / e.path
    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.is_file() else 0
    if meta.size is not None and have > meta.size:
        part.unlink()
        have = 0
    if have:
        say(f"{e.path}: resuming at {have:,} of {meta.size:,} bytes" if meta.size else f"{e.path}: resuming at {have:,}")
    else:
        say(f"{e.path}: downloading" + (f" ({meta.size:,} bytes)" if meta.size else ""))
    try:
        with open(part, "ab") as f:
            hub.get(meta.location, f, have, meta.size, e.path)
    except Exception as err:  # any transfer failure keeps the partial file for the next pull
        got = part.stat().st_size if part.is_file() else 0
        if meta.size is not None and got > meta.size:
            part.unlink()
            got = 0
        raise DownloadFailed(f"{e.path}: the download stopped at {got:,}" + (f" of {meta.size:,}" if meta.size else "")
                             + f" bytes ({type(err).__name__}: {_first_line(err)}). Run the same pull again: it "
                             f"resumes from {part}") from err
    sha = sha256_file(part)
    if want and sha != want:
        part.unlink()
        source = "the manifest pins" if e.sha256 else "the Hub states"
        raise ChecksumMismatch(f"{e.path}: the downloaded bytes have sha256 {sha}, but {source} {want} "
                               f"({man.repo_id}@{man.revision[:12]}): the file was deleted, not used. Run the pull again "
                               "to download it afresh; if it fails the same way, the source is not serving the "
                               "pinned file")
    target = root / e.path
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, target)
    return sha, target.stat().st_size - have, bool(have)


@contextmanager
def _lock(root: Path):
    (root / STATE_DIR).mkdir(parents=True, exist_ok=True)
    with open(root / LOCK, "w") as fd:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PullBusy(f"another pull is writing {root} (lock {root / LOCK})") from None
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n", "utf-8")
    os.replace(tmp, path)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else "no message"
