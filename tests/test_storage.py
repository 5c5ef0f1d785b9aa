"""Store: the same behaviour on a local folder and on S3 (moto), atomic writes, safe ids."""

from __future__ import annotations

import os
import pickle
import shutil

import pytest

from voicefleet.tasks.store.ids import InvalidId, safe_id
from voicefleet.tasks.store.storage import InvalidKey, Store


def test_bytes_text_and_json_round_trip(store: Store) -> None:
    store.write_bytes("a/b/blob.bin", b"\x00\x01payload")
    store.write_text("a/note.txt", "héllo")
    store.write_json("a/meta.json", {"voice": "joe", "n": [1, 2]})

    assert store.read_bytes("a/b/blob.bin") == b"\x00\x01payload"
    assert store.read_text("a/note.txt") == "héllo"
    assert store.read_json("a/meta.json") == {"voice": "joe", "n": [1, 2]}
    assert store.exists("a/note.txt") and not store.exists("a/missing.txt")
    with store.open("a/b/blob.bin") as f:
        assert f.read() == b"\x00\x01payload"


def test_missing_key_raises_file_not_found(store: Store) -> None:
    with pytest.raises(FileNotFoundError):
        store.read_bytes("nope/missing.bin")


def test_overwrite_replaces_the_whole_object_and_leaves_no_temp_files(store: Store) -> None:
    store.write_bytes("x/obj.bin", b"old" * 1000)
    store.write_bytes("x/obj.bin", b"new")
    assert store.read_bytes("x/obj.bin") == b"new"
    assert store.list("x") == ["x/obj.bin"]


def test_put_file_uploads_a_local_file(store: Store, tmp_path) -> None:
    src = tmp_path / "shard.tar"
    src.write_bytes(os.urandom(3 << 20))
    store.put_file(src, "renders/j/shards/s.tar")
    assert store.read_bytes("renders/j/shards/s.tar") == src.read_bytes()
    assert store.list("renders") == ["renders/j/shards/s.tar"]


def test_interrupted_local_write_keeps_the_old_object(local_store: Store, tmp_path, monkeypatch) -> None:
    local_store.write_bytes("k/obj.bin", b"old")
    src = tmp_path / "big.bin"
    src.write_bytes(b"n" * (1 << 20))

    def copy_half_then_die(fsrc, fdst, length=0):
        fdst.write(fsrc.read(1000))
        raise KeyboardInterrupt("killed mid-copy")

    monkeypatch.setattr(shutil, "copyfileobj", copy_half_then_die)
    with pytest.raises(KeyboardInterrupt):
        local_store.put_file(src, "k/obj.bin")
    assert local_store.read_bytes("k/obj.bin") == b"old"
    assert os.listdir(local_store.url("k")) == ["obj.bin"]   # temp file cleaned up


def test_list_and_glob_hide_temp_files_of_a_crashed_writer(local_store: Store) -> None:
    local_store.write_bytes("d/a.parquet", b"1")
    stray = os.path.join(local_store.url("d"), ".vf-tmp-b.parquet.abc123")
    open(stray, "wb").close()
    assert local_store.list("d") == ["d/a.parquet"]
    assert local_store.glob("d/*") == ["d/a.parquet"]


def test_glob_list_and_delete(store: Store) -> None:
    for key in ("r/j/index/p1.parquet", "r/j/index/p2.parquet", "r/j/shards/p1.tar"):
        store.write_bytes(key, b"x")
    assert store.glob("r/j/index/*.parquet") == ["r/j/index/p1.parquet", "r/j/index/p2.parquet"]
    assert store.list("r/j") == ["r/j/index/p1.parquet", "r/j/index/p2.parquet", "r/j/shards/p1.tar"]
    assert store.list("r/none") == []
    assert store.glob("r/none/*.parquet") == []

    store.delete("r/j/shards/p1.tar")
    store.delete("r/j/shards/never-existed.tar")
    assert store.list("r/j/shards") == []
    store.delete("r", recursive=True)
    assert store.list() == []


def test_read_range_returns_exactly_the_requested_bytes(store: Store) -> None:
    data = bytes(range(256)) * 40
    store.write_bytes("blob.bin", data)
    assert store.read_range("blob.bin", 1000, 300) == data[1000:1300]
    assert store.read_range("blob.bin", 0, 1) == data[:1]
    with pytest.raises(EOFError):
        store.read_range("blob.bin", len(data) - 10, 20)


def test_url_is_a_plain_path_locally_and_an_s3_url_on_s3(store: Store) -> None:
    url = store.url("renders", "j1", "index", "*.parquet")
    if store.is_local:
        assert os.path.isabs(url) and url.endswith("/renders/j1/index/*.parquet")
    else:
        assert url.startswith("s3://voicefleet-test/") and url.endswith("/renders/j1/index/*.parquet")


def test_plain_path_and_file_url_name_the_same_store(tmp_path) -> None:
    plain = Store(str(tmp_path))
    assert Store(f"file://{tmp_path}") == plain
    plain.write_bytes("k.txt", b"1")
    assert Store(f"file://{tmp_path}").read_bytes("k.txt") == b"1"
    assert Store("./voicefleet-data").root == os.path.abspath("voicefleet-data")


def test_store_pickles_without_its_connection(store: Store) -> None:
    store.write_bytes("p.bin", b"pickled")
    assert store.fs is not None   # a filesystem exists in this process
    state = pickle.loads(pickle.dumps(store)).__dict__
    assert state["_fs"] is None
    assert pickle.loads(pickle.dumps(store)).read_bytes("p.bin") == b"pickled"


def test_s3_endpoint_travels_with_a_pickled_store(s3_store: Store, s3_server, monkeypatch) -> None:
    s3_store.write_bytes("p.bin", b"from-driver")
    payload = pickle.dumps(s3_store)
    # a worker whose environment names no endpoint still reaches the same server
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    type(s3_store.fs).clear_instance_cache()   # no filesystem left over from the driver
    worker_store = pickle.loads(payload)
    assert worker_store.storage_options["endpoint_url"] == s3_server.endpoint_url
    assert worker_store.read_bytes("p.bin") == b"from-driver"


def test_explicit_storage_options_win_over_the_environment(s3_server) -> None:
    store = Store("s3://bucket/prefix", {"endpoint_url": "http://elsewhere:9000", "key": "K", "secret": "S"})
    assert store.storage_options["endpoint_url"] == "http://elsewhere:9000"
    assert store.storage_options["client_kwargs"] == {"region_name": "us-east-1"}
    assert "S'" not in repr(store) and "***" in repr(store)


@pytest.mark.parametrize("good", ["L0001", "joe-us_v2", "a", "9" * 128])
def test_safe_id_accepts_plain_ids(good: str) -> None:
    assert safe_id(good) == good


@pytest.mark.parametrize("bad", [
    "", ".", "..", "../etc", "a/b", "/abs/path", "s3://bucket/k", "file:x", "C:\\x",
    "a\x00b", "line\n2", "tab\there", " lead", "a b", "x" * 129, "a.b", "-x", "é",
])
def test_safe_id_refuses_unsafe_values_and_names_them(bad: str) -> None:
    with pytest.raises(InvalidId) as err:
        safe_id(bad, "line_id")
    assert "line_id" in str(err.value)
    if bad:
        assert repr(bad[:40]) in str(err.value)


def test_safe_id_refuses_non_strings() -> None:
    with pytest.raises(InvalidId, match="12"):
        safe_id(12, "voice_id")


@pytest.mark.parametrize("bad", ["../x", "/abs", "a//b", "a/./b", "s3://b/k", "a/\x01"])
def test_keys_cannot_escape_the_store_root(local_store: Store, bad: str) -> None:
    with pytest.raises(InvalidKey, match="storage key"):
        local_store.read_bytes(bad)


def test_open_is_read_only(local_store: Store) -> None:
    with pytest.raises(ValueError, match="read-only"):
        local_store.open("x", "wb")


def test_swap_bytes_replaces_only_what_the_caller_read(store: Store) -> None:
    assert store.swap_bytes("head.json", b"1", None)  # absent: a create
    assert not store.swap_bytes("head.json", b"other", None)
    assert not store.swap_bytes("head.json", b"3", b"0")  # stale: someone else wrote since
    assert store.read_bytes("head.json") == b"1"
    assert store.swap_bytes("head.json", b"2", b"1") and store.read_bytes("head.json") == b"2"
    assert not store.swap_bytes("gone.json", b"2", b"1")  # expected something, found nothing
    assert store.list() == ["head.json"]  # the lock file beside it is hidden


def test_concurrent_swaps_lose_no_update(store: Store) -> None:
    import threading

    store.write_bytes("counter", b"0")
    errors: list[BaseException] = []

    def count(times: int) -> None:
        mine = Store(store.uri, store.storage_options)
        try:
            for _ in range(times):
                while True:
                    current = mine.read_bytes("counter")
                    if mine.swap_bytes("counter", str(int(current) + 1).encode(), current):
                        break
        except BaseException as e:  # noqa: BLE001 -- surfaced below
            errors.append(e)

    threads = [threading.Thread(target=count, args=(5,)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and store.read_bytes("counter") == b"15"


def test_an_s3_server_that_ignores_if_match_is_refused(s3_store: Store, monkeypatch) -> None:
    from voicefleet.tasks.store.storage import UnsafeStore

    s3_store.write_bytes("head.json", b"1")
    pipe = s3_store.fs.pipe_file

    def ignoring_if_match(path, data, **kwargs):
        kwargs.pop("IfMatch", None)
        return pipe(path, data, **kwargs)

    monkeypatch.setattr(s3_store.fs, "pipe_file", ignoring_if_match)
    with pytest.raises(UnsafeStore, match="ignored 'If-Match'"):
        s3_store.swap_bytes("head.json", b"2", b"1")
    assert s3_store.read_bytes("head.json") == b"1"
