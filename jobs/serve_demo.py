"""Start the endpoint with `serve run`, stream one chat answer through the openai client, shut down.

    python -m jobs.serve_demo                                   # serve_configs/demo.yaml
    python -m jobs.serve_demo config=serve_configs/int8.yaml prompt="订单到哪了？"
    python -m jobs.serve_demo model=runs/quantize-int8/model     # serve this model with the config's settings

The last step of `make demo`: the registry's promoted model answers a customer question over HTTP;
answer.json records the answer and the registry version the endpoint reports in /v1/models.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import requests
import yaml

from app.cli import Job
from app.config import JobConfig, UserError


# `serve run` shuts down on Ctrl-C (SIGINT). A blocked or ignored SIGINT survives exec, so a caller that has it
# blocked (a test process full of Ray and torch threads, seen once) would leave the server up: exec it with
# SIGINT unblocked and at its default.
SIGINT_ON = ("import os, signal, sys; signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
             "signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])")


class ServeDemoConfig(JobConfig):
    config: str = "serve_configs/demo.yaml"
    model: str | None = None  # replaces the config's model (a folder, alias or registry:<ref>)
    prompt: str = "Where is my order LH12345678? It has been a week."
    max_tokens: int = 96
    startup_timeout_s: float = 300


def run(cfg: ServeDemoConfig) -> str:
    if not Path(cfg.config).is_file():
        raise UserError(f"serve config not found: {cfg.config}")
    spec = yaml.safe_load(Path(cfg.config).read_text())
    http = spec.get("http_options", {})
    url = f"http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}"
    app_args = spec["applications"][0].setdefault("args", {})
    log = cfg.out("serve")
    log.mkdir(parents=True, exist_ok=True)
    config = cfg.config
    if cfg.model:
        app_args["model"] = str(Path(cfg.model).resolve()) if Path(cfg.model).exists() else cfg.model
        config = str(log / "serve_config.yaml")
        Path(config).write_text(yaml.safe_dump(spec, sort_keys=False))
    with open(log / "serve.log", "w") as out:
        server = subprocess.Popen([sys.executable, "-c", SIGINT_ON, str(Path(sys.executable).with_name("serve")),
                                   "run", config], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(url, server, cfg.startup_timeout_s, log / "serve.log")
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=os.environ.get("RAYPOST_API_KEY", "none"))
        name = app_args.get("served_model_name", "raypost")
        served = next(m for m in client.models.list().data if m.id == name).model_extra.get("raypost", {})
        print(f"serving {served.get('model_path')} (registry version {served.get('version', 'none')})")
        print(f"user: {cfg.prompt}\nassistant: ", end="", flush=True)
        answer = ""
        for chunk in client.chat.completions.create(model=name,
                                                    messages=[{"role": "user", "content": cfg.prompt}],
                                                    max_tokens=cfg.max_tokens, temperature=0, stream=True):
            piece = chunk.choices[0].delta.content or "" if chunk.choices else ""
            answer += piece
            print(piece, end="", flush=True)
        print(f"\nserve_demo: streamed {len(answer)} characters from {url}; shutting down")
        (log / "answer.json").write_text(json.dumps({"prompt": cfg.prompt, "answer": answer, "model": served.get("model_path"),
                                                    "version": served.get("version")},
                                                    ensure_ascii=False, indent=2))
        return answer
    finally:
        os.killpg(server.pid, signal.SIGINT)  # serve run shuts Serve and its Ray instance down on Ctrl-C
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def _wait_healthy(url: str, server: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        failed = [line for line in log.read_text(errors="replace").splitlines() if "Error:" in line]
        if server.poll() is not None or failed:
            raise UserError(f"serve run failed ({log}):\n" + "\n".join(failed[-3:] or [log.read_text()[-2000:]]))
        try:
            if requests.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except requests.RequestException:  # not up yet
            pass
        time.sleep(0.25)
    raise UserError(f"the endpoint at {url} was not healthy after {timeout:.0f}s (log: {log})")


JOB = Job(ServeDemoConfig, run)

if __name__ == "__main__":
    JOB.main()
