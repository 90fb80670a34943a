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
    assert app["import_path"] == "app.serve.app:build_app"
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
    from app.eval.registry import Registry
    reg = Registry(tmp_path / "r.sqlite")
    v = reg.register("base", "/models/base", {"bleu": 1.0})
    args = ServeArgs(model="registry:latest-promoted", registry=str(tmp_path / "r.sqlite"))
    with pytest.raises(UserError, match="no such version"):
        args.model_path()
    reg.promote(v)
    assert args.model_path() == "/models/base"


@pytest.mark.slow
def test_serve_run_cli_streams_and_shuts_down(tmp_path):
    """`serve run <config>` in its own process (own Ray instance), one streamed answer, clean Ctrl-C exit."""
    from jobs.serve_demo import ServeDemoConfig, run
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [{"name": "t", "route_prefix": "/", "import_path": "app.serve.app:build_app",
                          "args": {"model": "tiny", "served_model_name": "raypost", "cpus_per_replica": 0}}]}))
    answer = run(ServeDemoConfig(config=str(config), prompt="hello", max_tokens=6, output_dir=str(tmp_path / "o")))
    assert isinstance(answer, str) and (tmp_path / "o" / "serve.log").exists()
    with socket.socket() as s:  # the server is gone: the port is free again
        s.bind(("127.0.0.1", port))
