"""Ray runtime: a local cluster by default, an existing cluster when RAY_ADDRESS is set.

Heavy work (feature extraction, fine-tuning, synthesis) runs in Ray tasks and actors with explicit
resource requests; this module starts Ray once per process and reports the dashboard URL for the
CLI to print.

Secrets never travel through Ray: a `runtime_env` is stored in the GCS and shown on the dashboard.
Workers get credentials from their own environment or role -- on a local cluster they are children
of `ray.init` and inherit the driver's environment as it is at that moment; on KubeRay every pod
gets them from a Secret (`envFrom`) or an IAM role (IRSA), see the README. When joining an existing
cluster only the settings named in `FORWARDED_ENV` are forwarded (`worker_env`), an allowlist:
the S3 endpoint and region, the offline switches and the few voicefleet settings a worker reads.
Anything else stays behind, whatever its name (``VOICEFLEET_PASSWD``, a new credential variable),
and an endpoint URL is forwarded without its user, password, query and fragment
(``https://user:pass@minio:9000`` goes as ``https://minio:9000``).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import ray

URL_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")
"""Forwarded as URLs: scheme, host, port and path only."""
FORWARDED_ENV = (*URL_ENV, "AWS_REGION", "AWS_DEFAULT_REGION", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                 "VOICEFLEET_DEBUG", "VOICEFLEET_ASR_MODEL")
"""Every variable a worker may receive through `runtime_env`; adding one is a reviewed change."""
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


def _bare_url(name: str, value: str) -> str | None:
    """`value` as scheme://host[:port][/path] (credentials, query and fragment dropped); None if not a URL."""
    try:
        parts = urlsplit(value.strip())
        scheme, host, port = parts.scheme, parts.hostname, parts.port
    except ValueError:  # e.g. a port that is not a number
        scheme = host = None
    if not scheme or not host:
        logging.getLogger(__name__).warning("%s is not a URL with a host; not forwarded to Ray workers", name)
        return None
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        logging.getLogger(__name__).warning("%s carries credentials, a query or a fragment: forwarded to Ray "
                                            "workers without them", name)
    netloc = f"[{host}]" if ":" in host else host
    return urlunsplit((parts.scheme, netloc + (f":{port}" if port is not None else ""), parts.path, "", ""))


def worker_env() -> dict[str, str]:
    """The settings a worker of an existing cluster gets: those in `FORWARDED_ENV` that are set, URLs bare."""
    out = {}
    for name in FORWARDED_ENV:
        value = os.environ.get(name)
        if value is not None and name in URL_ENV:
            value = _bare_url(name, value)
        if value is not None:
            out[name] = value
    return out


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


class ClusterTooSmall(ValueError):
    """The actors a job asks for cannot all be placed on the Ray cluster as it is."""


def actors_that_fit(resources: Resources, nodes: list[dict]) -> int:
    """How many actors of `resources` the alive nodes' total resources hold (each actor on one node)."""
    fit = 0
    for node in nodes:
        have = node.get("Resources") or {}
        counts = [int(have.get("CPU", 0.0) / resources.num_cpus + 1e-9) if resources.num_cpus > 0 else None,
                  int(have.get("GPU", 0.0) / resources.num_gpus + 1e-9) if resources.num_gpus > 0 else None]
        counts = [c for c in counts if c is not None]
        fit += min(counts) if counts else 1 << 20
    return fit


def check_resources(resources: Resources, actors: int) -> None:
    """Refuse, before any work, a pool of `actors` that the cluster cannot place (call after ensure_ray).

    Without this Ray Data waits forever for actors no node can hold (e.g. `--gpus 1` on a CPU-only
    cluster). Counted against each alive node's total resources, so work already running on the
    cluster may still delay the start: `render_lines` bounds that wait (`actor_start_timeout_s`).
    """
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    fit = actors_that_fit(resources, nodes)
    if fit >= actors:
        return
    total_cpu = sum((n.get("Resources") or {}).get("CPU", 0.0) for n in nodes)
    total_gpu = sum((n.get("Resources") or {}).get("GPU", 0.0) for n in nodes)
    raise ClusterTooSmall(
        f"{actors} actor(s) of {resources.num_cpus:g} CPU and {resources.num_gpus:g} GPU each do not fit the Ray "
        f"cluster ({len(nodes)} node(s), {total_cpu:g} CPUs, {total_gpu:g} GPUs in all): at most {fit} fit. "
        "Lower --actors, --cpus or --gpus, or add nodes")
