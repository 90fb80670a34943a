"""A real two-node Ray cluster on this machine for the side lane (tests/conftest.py SIDE_LANE): `ray start
--head` and `ray start --address` as two processes of 1 CPU each, token authentication on, beside the test
session's own Ray. test_submit submits jobs to it; the sweep and pipeline tests' drivers join it."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import requests

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def two_nodes():
    """Yields {"address": the dashboard URL, "env": what a client or driver needs (RAY_ADDRESS, the token)}."""
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    gcs, dash = free_port(), free_port()
    # The nodes' own processes find their cluster through RAY_ADDRESS, as on a real node (where
    # /tmp/ray/ray_current_cluster would do): this machine also runs the test session's Ray instance.
    env["RAY_ADDRESS"] = f"127.0.0.1:{gcs}"
    temp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # Ray's unix socket paths must stay short
    def common():  # each node's agents on free ports: the session's own Ray holds the default ones
        return ["--block", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats",
                *(f"--{flag}={free_port()}" for flag in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                         "metrics-export-port", "runtime-env-agent-port"))]
    nodes = [subprocess.Popen([BIN / "ray", "start", "--head", f"--port={gcs}", "--dashboard-host=127.0.0.1",
                               f"--dashboard-port={dash}", f"--temp-dir={temp}", *common()], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)]
    address = f"http://127.0.0.1:{dash}"
    try:
        wait(lambda: requests.get(f"{address}/api/version", timeout=2, headers=auth(env)).ok, "the head's dashboard")
        nodes.append(subprocess.Popen([BIN / "ray", "start", f"--address=127.0.0.1:{gcs}", *common()], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        wait(lambda: len(ray_list(address, env, "nodes", "state=ALIVE")) == 2, "the second node")
        yield {"address": address, "env": env}
    finally:
        for proc in nodes:  # each node's process group (`ray start` and what it started); `ray stop` would
            os.killpg(proc.pid, signal.SIGKILL)  # kill every Ray instance here, the session's own included
            proc.wait()
        shutil.rmtree(temp, ignore_errors=True)


def auth(env: dict) -> dict:
    return {"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"}


def wait(ready, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except (requests.RequestException, subprocess.CalledProcessError, json.JSONDecodeError):
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{what} did not come up in {timeout}s")


def ray_list(address: str, env: dict, kind: str, *filters: str) -> list[dict]:
    """What `ray list <kind> --detail --filter k=v` shows, from the state API the CLI calls (without a ~3 s
    Python process per look)."""
    keys, values = zip(*(f.split("=", 1) for f in filters)) if filters else ((), ())
    reply = requests.get(f"{address}/api/v0/{kind}", headers=auth(env), timeout=30,
                         params={"detail": "true", "limit": 10000, "filter_keys": keys,
                                 "filter_predicates": ["="] * len(keys), "filter_values": values})
    reply.raise_for_status()
    return reply.json()["data"]["result"]["result"]
