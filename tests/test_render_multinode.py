"""A real two-node Ray cluster on 127.0.0.1 (a head and a second node, started with `ray start` by the
test and stopped by it): a job renders into the S3 test server, and a local-folder store is refused."""
from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from render_checks import assert_render_complete
from render_voices import register_tiny_voices
from voicefleet.tasks.storage import Store

pytestmark = pytest.mark.slow
OWNER = "user:demo"
RAY_AUTH_MODE_OFF = {"RAY_AUTH_MODE": "disabled"}  # a throwaway cluster on 127.0.0.1; clients need no token


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_start(*args: str, env: dict) -> subprocess.Popen:
    """`ray start --block` in its own process group, so teardown stops exactly what it started."""
    return subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--num-cpus", "1",
                             "--node-ip-address", "127.0.0.1", "--disable-usage-stats", *args],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


@pytest.fixture(scope="module")
def two_nodes(s3_server):
    port = free_port()
    temp = tempfile.mkdtemp(prefix="vf2n-", dir="/tmp")   # short: Ray's socket paths must stay < 108 chars
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE_OFF, RAY_agent_register_timeout_ms="180000")  # slow agents on a busy machine
    head = ray_start("--head", "--port", str(port), "--temp-dir", temp, "--include-dashboard", "false", env=env)
    procs = [head]
    address = f"127.0.0.1:{port}"
    try:
        time.sleep(5)
        procs.append(ray_start("--address", address, env=env))
        deadline = time.time() + 180
        code = f"import ray; ray.init(address={address!r}); print(len([n for n in ray.nodes() if n['Alive']]))"
        while True:
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                                 env=dict(os.environ, **RAY_AUTH_MODE_OFF))
            if out.stdout.strip().endswith("2"):
                break
            assert time.time() < deadline, f"the second node did not join: {out.stdout[-500:]} {out.stderr[-1500:]}"
            assert all(p.poll() is None for p in procs), "ray start exited"
            time.sleep(3)
        yield address
    finally:
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def write_script(store: Store, n: int, voices: list[str]) -> str:
    path = os.path.join(tempfile.mkdtemp(), "script.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["line_id", "voice_id", "text", "language"])
        w.writeheader()
        for i in range(n):
            w.writerow({"line_id": f"l{i}", "voice_id": voices[i % 2], "text": f"Line {i} of two nodes.", "language": "en"})
    store.put_file(path, "scripts/two-nodes.csv")
    return store.url("scripts/two-nodes.csv")


def cli(*args: str, address: str):
    env = dict(os.environ, RAY_ADDRESS=address, COLUMNS="250", **RAY_AUTH_MODE_OFF)
    return subprocess.run([sys.executable, "-m", "voicefleet.flows.cli", *args], env=env, capture_output=True,
                          text=True, timeout=900)


def test_two_node_cluster_renders_into_s3_and_refuses_a_local_folder(two_nodes, s3_server, tmp_path):
    store = Store(s3_server.uri(f"two-nodes-{os.getpid()}"))
    register_tiny_voices(store, ["ann", "bob"], OWNER)
    script = write_script(store, 6, ["ann", "bob"])
    res = cli("render", script, "--as", OWNER, "--store", store.uri, "--job", "two", "--actors", "2",
              "--batch-size", "2", "--lines-per-shard", "2", address=two_nodes)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    table = assert_render_complete(store, "two", [f"l{i}" for i in range(6)])
    assert set(table.column("status").to_pylist()) == {"ok"}

    local = Store(str(tmp_path / "store"))
    register_tiny_voices(local, ["ann", "bob"], OWNER)
    refused = cli("render", script, "--as", OWNER, "--store", local.uri, "--job", "local", address=two_nodes)
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    assert "is a local folder but the Ray cluster has 2 nodes" in refused.stderr
