"""Ray runtime: a local cluster by default, an existing cluster when RAY_ADDRESS is set.

Heavy work (feature extraction, fine-tuning, synthesis) runs in Ray tasks and actors with explicit
resource requests; this module starts Ray once per process and reports the dashboard URL for the
CLI to print.

Secrets never travel through Ray: a `runtime_env` is stored in the GCS and shown on the dashboard.
Workers get credentials from their own environment or role -- on a local cluster they are children
of `ray.init` and inherit the driver's environment as it is at that moment; on KubeRay every pod
gets them from a Secret (`envFrom`) or an IAM role (IRSA), see the README. When joining an existing
cluster only non-secret settings are forwarded (`worker_env`): the S3 endpoint and region, and
voicefleet's own switches.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import ray

FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")
FORWARDED_ENV_PREFIXES = ("VOICEFLEET_", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_SECRET_WORDS = ("KEY", "SECRET", "TOKEN", "PASSWORD", "CREDENTIAL")
_dashboard: str | None = None  # from ray.init's context, kept for later calls


@dataclass(frozen=True)
class Resources:
    """What one unit of heavy work asks Ray for. Fractional GPUs pack several units on one card."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0

    def options(self) -> dict:
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}

    @property
    def device(self) -> str:
        return "cuda" if self.num_gpus > 0 else "cpu"


def worker_env() -> dict[str, str]:
    """Non-secret settings a worker of an existing cluster needs: endpoint, region, voicefleet switches."""
    return {k: v for k, v in os.environ.items()
            if (k in FORWARDED_ENV or k.startswith(FORWARDED_ENV_PREFIXES))
            and not any(word in k.upper() for word in _SECRET_WORDS)}


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> str | None:
    """Start (or join) Ray once; returns the dashboard URL when there is one."""
    global _dashboard
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        kwargs: dict = dict(
            logging_level=logging.WARNING,
            log_to_driver=os.environ.get("VOICEFLEET_RAY_LOGS", "0") == "1",
            configure_logging=True,
        )
        if address:  # an existing cluster: its workers have their own environment and credentials
            ctx = ray.init(address=address, runtime_env={"env_vars": worker_env()}, **kwargs)
        else:
            ctx = ray.init(num_cpus=num_cpus, include_dashboard=os.environ.get("VOICEFLEET_DASHBOARD", "1") == "1",
                           **kwargs)
        _dashboard = getattr(ctx, "dashboard_url", None) or None
        if os.environ.get("VOICEFLEET_DEBUG") != "1":
            for name in ("ray", "ray.data", "ray.data._internal.execution.streaming_executor"):
                logging.getLogger(name).setLevel(logging.WARNING)
        try:
            from ray.data import DataContext

            data_ctx = DataContext.get_current()
            data_ctx.enable_progress_bars = False
            data_ctx.print_on_execution_start = False
        except Exception:  # noqa: BLE001 — cosmetic settings only
            pass
    return dashboard_url()


def dashboard_url() -> str | None:
    """The dashboard of the cluster this process joined through `ensure_ray` (None without one)."""
    if not _dashboard:
        return None
    return _dashboard if _dashboard.startswith("http") else "http://" + _dashboard


class LocalStoreOnCluster(ValueError):
    """A local-folder store used on a multi-node Ray cluster: each node would write to its own disk."""


def check_store_for_cluster(store) -> None:
    """Refuse a local-folder store when the Ray cluster has more than one node (call after ensure_ray)."""
    if not store.is_local:
        return
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1:
        raise LocalStoreOnCluster(
            f"store {store.uri} is a local folder but the Ray cluster has {len(nodes)} nodes: each node would "
            "write to its own disk and the job's files would be scattered; use an object store (s3://...) "
            "or a single-node cluster")
