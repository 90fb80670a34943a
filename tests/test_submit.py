"""Stages through `ray job submit` on a real two-node Ray cluster on this machine: `ray start --head` and
`ray start --address` as two processes, token authentication on. The data and SFT stages run as submitted
jobs; their Ray Data tasks and Ray Train workers land on both nodes; a failing job surfaces its error."""
from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

from app.demo.generate import generate

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(nodes: list[subprocess.Popen]) -> None:
    """Kill each node's process group (`ray start` and what it started); `ray stop` would kill every Ray
    instance on the machine, the test session's own included."""
    for proc in nodes:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes of 1 CPU each, token authentication on; yields the dashboard address and the env a
    client needs (the token)."""
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    gcs, dash = _free_port(), _free_port()
    # The nodes' own processes find their cluster through RAY_ADDRESS, as on a real node (where
    # /tmp/ray/ray_current_cluster would do): this machine also runs the test session's Ray instance.
    env["RAY_ADDRESS"] = f"127.0.0.1:{gcs}"
    temp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # Ray's unix socket paths must stay short
    def common():  # each node's agents on free ports: the session's own Ray holds the default ones
        return ["--block", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats",
                *(f"--{flag}={_free_port()}" for flag in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                          "metrics-export-port", "runtime-env-agent-port"))]
    nodes = [subprocess.Popen([BIN / "ray", "start", "--head", f"--port={gcs}", "--dashboard-host=127.0.0.1",
                               f"--dashboard-port={dash}", f"--temp-dir={temp}", *common()], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)]
    address = f"http://127.0.0.1:{dash}"
    try:
        _wait(lambda: requests.get(f"{address}/api/version", timeout=2, headers=_auth(env)).ok, "the head's dashboard")
        nodes.append(subprocess.Popen([BIN / "ray", "start", f"--address=127.0.0.1:{gcs}", *common()], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        _wait(lambda: len(_ray_list(address, env, "nodes", "state=ALIVE")) == 2, "the second node")
        yield {"address": address, "env": env}
    finally:
        _stop(nodes)


def _auth(env: dict) -> dict:
    return {"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"}


def _wait(ready, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except (requests.RequestException, subprocess.CalledProcessError, json.JSONDecodeError):
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{what} did not come up in {timeout}s")


def _ray_list(address: str, env: dict, kind: str, *filters: str) -> list[dict]:
    """What `ray list <kind> --detail --filter k=v` shows, from the state API the CLI calls (without a ~3 s
    Python process per look)."""
    keys, values = zip(*(f.split("=", 1) for f in filters)) if filters else ((), ())
    reply = requests.get(f"{address}/api/v0/{kind}", headers=_auth(env), timeout=30,
                         params={"detail": "true", "limit": 10000, "filter_keys": keys,
                                 "filter_predicates": ["="] * len(keys), "filter_values": values})
    reply.raise_for_status()
    return reply.json()["data"]["result"]["result"]


def submit(cluster: dict, *entrypoint: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`ray job submit --working-dir . -- <entrypoint>`, the way a user runs a stage on a cluster (again while
    the head's job agent is still starting: "No available agent to submit job, please try again later")."""
    for _ in range(15):
        result = subprocess.run([BIN / "ray", "job", "submit", "--address", cluster["address"], "--working-dir", ".",
                                 "--", *entrypoint], env=env or cluster["env"], capture_output=True, text=True,
                                timeout=900)
        if "No available agent" not in result.stderr:
            return result
        time.sleep(0.5)
    return result


def job_id(result: subprocess.CompletedProcess) -> str:
    return re.search(r"raysubmit_\w+", result.stdout + result.stderr).group(0)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_data_and_sft_jobs_run_on_both_nodes(cluster, tmp_path):
    raw = tmp_path / "raw"
    generate(raw, n_dialogs=400, n_tickets=20, n_preferences=4, n_prompts=4, seed=0)
    data = submit(cluster, "python", "-m", "jobs.data", "jobs/configs/data_demo.yaml",
                  f"input.path={raw / 'dialogs.jsonl'}", f"output_dir={tmp_path / 'data'}")
    assert data.returncode == 0, data.stdout[-3000:] + data.stderr[-3000:]
    assert "succeeded" in data.stdout + data.stderr
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert sum(manifest["counts"]["splits"].values()) > 100
    tasks = _ray_list(cluster["address"], cluster["env"], "tasks", f"job_id={_job_hex(cluster, job_id(data))}")
    assert len({t["node_id"] for t in tasks if t.get("node_id")}) == 2, "Ray Data tasks stayed on one node"

    sft = submit(cluster, "python", "-m", "jobs.sft", "jobs/configs/sft_tiny.yaml", f"data.path={tmp_path / 'data'}",
                 f"output_dir={tmp_path / 'sft'}", "scaling.num_workers=2", "train.max_steps=2", "eval.every=2",
                 "checkpoint.every=2", "tensorboard=false")
    assert sft.returncode == 0, sft.stdout[-3000:] + sft.stderr[-3000:]
    assert (tmp_path / "sft" / "final" / "model.safetensors").exists()
    workers = _ray_list(cluster["address"], cluster["env"], "actors", "class_name=RayTrainWorker",
                        f"job_id={_job_hex(cluster, job_id(sft))}")
    assert len(workers) == 2 and len({w["node_id"] for w in workers}) == 2, workers


def _job_hex(cluster: dict, submission_id: str) -> str:
    """The Ray job id behind a submission id (what the state API filters on), from the Jobs REST API."""
    return requests.get(f"{cluster['address']}/api/jobs/{submission_id}", headers=_auth(cluster["env"]),
                        timeout=10).json()["job_id"]


def test_failing_job_surfaces_its_error_and_tokenless_clients_are_refused(cluster, tmp_path):
    bad = submit(cluster, "python", "-m", "jobs.sft", "jobs/configs/sft_tiny.yaml", "optim.lrr=1e-3")
    assert bad.returncode != 0
    assert "unknown config key 'optim.lrr'" in bad.stdout + bad.stderr
    assert "failed" in bad.stdout + bad.stderr
    no_token = {k: v for k, v in cluster["env"].items() if k != "RAY_AUTH_TOKEN"}
    refused = submit(cluster, "python", "-c", "print('should not run')",
                     env={**no_token, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "absent"), "RAY_AUTH_MODE": "disabled"})
    assert refused.returncode != 0 and "should not run" not in refused.stdout
    assert requests.get(f"{cluster['address']}/api/jobs/", timeout=10).status_code in (401, 403)
