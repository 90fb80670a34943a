"""Ray, local or remote: `init_ray()` joins the cluster in RAY_ADDRESS when set (a `ray up` cluster, or
the one `ray job submit` runs us in), otherwise starts a local instance sized to this machine.

    RAY_ADDRESS=auto python -m jobs.<stage> ...    # join a running `ray start --head`

Workers of a local instance inherit this process's environment, so they share the caches `app` sets.
"""
from __future__ import annotations

import os

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
            # The dashboard (on 127.0.0.1) serves Ray's state API, which Ray Train uses to watch its workers.
            ray.init(num_cpus=num_cpus or os.cpu_count(), dashboard_host="127.0.0.1", _temp_dir=_temp_dir(),
                     **kwargs)
    return ray.cluster_resources()
