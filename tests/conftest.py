"""Shared fixtures: a real S3 server (moto) for the session, and a `store` on local disk and S3.

- `s3_server` (session): starts moto's S3 server on 127.0.0.1 at a free port, creates a bucket,
  and puts dummy credentials and the endpoint into `os.environ` for the rest of the session,
  so anything started later (Ray workers, Prefect, subprocesses) inherits them. Request it
  before `ray.init`: local workers inherit the environment (credentials never go through
  `runtime_env`, see tasks/cluster/runtime.py).
- `store` (function, parametrized "local" / "s3"): a fresh `Store` per test, a tmp folder or
  `s3://<bucket>/<unique prefix>`. A test that takes `store` runs once on each.
- `local_store` / `s3_store`: one of the two, for tests that need a specific backend.
"""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from voicefleet.tasks.store.storage import Store

S3_BUCKET = "voicefleet-test"
# Prefect's ephemeral API server needs more than its default 20 s to start on a busy 2-core machine;
# subprocesses (the CLI in end-to-end tests) inherit this.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
# The audit log's local-mode key (tasks/safety/audit_key.py) is made in a folder of this session, never in
# the developer's ~/.config; subprocesses inherit it.
os.environ.setdefault("VOICEFLEET_AUDIT_KEY_FILE", os.path.join(tempfile.mkdtemp(prefix="vf-audit-"), "audit.key"))
# Weights a developer pulled (`voicefleet pretrained pull`, ~/.cache/voicefleet) are never the tests' default
# base: enroll/render/demo look in an empty home of this session (subprocesses inherit it).
os.environ["VOICEFLEET_HOME"] = tempfile.mkdtemp(prefix="vf-home-")


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    bucket: str
    env: dict[str, str]   # the AWS_* variables set for the session

    def uri(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)   # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ENDPOINT_URL_S3": endpoint,
        # keep a developer's own AWS config out of the tests
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    removed = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
    saved = {name: os.environ.get(name) for name in (*env, *removed)}
    os.environ.update(env)
    for name in removed:
        os.environ.pop(name, None)
    try:
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=S3_BUCKET)
        yield S3Server(endpoint_url=endpoint, bucket=S3_BUCKET, env=env)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()


@pytest.fixture
def local_store(tmp_path: Path) -> Store:
    return Store(str(tmp_path / "store"))


@pytest.fixture
def s3_store(s3_server: S3Server) -> Store:
    return Store(s3_server.uri(f"t-{uuid.uuid4().hex[:12]}"))


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> Store:
    return request.getfixturevalue(f"{request.param}_store")
