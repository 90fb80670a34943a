import os
import shutil
import sys
from pathlib import Path

import ray


def test_local_ray_runs_tasks_with_shared_caches(ray_local):
    assert ray_local["CPU"] >= 2

    @ray.remote
    def where():
        import app  # noqa: F401  sets cache defaults in the worker too
        return os.environ["HF_HOME"], os.environ["WANDB_MODE"], shutil.which("ninja")

    hf_home, wandb_mode, ninja = ray.get(where.remote())
    assert hf_home == os.environ["HF_HOME"] and wandb_mode == "offline"
    # one ninja for every process (DeepSpeed's op is rebuilt when two ninja versions take turns): this env's
    assert ninja == shutil.which("ninja") == str(Path(sys.executable).parent / "ninja")
    assert ray.get([ray.remote(lambda x: x * x).remote(i) for i in range(4)]) == [0, 1, 4, 9]


def test_cluster_yaml_passes_ray_autoscaler_validation_and_is_secure():
    """Ray's own validation (the schema `ray up` applies, no cloud call), then what we promise on top."""
    import copy

    import pytest
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(open("cluster.yaml"))
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    types = config["available_node_types"]
    assert config["provider"]["type"] == "aws" and config["head_node_type"] in types
    assert {"cpu_worker", "gpu_a100x8", "gpu_h100x8"} <= set(types)
    assert all(types[t]["max_workers"] >= types[t]["min_workers"] for t in types)
    assert config["idle_timeout_minutes"] > 0
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)  # token auth on every node
    assert any("--dashboard-host=127.0.0.1" in c for c in config["head_start_ray_commands"])
    assert any('.[gpu]' in c for c in config["setup_commands"])
    assert "~/.ray/auth_token" in config["file_mounts"]
    with pytest.raises(Exception, match="max_workerz"):  # the validation is live: a typo fails
        validate_config(prepare_config(dict(copy.deepcopy(raw), max_workerz=3)))
