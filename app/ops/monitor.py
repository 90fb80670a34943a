"""jobs.monitor: watch the served version's live signals; roll back and redeploy when they degrade.

    serve run serve_configs/demo.yaml &                                # with logging.requests on, for feedback
    python -m jobs.monitor serve_config=serve_configs/demo.yaml       # joins that Ray (RAY_ADDRESS or local)

Every `interval_s` it scrapes Ray's /metrics (prometheus_client's parser) and reads the request log's
feedback (app/serve/requestlog.py), and over the last `window_s` computes for the watched application:
  error_rate     5xx and 503 answers of all finished requests (4xx and 429 are the client's doing)
  safety_rate    answers the output safety filter refused or redacted, of the answered ones
  feedback       the mean feedback score (-1..1) on answers of the version being served
When one crosses its threshold with enough behind it (`min_requests`, `min_feedback`), the registry rolls
back (app/registry.py records the event and why) and the application is deployed again: its model is
`registry:latest-promoted`, so it now loads the previous promoted version. Each rollback is a line of
runs/monitor-<name>/events.jsonl with the signals, the versions and the seconds the redeploy took.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import yaml
from pydantic import Field

from app.config import JobConfig, UserError
from app.serve.requestlog import read_jsonl


class MonitorConfig(JobConfig):
    serve_config: str = "serve_configs/demo.yaml"  # the application watched (its first) and redeployed
    name: str = "monitor"
    metrics_url: str | None = None    # Ray's /metrics; default: this Ray node's metrics export port
    window_s: float = Field(300, gt=0)
    interval_s: float = Field(30, gt=0)
    max_error_rate: float = Field(0.05, ge=0, le=1)
    max_safety_rate: float = Field(0.2, ge=0, le=1)
    min_mean_feedback: float = Field(-0.2, ge=-1, le=1)
    min_requests: int = Field(20, ge=1)   # finished requests in the window before a rate counts
    min_feedback: int = Field(5, ge=1)    # feedback rows in the window before their mean counts
    max_checks: int | None = None         # stop after this many checks (None: run until stopped)


def run(cfg: MonitorConfig) -> list[dict]:
    from app.cluster import init_ray
    app = application(cfg.serve_config)
    init_ray()
    out = cfg.out("monitor")
    out.mkdir(parents=True, exist_ok=True)
    url = cfg.metrics_url or _local_metrics_url()
    snapshots, events, checks = [(time.time(), counts(scrape(url), app["name"]))], [], 0
    while cfg.max_checks is None or checks < cfg.max_checks:
        time.sleep(cfg.interval_s)
        checks += 1
        now = time.time()
        snapshots.append((now, counts(scrape(url), app["name"])))
        snapshots = [s for s in snapshots if s[0] >= now - cfg.window_s] or snapshots[-1:]
        served = _registry(app).get("latest-promoted")
        signals = window(snapshots[0][1], snapshots[-1][1])
        signals["feedback"], signals["feedback_n"] = mean_feedback(app, served, now - cfg.window_s)
        reasons = breaches(signals, cfg)
        print(json.dumps({"time": round(now), "version": served and served["id"], **signals, "breaches": reasons}))
        if reasons and served is not None:
            events.append(roll_back(cfg, app, served, signals, reasons))
            with (out / "events.jsonl").open("a") as f:
                f.write(json.dumps(events[-1]) + "\n")
            snapshots = [(time.time(), counts(scrape(url), app["name"]))]  # the new version starts afresh
    return events


def application(serve_config: str) -> dict:
    path = Path(serve_config)
    if not path.is_file():
        raise UserError(f"serve_config {serve_config} not found")
    app = yaml.safe_load(path.read_text())["applications"][0]
    if not str(app.get("args", {}).get("model", "")).startswith("registry:"):
        raise UserError(f"{serve_config}: the watched application must serve registry:latest-promoted "
                        f"(a rollback changes what that resolves to)")
    return {"name": app.get("name", "default"), "route_prefix": app.get("route_prefix", "/"), "args": app["args"]}


def scrape(url: str):
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(url, timeout=10) as r:
        return list(text_string_to_metric_families(r.read().decode()))


def counts(families, app_name: str) -> dict:
    """Totals so far for one application: finished requests, server errors, safety-filter hits."""
    total = {"requests": 0.0, "errors": 0.0, "answered": 0.0, "filtered": 0.0}
    for family in families:
        for sample in family.samples:
            if sample.labels.get("application") != app_name or not sample.name.endswith("_total"):
                continue
            if sample.name == "ray_raypost_requests_total":
                code = sample.labels.get("code", "")
                total["requests"] += sample.value
                total["errors"] += sample.value if code.startswith("5") else 0
                total["answered"] += sample.value if code == "200" else 0
            elif sample.name == "ray_raypost_safety_filtered_total":
                total["filtered"] += sample.value
    return total


def window(before: dict, after: dict) -> dict:
    """The rates over the window between two count snapshots (pure)."""
    d = {k: max(0.0, after[k] - before[k]) for k in after}
    return {"requests": int(d["requests"]), "error_rate": d["errors"] / d["requests"] if d["requests"] else 0.0,
            "safety_rate": d["filtered"] / d["answered"] if d["answered"] else 0.0}


def mean_feedback(app: dict, served: dict | None, since: float) -> tuple[float | None, int]:
    """(mean score, count) of the feedback given since `since` on answers of the served version."""
    logging = app["args"].get("logging") or {}
    if not logging.get("requests") or served is None:
        return None, 0
    folder = logging.get("path", "runs/request-log")
    version = {r["id"] for r in read_jsonl(folder, "requests-*.jsonl") if (r.get("version") or {}).get("id") ==
               served["id"]}
    scores = [f["score"] for f in read_jsonl(folder, "feedback-*.jsonl") if f["id"] in version and f["time"] >= since]
    return (sum(scores) / len(scores) if scores else None), len(scores)


def breaches(s: dict, cfg: MonitorConfig) -> list[str]:
    """Which thresholds the window's signals cross (pure)."""
    out = []
    if s["requests"] >= cfg.min_requests and s["error_rate"] > cfg.max_error_rate:
        out.append(f"error rate {s['error_rate']:.3f} > {cfg.max_error_rate} over {s['requests']} requests")
    if s["requests"] >= cfg.min_requests and s["safety_rate"] > cfg.max_safety_rate:
        out.append(f"safety-filter rate {s['safety_rate']:.3f} > {cfg.max_safety_rate}")
    if s["feedback_n"] >= cfg.min_feedback and s["feedback"] < cfg.min_mean_feedback:
        out.append(f"mean feedback {s['feedback']:.2f} < {cfg.min_mean_feedback} over {s['feedback_n']} ratings")
    return out


def roll_back(cfg: MonitorConfig, app: dict, served: dict, signals: dict, reasons: list[str]) -> dict:
    start = time.monotonic()
    now = _registry(app).rollback("monitor: " + "; ".join(reasons))
    deploy(app)
    event = {"time": time.time(), "from_version": served["id"], "to_version": now and now["id"], "reasons": reasons,
             "signals": signals, "redeploy_s": round(time.monotonic() - start, 1)}
    print(f"monitor: rolled back v{served['id']} -> v{event['to_version']} ({'; '.join(reasons)}), "
          f"redeployed in {event['redeploy_s']} s")
    return event


def deploy(app: dict) -> None:
    """(Re)deploy the application on the running Serve instance: what `serve deploy` of its config does."""
    from ray import serve

    from app.serve.ingress import build_app
    from app.serve.config import ServeArgs
    serve.run(build_app(ServeArgs.model_validate(app["args"])), name=app["name"], route_prefix=app["route_prefix"])


def _registry(app: dict):
    from app.registry import Registry
    from app.serve.config import ServeArgs
    return Registry(ServeArgs.model_validate(app["args"]).registry)


def _local_metrics_url() -> str:
    import ray
    node = next(n for n in ray.nodes() if n["Alive"])
    return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
