"""A real two-node Ray cluster on 127.0.0.1: `ray start --head` plus a second `ray start --address`
node, both started by the test in their own process group and temp dir. The render CLI joins it
through RAY_ADDRESS and renders a job into the S3 test server with one synthesis actor per node; the
same CLI with a local-folder store is refused (LocalStoreOnCluster: each node would write to its
own disk).

The cluster never touches other Ray instances on the machine: its ports are free ones picked here,
its temp dir is its own (no `ray stop`, which would stop every Ray on the machine); teardown kills
the processes it started, by pid. If `ray start` itself cannot start here, the tests skip saying why.
"""
from __future__ import annotations

import csv
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from render_checks import assert_render_complete
from render_voices import register_tiny_voices

from voicefleet.tasks.store.storage import Store

pytestmark = pytest.mark.slow
OWNER = "user:demo"
NODE_CPUS = 3   # logical CPUs: Ray's bookkeeping, not cores
# an actor asks for more than half a node, so the two synthesis actors must land on different nodes,
# and leaves a whole CPU on each for Ray Data's file listing, read, repartition and write tasks (with
# 1-CPU nodes the actors held both nodes and the listing task, which asks 1 CPU, waited forever)
ACTOR_CPUS = 1.6
START_TIMEOUT_S = 180

NODES_ALIVE = """
import sys, time, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
deadline = time.time() + float(sys.argv[2])
while True:
    alive = [n for n in ray.nodes() if n["Alive"]]
    if len(alive) >= 2 or time.time() > deadline:
        break
    time.sleep(1)
print(len(alive), sum(n["Resources"].get("CPU", 0) for n in alive))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    address: str
    temp_dir: str
    env: dict[str, str]
    procs: list[subprocess.Popen] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)

    def start_node(self, name: str, *args: str) -> subprocess.Popen:
        """`ray start --block` in its own process group: the node's daemons are its children."""
        log = os.path.join(self.temp_dir, f"{name}.log")
        self.logs.append(log)
        cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--node-ip-address=127.0.0.1",
               f"--num-cpus={NODE_CPUS}", "--num-gpus=0", f"--object-store-memory={100 * 1024 * 1024}",
               f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
               f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
               f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
               "--disable-usage-stats", *args]
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def log_tail(self, n: int = 3000) -> str:
        return "\n".join(f"--- {p}:\n{open(p).read()[-n:]}" for p in self.logs if os.path.exists(p))

    def stop(self) -> None:
        """SIGTERM each node's process group, then SIGKILL it and anything else still running from our temp dir."""
        for proc in self.procs:
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.time() + 10
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.procs:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in _pids_using(self.temp_dir):   # a daemon that left the group (setsid) still names our temp dir
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _pids_using(path: str) -> list[int]:
    """Processes of this user whose command line names `path` (Ray passes its session dir to every daemon)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != os.getuid():
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if path.encode() in f.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def _started(proc: subprocess.Popen, log: str, timeout_s: float) -> bool:
    """Whether `ray start --block` reports its node started (it says so once every daemon is up)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None:
        if "Ray runtime started" in open(log, errors="replace").read():
            return True
        time.sleep(0.5)
    return False


@pytest.fixture(scope="module")
def two_nodes(s3_server) -> Iterator[Cluster]:
    """Head + one more node, each with NODE_CPUS CPUs; the S3 credentials are in their environment
    (s3_server set them first), as a cluster's nodes would have them from their own role."""
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="vfray-", dir="/tmp")   # short: Ray's socket paths must fit 107 bytes
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="disabled",                       # Ray >= 2.5x turns token auth on for `ray start`
               RAY_agent_register_timeout_ms="120000",         # agents start slowly on a busy 2-core machine
               RAY_USAGE_STATS_ENABLED="0", VOICEFLEET_DASHBOARD="0")
    cluster = Cluster(f"127.0.0.1:{port}", temp_dir, env)
    try:
        head = cluster.start_node("head", "--head", f"--port={port}", "--include-dashboard=false",
                                  f"--ray-client-server-port={free_port()}", f"--temp-dir={temp_dir}")
        if not _started(head, cluster.logs[0], START_TIMEOUT_S):
            pytest.skip(f"`ray start --head` did not start on this machine:\n{cluster.log_tail()}")
        worker = cluster.start_node("worker", f"--address={cluster.address}", f"--temp-dir={temp_dir}")
        if not _started(worker, cluster.logs[1], START_TIMEOUT_S):
            pytest.skip(f"`ray start --address` (the second node) did not start on this machine:\n{cluster.log_tail()}")
        out = subprocess.run([sys.executable, "-c", NODES_ALIVE, cluster.address, str(START_TIMEOUT_S)], env=env,
                             capture_output=True, text=True, timeout=START_TIMEOUT_S + 60)
        assert out.returncode == 0, out.stdout + out.stderr[-3000:]
        alive, cpus = out.stdout.split()[-2:]
        assert (int(alive), float(cpus)) == (2, 2 * NODE_CPUS), f"{out.stdout}\n{cluster.log_tail()}"
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


def actor_nodes(cluster: Cluster, actor: str) -> set[str]:
    """Node ids of the workers that hosted `actor`, from the cluster's own logs: a worker's .err file
    names its actor, its core-worker log the node it was initialised on."""
    logs = os.path.join(cluster.temp_dir, "session_latest", "logs")
    nodes = set()
    for err in glob.glob(os.path.join(logs, "worker-*.err")):
        if f":actor_name:{actor}" not in open(err, errors="replace").read():
            continue
        worker_id, pid = re.fullmatch(r"worker-([0-9a-f]+)-[0-9a-f]+-(\d+)\.err", os.path.basename(err)).groups()
        core = open(os.path.join(logs, f"python-core-worker-{worker_id}_{pid}.log"), errors="replace").read()
        nodes.update(re.findall(r"Initializing worker at address: \S+ worker_id=\w+ node_id=(\w+)", core))
    return nodes


def cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess:
    env = dict(cluster.env, RAY_ADDRESS=cluster.address, COLUMNS="250", VOICEFLEET_LOCAL_MODE="1")  # `--as`
    env.pop("VOICEFLEET_PRINCIPAL_KEY", None)
    return subprocess.run([sys.executable, "-m", "voicefleet.flows.cli", *args], env=env, capture_output=True,
                          text=True, timeout=600)


def write_script(path: str, n: int, voices: list[str]) -> list[str]:
    texts = ["Hi there.", "The storm rolled in before dawn.", "Please hold the line.", "We will be back."]
    rows = [{"line_id": f"l{i}", "voice_id": voices[i % len(voices)], "text": texts[i % len(texts)],
             "language": "en"} for i in range(n)]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return [r["line_id"] for r in rows]


def test_two_node_cluster_renders_into_s3(two_nodes, s3_store, tmp_path):
    register_tiny_voices(s3_store, ["ann", "bob"], OWNER)
    script = str(tmp_path / "script.csv")
    ids = write_script(script, 4, ["ann", "bob"])
    res = cli(two_nodes, "render", script, "--as", OWNER, "--local", "--store", s3_store.uri, "--job", "two-nodes",
              "--actors", "2", "--cpus", str(ACTOR_CPUS), "--batch-size", "2", "--lines-per-shard", "2",
              "--qc", "off")
    assert res.returncode == 0, f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}\n{two_nodes.log_tail()}"
    table = assert_render_complete(s3_store, "two-nodes", ids)
    assert set(table.column("status").to_pylist()) == {"ok"}, table.select(["line_id", "status", "error"]).to_pylist()
    # both synthesis actors ran, one on each node (more than half a node's CPUs each)
    assert len(actor_nodes(two_nodes, "MapWorker(MapBatches(SynthesizeLines))")) == 2, two_nodes.log_tail()


def test_a_local_folder_store_is_refused_on_the_two_node_cluster(two_nodes, tmp_path):
    store = Store(str(tmp_path / "store"))
    register_tiny_voices(store, ["ann"], OWNER)
    script = str(tmp_path / "script.csv")
    write_script(script, 2, ["ann"])
    res = cli(two_nodes, "render", script, "--as", OWNER, "--local", "--store", store.uri, "--job", "local-folder")
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert "is a local folder but the Ray cluster has 2 nodes" in res.stderr, res.stderr
    assert "use an object store (s3://...)" in res.stderr
    assert not store.list("renders/local-folder/shards")
