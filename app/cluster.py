"""Ray, local or remote: `init_ray()` joins the cluster in RAY_ADDRESS when set (a `ray up` cluster, or
the one `ray job submit` runs us in), otherwise starts a local instance sized to this machine.

    RAY_ADDRESS=auto python -m jobs.<stage> ...    # join a running `ray start --head`

Workers of a local instance inherit this process's environment, so they share the caches `app` sets.
"""
from __future__ import annotations

import os
import socket
from contextlib import contextmanager

import ray

from app import CACHE_DIR


def _temp_dir() -> str | None:
    # Ray's unix socket paths must stay under ~107 bytes; use the project cache only when it is short.
    path = CACHE_DIR / "ray"
    return str(path) if len(str(path)) <= 40 else None


def init_ray(num_cpus: int | None = None, **kwargs) -> dict:
    """Connect to or start Ray once; returns the cluster's resources."""
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(**kwargs)
        else:
            _start_local(num_cpus or os.cpu_count(), **kwargs)
    return ray.cluster_resources()


@contextmanager
def shared_ray():
    """For processes this one starts: outside a cluster, one local instance they join through RAY_ADDRESS
    (the pipeline's stages skip starting and stopping a Ray each); inside one, nothing to do."""
    if os.environ.get("RAY_ADDRESS"):
        yield
        return
    init_ray()
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    try:
        yield
    finally:
        os.environ.pop("RAY_ADDRESS", None)
        ray.shutdown()


def _start_local(num_cpus: int, **kwargs) -> None:
    """A local instance whose workers know its address (RAY_ADDRESS): Ray code that looks the cluster up from
    a worker (Ray Train's placement-group cleaner uses the state API) otherwise fails as soon as a second Ray
    instance runs on the machine, and a stopped trial's workers are never freed. This process's own
    environment is left as it was."""
    from ray._private.services import get_node_ip_address
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    saved = {k: os.environ.get(k) for k in ("RAY_ADDRESS", "RAY_GCS_SERVER_PORT")}
    os.environ.update(RAY_ADDRESS=f"{get_node_ip_address()}:{port}", RAY_GCS_SERVER_PORT=str(port))
    try:
        # The dashboard (on 127.0.0.1) serves Ray's state API, which Ray Train uses to watch its workers.
        # Idle workers live 5 minutes (Ray's default: 1 s once more run than there are CPUs): a worker that
        # has imported torch and transformers for one Ray Data tokenization is there for the next run's
        # (a sweep's trials, a test session), which then starts in ~3 s instead of ~12.
        kwargs["_system_config"] = {"idle_worker_killing_time_threshold_ms": 300_000,
                                    **kwargs.get("_system_config", {})}
        ray.init(address="local", num_cpus=num_cpus, dashboard_host="127.0.0.1", _temp_dir=_temp_dir(), **kwargs)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
