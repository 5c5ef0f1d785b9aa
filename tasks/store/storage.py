"""The object store every voicefleet part reads and writes: one root, addressed by keys.

A `Store` is a root URI (`./voicefleet-data`, `file:///data/vf`, `s3://bucket/prefix`) and
keys below it (`renders/<job_id>/index/<part>.parquet`). All I/O goes through fsspec, so a
local folder and S3 behave the same; the one difference is how a write is made atomic:

- local: the bytes go to a hidden temp file in the destination folder, then `os.replace`;
- any other protocol (S3, ...): one `pipe_file`/`put_file` call, and an object store makes an
  object visible only once its upload (single PUT or completed multipart) has succeeded.

Create-if-absent (`create_bytes`) is what the registry's revisions and the audit log's sequence
numbers stand on: exactly one of two writers racing for a key wins.

- local folder: the bytes go to a hidden temp file, then `os.link(temp, key)`, which fails with
  `FileExistsError` when the key exists; the object appears complete or not at all.
- S3: a conditional PUT, `If-None-Match: *` (s3fs `pipe_file(..., mode="create")`): S3 answers
  412 when the key exists, and 409 when a concurrent conditional write is in flight. AWS S3 has
  supported this since 2024-08; moto 5.2 and current MinIO do too. A server that silently
  *ignores* the header would turn every create into an overwrite, so before the first create the
  store probes it once per process (create the same scratch key twice, expect a refusal) and
  raises `UnsafeStore` if the server does not refuse.
- any other fsspec protocol: `UnsafeStore`, unless `allow_unsafe=True` -- then a create is
  "check that the key is absent, then write", correct only with a single writer at a time.

S3 settings come from `storage_options` and from the standard AWS environment. The endpoint
(`AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL`) and region (`AWS_REGION`, else
`AWS_DEFAULT_REGION`) are read when the Store is built and travel with it when it is pickled
to a Ray worker; credentials are not copied into it: each process resolves them the usual
boto way (env vars, `~/.aws`, instance role) unless `storage_options` passes `key`/`secret`.
A Store pickles to its URI and options only; its filesystem is rebuilt lazily on arrival.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from typing import IO, Any, BinaryIO

import fsspec
import fsspec.asyn
from fsspec.core import split_protocol

_LOCAL_PROTOCOLS = ("file", "local")
_TEMP_PREFIX = ".vf-tmp-"
_SECRET_OPTIONS = ("key", "secret", "token", "password")
_PROBE_PREFIX = "_probe"
_VERIFIED_STORES: set[str] = set()  # S3 stores whose conditional PUT this process has seen refuse
_VERIFIED_SWAPS: set[str] = set()  # S3 stores whose If-Match PUT this process has seen refuse


class InvalidKey(ValueError):
    """A storage key that would escape the store root or is not a relative path."""


class UnsafeStore(RuntimeError):
    """The store cannot create an object only-if-absent, so concurrent writers could overwrite each other."""


def _check_key(key: str) -> str:
    """Validate a slash-separated key relative to the store root (glob patterns allowed)."""
    if not isinstance(key, str) or not key:
        raise InvalidKey(f"storage key must be a non-empty string, got {key!r}")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise InvalidKey(f"storage key {key!r} has an empty, '.' or '..' part; keys are relative paths")
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in part) or "\\" in part or ":" in part:
            raise InvalidKey(f"storage key {key!r} contains a control character, '\\' or ':'")
    return key


def _s3_env_options() -> dict[str, Any]:
    """Endpoint and region from the standard AWS environment variables."""
    options: dict[str, Any] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["endpoint_url"] = endpoint
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["client_kwargs"] = {"region_name": region}
    return options


def _merge_s3_options(explicit: dict[str, Any]) -> dict[str, Any]:
    env = _s3_env_options()
    merged = dict(explicit)
    client_kwargs = dict(merged.get("client_kwargs") or {})
    if "endpoint_url" in env and "endpoint_url" not in merged and "endpoint_url" not in client_kwargs:
        merged["endpoint_url"] = env["endpoint_url"]
    for name, value in env.get("client_kwargs", {}).items():
        client_kwargs.setdefault(name, value)
    if client_kwargs:
        merged["client_kwargs"] = client_kwargs
    # Other processes (Ray workers) write here too: never answer from a stale listing cache.
    merged.setdefault("use_listings_cache", False)
    return merged


class Store:
    """An object-store root; every method takes a key relative to it (`"a/b/c.json"`)."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None) -> None:
        if not isinstance(uri, str) or not uri.strip():
            raise InvalidKey(f"store URI must be a non-empty string, got {uri!r}")
        protocol, path = split_protocol(uri)
        self.protocol: str = protocol or "file"
        options = dict(storage_options or {})
        if self.protocol in _LOCAL_PROTOCOLS:
            self.protocol = "file"
            self.root = os.path.abspath(os.path.expanduser(path))
        else:
            self.root = path.rstrip("/")
            if not self.root:
                raise InvalidKey(f"store URI {uri!r} names no bucket or root folder")
            if self.protocol in ("s3", "s3a"):
                options = _merge_s3_options(options)
        self.uri = self.root if self.is_local else f"{self.protocol}://{self.root}"
        self.storage_options: dict[str, Any] = options
        self._fs: fsspec.AbstractFileSystem | None = None

    # -- identity and pickling -------------------------------------------------------------

    @property
    def is_local(self) -> bool:
        return self.protocol == "file"

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The fsspec filesystem, created on first use in this process."""
        if self._fs is None:
            self._fs = fsspec.filesystem(self.protocol, **self.storage_options)
        return self._fs

    def __getstate__(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "root": self.root, "uri": self.uri,
                "storage_options": self.storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._fs = None

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Store) and self.uri == other.uri
                and self.storage_options == other.storage_options)

    def __hash__(self) -> int:
        return hash(self.uri)

    def __repr__(self) -> str:
        shown = {k: ("***" if k in _SECRET_OPTIONS else v) for k, v in self.storage_options.items()}
        return f"Store({self.uri!r}, {shown!r})" if shown else f"Store({self.uri!r})"

    # -- addressing ------------------------------------------------------------------------

    def url(self, *parts: str) -> str:
        """Full URL of a key (`s3://b/p/a/b`), or the absolute path for a local store.

        Plain paths are what DuckDB, pyarrow and webdataset accept for local files.
        """
        if not parts:
            return self.uri
        return f"{self.uri}/{_check_key('/'.join(parts))}"

    def fs_path(self, key: str) -> str:
        """The path `self.fs` understands for `key` (no protocol), e.g. for pyarrow datasets."""
        return f"{self.root}/{_check_key(key)}"

    def _key_of(self, fs_path: str) -> str:
        return fs_path[len(self.root) + 1:] if fs_path.startswith(self.root + "/") else fs_path

    # -- reading ---------------------------------------------------------------------------

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self.fs_path(key)))

    def read_bytes(self, key: str) -> bytes:
        return self.fs.cat_file(self.fs_path(key))

    def read_range(self, key: str, offset: int, size: int) -> bytes:
        """`size` bytes at `offset`, fetched with one ranged read (an HTTP Range GET on S3)."""
        if offset < 0 or size < 0:
            raise ValueError(f"bad byte range offset={offset} size={size} for {key!r}")
        data = self.fs.cat_file(self.fs_path(key), start=offset, end=offset + size)
        if len(data) != size:
            raise EOFError(f"{self.url(key)}: asked for {size} bytes at {offset}, got {len(data)}")
        return data

    def read_text(self, key: str) -> str:
        return self.read_bytes(key).decode("utf-8")

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))

    def open(self, key: str, mode: str = "rb") -> IO[Any]:
        """Open a key for streaming reads. Writes go through `write_bytes`/`put_file` (atomic)."""
        if mode not in ("rb", "r"):
            raise ValueError(f"Store.open is read-only (mode {mode!r}); use write_bytes or put_file")
        return self.fs.open(self.fs_path(key), mode)

    def glob(self, pattern: str) -> list[str]:
        """Keys matching a glob pattern (`renders/j1/index/*.parquet`), sorted."""
        found = self.fs.glob(self.fs_path(pattern))
        return sorted(k for k in map(self._key_of, found) if not _is_temp(k))

    def glob_times(self, pattern: str) -> dict[str, float]:
        """Keys matching a glob pattern -> the store's own modification time of each (epoch seconds).

        The time is the store's clock (S3 `LastModified`, a local file's mtime), never this host's:
        code that compares ages across hosts (the job lease, its fence) compares these.
        """
        found = self.fs.glob(self.fs_path(pattern), detail=True)
        return {self._key_of(path): _mtime(info) for path, info in sorted(found.items())
                if not _is_temp(self._key_of(path))}

    def list(self, prefix: str = "") -> list[str]:
        """Every key below `prefix` (recursively), sorted; [] when there is none."""
        base = self.fs_path(prefix) if prefix else self.root
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        return sorted(k for k in map(self._key_of, found) if not _is_temp(k))

    # -- writing (every write is atomic: readers see the old object or the whole new one) ---

    def write_bytes(self, key: str, data: bytes) -> None:
        if self.is_local:
            self._atomic_local(key, lambda out: out.write(data))
        else:
            self.fs.pipe_file(self.fs_path(key), data)

    def put_file(self, local_path: str | os.PathLike[str], key: str) -> None:
        """Upload a local file (e.g. a finished shard) under `key`, atomically."""
        if self.is_local:
            with open(local_path, "rb") as src:
                self._atomic_local(key, lambda out: shutil.copyfileobj(src, out, 8 << 20))
        else:
            self.fs.put_file(os.fspath(local_path), self.fs_path(key))

    def write_text(self, key: str, text: str) -> None:
        self.write_bytes(key, text.encode("utf-8"))

    def write_json(self, key: str, obj: Any) -> None:
        self.write_bytes(key, json.dumps(obj, indent=2, ensure_ascii=False).encode("utf-8"))

    def create_bytes(self, key: str, data: bytes, *, allow_unsafe: bool = False) -> bool:
        """Write `data` at `key` only if absent: True if we wrote it, False if the key exists.

        A create whose response was lost and retried by the client can come back as "exists"
        though it was ours: the object is read back and compared before answering False.

        Raises:
            UnsafeStore: the backend cannot refuse a second create (see the module docstring)
                and `allow_unsafe` is false.
        """
        self.check_exclusive_create(allow_unsafe=allow_unsafe)
        try:
            if self.is_local:
                _create_local(self.fs_path(key), data)
            elif self.protocol in ("s3", "s3a"):
                self.fs.pipe_file(self.fs_path(key), data, mode="create")
            else:  # allow_unsafe: check, then write (single writer only)
                if self.exists(key):
                    return False
                self.write_bytes(key, data)
            return True
        except FileExistsError:
            pass
        except OSError as e:
            if e.errno != errno.EBUSY:  # S3 409 ConditionalRequestConflict: a concurrent create
                raise
            return False
        try:  # a retried request whose first attempt succeeded also lands here
            return self.read_bytes(key) == data
        except FileNotFoundError:
            return False

    def swap_bytes(self, key: str, data: bytes, expected: bytes | None, *, allow_unsafe: bool = False) -> bool:
        """Write `data` at `key` only if the key still holds `expected` (None: only if absent), a
        compare-and-swap: True if we wrote it, False if another writer changed the key first.

        - local folder: read, compare and replace (temp file + `os.replace`) under an exclusive `flock`
          of a hidden lock file beside the key, which every swap of that key takes;
        - S3: one GET returns the object with its ETag, then a PUT with `If-Match: <ETag>` (S3 answers
          412 when the object changed in between); a server that ignores `If-Match` is refused
          (`UnsafeStore`, probed once per process like exclusive create);
        - `expected` None: `create_bytes`.
        """
        if expected is None:
            return self.create_bytes(key, data, allow_unsafe=allow_unsafe)
        if self.is_local:
            dest = self.fs_path(key)
            folder, name = os.path.split(dest)
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, f"{_TEMP_PREFIX}lock.{name}"), "ab") as lock:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file closes
                try:
                    with open(dest, "rb") as f:
                        if f.read() != expected:
                            return False
                except FileNotFoundError:
                    return False
                self._atomic_local(key, lambda out: out.write(data))
                return True
        if self.protocol in ("s3", "s3a"):
            self._check_conditional_put(allow_unsafe)
            bucket, path, _ = self.fs.split_path(self.fs_path(key))
            try:
                current, etag = fsspec.asyn.sync(self.fs.loop, _s3_get_with_etag, self.fs, bucket, path)
            except FileNotFoundError:
                return False
            if current != expected:
                return False
            try:
                self.fs.pipe_file(self.fs_path(key), data, IfMatch=etag)
            except FileNotFoundError:
                return False
            except OSError as e:
                if _precondition_failed(e):
                    return False
                raise
            return True
        self.check_exclusive_create(allow_unsafe=allow_unsafe)  # raises unless allow_unsafe: single writer
        try:
            if self.read_bytes(key) != expected:
                return False
        except FileNotFoundError:
            return False
        self.write_bytes(key, data)
        return True

    def _check_conditional_put(self, allow_unsafe: bool) -> None:
        """Refuse (`UnsafeStore`) an S3 server that overwrites an object despite a stale `If-Match`."""
        self.check_exclusive_create(allow_unsafe=allow_unsafe)
        if self.uri in _VERIFIED_SWAPS:
            return
        probe = f"{_PROBE_PREFIX}/{uuid.uuid4().hex}.json"
        try:
            self.fs.pipe_file(self.fs_path(probe), b"1", mode="create")
            try:
                self.fs.pipe_file(self.fs_path(probe), b"2", IfMatch='"' + "0" * 32 + '"')
                enforced = False
            except OSError as e:
                enforced = _precondition_failed(e)
                if not enforced:
                    raise
        finally:
            self.delete(probe)
        if enforced:
            _VERIFIED_SWAPS.add(self.uri)
        elif not allow_unsafe:
            raise UnsafeStore(
                f"store {self.uri}: the S3 server ignored 'If-Match' (a PUT with a stale ETag succeeded), so a "
                "compare-and-swap could overwrite a newer object; use AWS S3 or a server that honours conditional "
                "writes, or pass allow_unsafe_writes=True for a single writer")

    def check_exclusive_create(self, *, allow_unsafe: bool = False) -> None:
        """Refuse (`UnsafeStore`) a store on which "create only if absent" is not enforced."""
        if self.is_local or self.uri in _VERIFIED_STORES:
            return
        if self.protocol not in ("s3", "s3a"):
            if not allow_unsafe:
                raise UnsafeStore(
                    f"store {self.uri}: protocol {self.protocol!r} has no exclusive create voicefleet "
                    "knows; use a local folder or S3, or pass allow_unsafe_writes=True for a single writer")
            return
        probe = f"{_PROBE_PREFIX}/{uuid.uuid4().hex}.json"
        try:
            self.fs.pipe_file(self.fs_path(probe), b"1", mode="create")
            try:
                self.fs.pipe_file(self.fs_path(probe), b"2", mode="create")
                enforced = False
            except FileExistsError:
                enforced = True
        finally:
            self.delete(probe)
        if enforced:
            _VERIFIED_STORES.add(self.uri)
        elif not allow_unsafe:
            raise UnsafeStore(
                f"store {self.uri}: the S3 server ignored 'If-None-Match: *' (a second create of the same "
                "key succeeded), so concurrent updates could be lost; use AWS S3 or a server "
                "that honours conditional writes, or pass allow_unsafe_writes=True for a single writer")

    def delete(self, key: str, recursive: bool = False) -> None:
        """Remove a key (or, with `recursive`, everything below it); missing keys are fine."""
        try:
            self.fs.rm(self.fs_path(key), recursive=recursive)
        except FileNotFoundError:
            pass

    def _atomic_local(self, key: str, write: Callable[[BinaryIO], object]) -> None:
        dest = self.fs_path(key)
        folder, name = os.path.split(dest)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{_TEMP_PREFIX}{name}.", dir=folder)
        try:
            with os.fdopen(fd, "wb") as out:
                write(out)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def _create_local(path: str, data: bytes) -> None:
    """Create `path` holding `data`, or raise FileExistsError; never visible half-written."""
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{_TEMP_PREFIX}{name}.", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.link(tmp, path)  # atomic; fails if `path` exists
    finally:
        os.unlink(tmp)


async def _s3_get_with_etag(fs: Any, bucket: str, key: str) -> tuple[bytes, str]:
    """An S3 object's bytes and the ETag of exactly those bytes (one GET)."""
    response = await fs._call_s3("get_object", Bucket=bucket, Key=key)
    try:
        return await response["Body"].read(), response["ETag"]
    finally:
        response["Body"].close()


def _precondition_failed(e: BaseException) -> bool:
    """A conditional S3 PUT refused: 412 PreconditionFailed, or 409 ConditionalRequestConflict (EBUSY)."""
    if isinstance(e, OSError) and e.errno == errno.EBUSY:
        return True
    cause = e.__cause__
    code = getattr(cause, "response", {}).get("Error", {}).get("Code") if cause is not None else None
    return code in ("PreconditionFailed", "412", "ConditionalRequestConflict") or "PreconditionFailed" in str(e)


def _mtime(info: dict[str, Any]) -> float:
    """Modification time (epoch seconds) from an fsspec `info` dict: local, S3, or fsspec's memory
    filesystem (whose `created` is the last write: every write makes a new file object)."""
    value = info.get("mtime", info.get("LastModified", info.get("last_modified", info.get("created"))))
    if value is None:
        raise KeyError(f"no modification time in {sorted(info)}")
    return value.timestamp() if hasattr(value, "timestamp") else float(value)


def _is_temp(key: str) -> bool:
    return key.rsplit("/", 1)[-1].startswith(_TEMP_PREFIX)

