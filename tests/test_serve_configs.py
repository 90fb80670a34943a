"""The shipped serve configs validate, and `serve run` + the openai client work end to end (jobs.serve_demo)."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from app.serve.config import ServeArgs

CONFIGS = sorted(Path(__file__).resolve().parent.parent.glob("serve_configs/*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_validate(path):
    spec = yaml.safe_load(path.read_text())
    app = spec["applications"][0]
    assert app["import_path"] == "app.serve.ingress:build_app"
    args = ServeArgs.model_validate(app.get("args", {}))
    host = spec.get("http_options", {}).get("host", "127.0.0.1")
    assert host == "127.0.0.1" or args.api_keys or "RAYPOST_API_KEYS" in path.read_text()


def test_unknown_arg_is_named():
    with pytest.raises(ValidationError, match="max_batchsize"):
        ServeArgs.model_validate({"max_batchsize": 4})
    with pytest.raises(ValidationError, match="rate_limit"):
        ServeArgs.model_validate({"limits": {"rate_limit": 4}})


def test_registry_reference_resolves_to_the_promoted_model(tmp_path):
    from app.config import UserError
    from app.registry import Registry
    reg = Registry(tmp_path / "r.sqlite")
    v = reg.register("base", "/models/base", {"bleu": 1.0})
    args = ServeArgs(model="registry:latest-promoted", registry=str(tmp_path / "r.sqlite"))
    with pytest.raises(UserError, match="no such version"):
        args.lookup()
    reg.promote(v)
    assert args.lookup()[0] == "/models/base" and args.lookup()[1]["id"] == v


@pytest.mark.slow
def test_serve_run_serves_the_promoted_version_and_rollback_moves_it_back(ray_local, monkeypatch, tmp_path):
    """`serve run <config>` in its own process (joining the session's Ray, as on a cluster) on
    registry:latest-promoted: one streamed
    answer, the version reported by /v1/models, a clean Ctrl-C exit; after `jobs.registry rollback` the same
    config resolves to the previous promoted version (what the next `serve run` loads: the lookup it calls)."""
    import json
    import subprocess
    import sys

    from app import PROJECT_ROOT
    from app.models import resolve
    from app.registry import Registry
    from jobs.serve_demo import ServeDemoConfig, run
    import ray
    monkeypatch.setenv("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    registry = tmp_path / "registry.sqlite"
    reg = Registry(registry)
    first, second = (reg.register(n, str(resolve("tiny")), {}) for n in ("first", "second"))
    reg.promote(first)
    reg.promote(second)
    args = {"model": "registry:latest-promoted", "registry": str(registry), "served_model_name": "raypost",
            "cpus_per_replica": 0}
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [{"name": "t", "route_prefix": "/", "import_path": "app.serve.ingress:build_app",
                          "args": args}]}))
    out = tmp_path / "promoted"
    try:
        answer = run(ServeDemoConfig(config=str(config), prompt="hello", max_tokens=6, output_dir=str(out)))
    finally:  # whatever happened to the serve run process, Serve does not outlive this test in the session's Ray
        from ray import serve
        left = list(serve.status().applications)
        if left:
            serve.shutdown()
    assert not left, f"serve run did not shut down on Ctrl-C: {left} still deployed"
    record = json.loads((out / "answer.json").read_text())
    assert record["answer"] == answer and len(answer) > 0  # six tokens of the tiny model's text
    assert record["version"] == second
    with socket.socket() as s:  # the server is gone: the port is free again
        s.bind(("127.0.0.1", port))
    rolled = subprocess.run([sys.executable, "-m", "jobs.registry", "rollback", f"registry={registry}"],
                            cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert rolled.returncode == 0 and f"current: {first}" in rolled.stdout
    assert ServeArgs.model_validate(args).lookup()[1]["id"] == first
