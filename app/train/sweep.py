"""Hyperparameter sweeps: a Ray Tune `Tuner` whose trials are SFT runs (Ray Train inside Tune, reporting
through Tune's TuneReportCallback), over a space written with the SFT config's own dotted keys.

    python -m jobs.sweep jobs/configs/sweep_demo.yaml
    python -m jobs.sweep jobs/configs/sweep_demo.yaml       # again after an interruption: resumes the sweep

    space:
      lora.r: [8, 16, 32, 64]                 # a list: grid axis (search: grid) or a choice
      optim.lr: loguniform(1e-5, 1e-3)        # loguniform / uniform / randint(low, high)

Every key is checked against the SFT config before any trial starts. Searchers: grid, random, optuna
(TPE); scheduler: ASHA on the reported `metric` (validation loss by default) over optimizer steps, or none.
Failed trials are recorded with their error; the sweep goes on. Outputs under runs/sweep-<name>/:
results.csv (one row per trial), best.yaml (the best trial's complete SFT config: `python -m jobs.sft
runs/sweep-<name>/best.yaml`), sweep.png (metric vs learning rate by LoRA rank; trial curves), tune/ (the
Tune experiment, for `Tuner.restore`) and trials/<id>/ (each trial's SFT outputs).

What trials share: the data is tokenized once by the sweep (unless the space varies a data, model or seed key)
and every trial gets the same materialized Ray Data datasets; a one-worker trial trains in its own Tune
actor, which Tune reuses for the next trial (app/train/fit.py `in_process`): no Ray Train start, no process
start, no imports per trial. Trials of several workers run Ray Train inside Tune.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler

from app.cluster import init_ray
from app.config import ConfigError, explain, load_config, read_yaml, set_dotted
from app.runinfo import sha256_file, write_manifest
from app.train import sft
from app.train.fit import quiet_data
from app.train.config import SFTConfig, SweepConfig

DISTRIBUTION = re.compile(r"^\s*(loguniform|uniform|randint)\(\s*([^,]+?)\s*,\s*([^)]+?)\s*\)\s*$")


def parse_space(space: dict[str, Any], search: str) -> dict:
    """Tune search space from our notation; ConfigError names a value it cannot read."""
    from ray import tune
    out = {}
    for key, value in space.items():
        if isinstance(value, list):
            if not value:
                raise ConfigError(f"space.{key}: an empty list")
            out[key] = tune.grid_search(value) if search == "grid" else tune.choice(value)
            continue
        match = DISTRIBUTION.match(str(value))
        if not match:
            raise ConfigError(f"space.{key}: {value!r} is neither a list nor loguniform/uniform/randint(low, high)")
        kind, low, high = match.group(1), float(match.group(2)), float(match.group(3))
        out[key] = {"loguniform": tune.loguniform, "uniform": tune.uniform}[kind](low, high) if kind != "randint" \
            else tune.randint(int(low), int(high))
    return out


def _example(value: Any) -> Any:
    if isinstance(value, list):
        return value[0]
    match = DISTRIBUTION.match(str(value))
    return float(match.group(2)) if match and match.group(1) != "randint" else int(match.group(2)) if match else value


def trial_config(cfg: SweepConfig, params: dict, output_dir: str) -> dict:
    """The complete SFT config dict of one trial: base + overrides + the trial's parameters."""
    data = load_config(SFTConfig, cfg.base, cfg.overrides).model_dump(mode="json")  # every key, defaults too
    for key, value in params.items():
        set_dotted(data, key, value)
    data["output_dir"] = output_dir
    return SFTConfig.model_validate(data).model_dump(mode="json")


def check(cfg: SweepConfig) -> None:
    """Fail at start: the base config, every override and every space key must make a valid SFT config."""
    if not Path(cfg.base).is_file():
        raise ConfigError(f"base: SFT config {cfg.base} not found")
    known = set(_dotted_keys(SFTConfig.model_validate(read_yaml(cfg.base)).model_dump()))
    for key in cfg.space:
        if key not in known:
            raise ConfigError(f"space key {key!r} is not an SFT config key (e.g. lora.r, optim.lr, lora.alpha)")
    parse_space(cfg.space, cfg.search)
    try:
        example = trial_config(cfg, {k: _example(v) for k, v in cfg.space.items()}, "check")
    except ValidationError as exc:
        raise ConfigError(f"the search space does not make a valid SFT config: {explain(SFTConfig, exc)}") from None
    steps = example["train"]["max_steps"]
    if cfg.scheduler.type == "asha" and steps and cfg.scheduler.grace_period > steps:
        raise ConfigError(f"scheduler.grace_period ({cfg.scheduler.grace_period}) exceeds the trials' "
                          f"train.max_steps ({steps})")


def _dotted_keys(data: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in data.items():
        keys.append(prefix + k)
        if isinstance(v, dict):
            keys += _dotted_keys(v, prefix + k + ".")
    return keys


class ResumableASHA(ASHAScheduler):
    """ASHA whose rungs survive `Tuner.restore`. Tune does not save a scheduler's state (its controller leaves
    `_scheduler_alg` out of the experiment checkpoint), so a resumed sweep's ASHA would start with empty rungs
    and let a weak new trial run to the end. Here each restored trial's reported results (its result.json)
    are replayed into the rungs when Tune adds it back."""

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        super().on_trial_add(tune_controller, trial)
        if trial.status == Trial.ERROR or trial.storage.trial_dir_name is None:
            return  # a failed trial, or a new one (no folder yet)
        results = Path(trial.storage.trial_fs_path) / "result.json"
        if not results.is_file():
            return  # restored before it reported anything
        bracket = self._trial_info[trial.trial_id]
        for line in results.read_text().splitlines():
            result = json.loads(line)
            if self._time_attr in result and self._metric in result:
                bracket.on_result(trial, result[self._time_attr], self._metric_op * result[self._metric])
        if trial.status == Trial.TERMINATED:
            del self._trial_info[trial.trial_id]  # as on_trial_complete leaves it


PER_TRIAL_DATA = ("data", "model", "init_from", "seed", "trust_remote_code")  # space keys that change the tokens


def train_trial(params: dict, cfg_json: str, root: str, trials_dir: str, data: tuple | None,
                in_process: bool) -> None:
    """One Tune trial: an SFT run whose reports reach Tune (and so ASHA); `data` is the sweep's tokenized
    (train, val, counts), None when each trial tokenizes its own."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback
    os.chdir(root)  # relative paths in the configs are the project's
    cfg = SweepConfig.model_validate_json(cfg_json)
    trial_id = tune.get_context().get_trial_id()
    out = Path(trials_dir) / trial_id
    out.mkdir(parents=True, exist_ok=True)
    sft_cfg = SFTConfig.model_validate(trial_config(cfg, params, str(out)))
    if in_process:
        sft.run(sft_cfg, report=tune.report, data=data)
    else:
        sft.run(sft_cfg, callbacks=[TuneReportCallback()], data=data)


def shared_data(cfg: SweepConfig, base: SFTConfig) -> tuple | None:
    """The trials' tokenized data (of `base`, the trials' config before their parameters), made once here;
    None when the space varies what the tokens depend on."""
    if any(key.split(".")[0] in PER_TRIAL_DATA for key in cfg.space):
        return None
    quiet_data()
    return sft.tokenize_splits(base, sft.check_model(base))


def run(cfg: SweepConfig) -> dict:
    from ray import tune
    check(cfg)
    out = cfg.out("sweep").resolve()
    out.mkdir(parents=True, exist_ok=True)
    init_ray()
    base = SFTConfig.model_validate(trial_config(cfg, {}, "x"))  # every trial's config before its parameters
    scaling = base.scaling
    in_process = scaling.num_workers == 1 and "scaling.num_workers" not in cfg.space and not scaling.use_gpu
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, cfg_json=cfg.model_dump_json(), root=str(Path.cwd()),
                             trials_dir=str(out / "trials"), data=shared_data(cfg, base), in_process=in_process),
        {"CPU": max(cfg.trial_cpus, scaling.cpus_per_worker) if in_process else cfg.trial_cpus})
    tune_dir = out / "tune"
    if cfg.resume and tune.Tuner.can_restore(str(tune_dir / "sweep")):
        print(f"sweep: resuming {tune_dir / 'sweep'} (finished trials are kept)", flush=True)
        tuner = tune.Tuner.restore(str(tune_dir / "sweep"), trainable=trainable, resume_errored=False,
                                   restart_errored=False)
    else:
        # stop_last_trials=False: a trial that reaches max_t still exports its final/ model
        max_steps = base.train.max_steps or 10 ** 6
        scheduler = ResumableASHA(time_attr="step", max_t=max_steps, grace_period=cfg.scheduler.grace_period,
                                  reduction_factor=cfg.scheduler.reduction_factor,
                                  stop_last_trials=False) \
            if cfg.scheduler.type == "asha" else None  # fifo
        search_alg = None
        if cfg.search == "optuna":
            from ray.tune.search.optuna import OptunaSearch
            search_alg = OptunaSearch(seed=cfg.seed)
        tuner = tune.Tuner(
            trainable, param_space=parse_space(cfg.space, cfg.search),
            tune_config=tune.TuneConfig(metric=cfg.metric, mode=cfg.mode, num_samples=cfg.num_samples,
                                        scheduler=scheduler, search_alg=search_alg,
                                        max_concurrent_trials=cfg.max_concurrent_trials,
                                        # Ray Train trials need a fresh actor each: Ray Train's cleaner frees a
                                        # stopped trial's worker placement group only when its actor dies
                                        # (else the next hangs).
                                        reuse_actors=in_process),
            run_config=tune.RunConfig(name="sweep", storage_path=str(tune_dir),
                                      failure_config=tune.FailureConfig(max_failures=0)))
    grid = tuner.fit()
    rows = summarize(cfg, grid, out, base.train.max_steps)
    ok = [r for r in rows if r["best_metric"] is not None]
    if not ok:
        raise RuntimeError(f"every trial failed; see {out / 'results.csv'}")
    best = min(ok, key=lambda r: r["best_metric"] * (1 if cfg.mode == "min" else -1))
    best_cfg = trial_config(cfg, best["params"], f"runs/sft-{cfg.name}-best")
    best_cfg["name"] = f"{cfg.name}-best"
    shown = out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out
    (out / "best.yaml").write_text(f"# python -m jobs.sft {shown}/best.yaml\n"
                                   f"# The best trial of sweep {cfg.name!r} ({best['trial_id']}, {cfg.metric} "
                                   f"{best['best_metric']:.4f}) as a complete SFT config.\n"
                                   + yaml.safe_dump(best_cfg, sort_keys=False, allow_unicode=True))
    plot(rows, out / "sweep.png", cfg.metric)
    summary = {"trials": len(rows), "failed": sum(r["status"] == "ERROR" for r in rows),
               "stopped_early": sum(r["stopped_early"] for r in rows), "best": {k: best[k] for k in (
                   "trial_id", "params", "best_metric", "steps")}, "best_yaml": str(out / "best.yaml")}
    write_manifest(out, cfg.model_dump(mode="json"), [], base_sha256=sha256_file(cfg.base), summary=summary)
    print(json.dumps(summary))
    return summary


def summarize(cfg: SweepConfig, grid, out: Path, max_steps: int | None) -> list[dict]:
    """results.csv: params, best metric, steps, time, status (and error) per trial."""
    rows = []
    for result in grid:
        history = result.metrics_dataframe
        values = history[cfg.metric].dropna().tolist() if history is not None and cfg.metric in history else []
        steps = int(history["step"].max()) if history is not None and "step" in history else 0
        pick = min if cfg.mode == "min" else max
        rows.append({
            "trial_id": (result.metrics or {}).get("trial_id") or Path(result.path).name,
            "params": {k: result.config[k] for k in cfg.space},
            "best_metric": pick(values) if values else None, "steps": steps,
            "time_s": round(float((result.metrics or {}).get("time_total_s", 0.0)), 1),
            "status": "ERROR" if result.error else "OK",
            "stopped_early": bool(not result.error and max_steps and steps < max_steps),
            "error": str(result.error).splitlines()[0][:300] if result.error else "",
            "curve": [(int(s), float(v)) for s, v in zip(history["step"], history[cfg.metric])
                      if not math.isnan(v)] if values else []})
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial_id", *cfg.space, f"best_{cfg.metric}", "steps", "time_s", "status",
                         "stopped_early", "error"])
        for r in rows:
            writer.writerow([r["trial_id"], *r["params"].values(), r["best_metric"], r["steps"], r["time_s"],
                             r["status"], r["stopped_early"], r["error"]])
    return rows


def plot(rows: list[dict], path: Path, metric: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    ok = [r for r in rows if r["best_metric"] is not None]
    if ok and "optim.lr" in ok[0]["params"]:
        ranks = sorted({r["params"].get("lora.r") for r in ok}, key=str)
        for rank in ranks:
            pts = [(r["params"]["optim.lr"], r["best_metric"]) for r in ok if r["params"].get("lora.r") == rank]
            ax[0].scatter(*zip(*pts), label=f"r={rank}")
        ax[0].set(xscale="log", xlabel="learning rate", ylabel=f"best {metric}")
        ax[0].legend()
    for r in ok:
        if r["curve"]:
            ax[1].plot(*zip(*r["curve"]), marker=".", alpha=0.7)
    ax[1].set(xlabel="optimizer step", ylabel=metric, title="trials (short lines: stopped early)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
