"""Stages through `ray job submit` on a real two-node Ray cluster on this machine (tests/two_nodes.py: `ray
start --head` and `ray start --address` as two processes, token authentication on). The data and SFT stages
run as submitted jobs; their Ray Data tasks and Ray Train workers land on both nodes; a failing job surfaces
its error."""
from __future__ import annotations

import json
import re
import subprocess
import time

import pytest
import requests

from app.demo.generate import generate
from tests.two_nodes import BIN, auth, ray_list


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
    tasks = ray_list(cluster["address"], cluster["env"], "tasks", f"job_id={_job_hex(cluster, job_id(data))}")
    assert len({t["node_id"] for t in tasks if t.get("node_id")}) == 2, "Ray Data tasks stayed on one node"

    sft = submit(cluster, "python", "-m", "jobs.sft", "jobs/configs/sft_tiny.yaml", f"data.path={tmp_path / 'data'}",
                 f"output_dir={tmp_path / 'sft'}", "scaling.num_workers=2", "train.max_steps=2", "eval.every=2",
                 "checkpoint.every=2", "tensorboard=false")
    assert sft.returncode == 0, sft.stdout[-3000:] + sft.stderr[-3000:]
    assert (tmp_path / "sft" / "final" / "model.safetensors").exists()
    workers = ray_list(cluster["address"], cluster["env"], "actors", "class_name=RayTrainWorker",
                        f"job_id={_job_hex(cluster, job_id(sft))}")
    assert len(workers) == 2 and len({w["node_id"] for w in workers}) == 2, workers


def _job_hex(cluster: dict, submission_id: str) -> str:
    """The Ray job id behind a submission id (what the state API filters on), from the Jobs REST API."""
    return requests.get(f"{cluster['address']}/api/jobs/{submission_id}", headers=auth(cluster["env"]),
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
