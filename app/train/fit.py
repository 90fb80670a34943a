"""The driver side every offline trainer shares: refuse a checkpoint folder of another run, start the
workers of app/train/loop.py on Ray Train, restart them from the last checkpoint when one fails, and pick
the checkpoint to export.

    best = fit(cfg, objective, datasets, out, model_path, "sft")   # app/train/sft.py, dpo.py, reward.py

A one-worker sweep trial (app/train/sweep.py) passes `report=tune.report` instead: the loop then runs in the
trial's own process (`in_process`), which Tune keeps between trials, so a trial pays no Ray Train controller,
no worker process start and no imports (~10 s each on 2 cores against ~1.5 s per step of the tiny model).
"""
from __future__ import annotations

import os
import shutil
import socket
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import ray
import torch
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from app.config import UserError
from app.train import checkpoints
from app.train.loop import Run, Session, train, train_loop_per_worker


def identity(cfg, model_path: str) -> dict:
    """What a checkpoint must share with the run that resumes it."""
    return {"model": model_path, "method": getattr(cfg, "method", "full"), "workers": cfg.scaling.num_workers,
            "zero_stage": cfg.scaling.zero_stage}


def run_dir(out: Path) -> Path:
    return (out / "ray" / "train").resolve()


def check_resume(out: Path, cfg, model_path: str) -> None:
    """Before anything starts: checkpoints under out/ must come from the same model, method and world size."""
    folder = run_dir(out)
    done = checkpoints.complete_checkpoints(folder) if folder.is_dir() else []
    if done:
        saved = checkpoints.state_of(done[-1]).get("identity", {})
        if saved and saved != identity(cfg, model_path):
            raise UserError(f"{folder} holds checkpoints of another model, method or world size ({saved}); "
                            f"use another output_dir or name")


def split(train, val, workers: int) -> dict:
    """One fixed part per worker (split once, here): the same rows reach the same rank on every run and
    restart, which exact resume needs; without enough validation rows for every worker, no validation."""
    datasets = {f"train_{i}": part for i, part in enumerate(train.split(workers, equal=True))}
    if val is not None and val.count() >= workers:
        datasets.update({f"val_{i}": part for i, part in enumerate(val.split(workers, equal=True))})
    return datasets


def fit(cfg, objective: Callable, datasets: dict, out: Path, model_path: str, job_type: str,
        extra: dict | None = None, callbacks: list | None = None, report: Callable | None = None) -> Path:
    """app/train/loop.py with `objective` (a module-level objective(cfg_json, run) factory, named to the
    workers as "module:function") on cfg.scaling.num_workers workers; returns the best complete checkpoint
    (lowest val loss, else the last). `callbacks` are Ray Train callbacks (a sweep passes Tune's report
    callback); `report` runs the loop in this process instead (one worker) and hands it every report."""
    has_val = "val_0" in datasets
    run = Run(model_path=model_path, out_dir=str(out.resolve()), has_val=has_val,
              identity=identity(cfg, model_path), job_type=job_type, extra=extra or {})
    folder = run_dir(out)
    # Plain JSON only: Ray Train's controller unpickles this config too, and a function or dataclass
    # of app.train would make it import torch, transformers and peft first (seconds on every run).
    config = {"objective": f"{objective.__module__}:{objective.__qualname__}",
              "cfg": cfg.model_dump(mode="json"), "run": asdict(run)}
    if report is not None:
        in_process(config, datasets, folder, report, cfg.scaling.cpus_per_worker, cfg.checkpoint.keep)
    else:
        ray_train(config, cfg, datasets, folder, callbacks, has_val)
    kept = checkpoints.complete_checkpoints(folder)
    if not kept:
        raise RuntimeError(f"training finished without a complete checkpoint under {folder}")
    scored = [c for c in kept if checkpoints.state_of(c).get("val_loss") is not None]
    return min(scored, key=lambda c: checkpoints.state_of(c)["val_loss"]) if scored else kept[-1]


def ray_train(config: dict, cfg, datasets: dict, folder: Path, callbacks: list | None, has_val: bool) -> None:
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                                     resources_per_worker={"CPU": cfg.scaling.cpus_per_worker}),
        datasets=datasets, dataset_config=DataConfig(datasets_to_split=[]),
        run_config=RunConfig(name="train", storage_path=str(folder.parent), callbacks=callbacks or [],
                             failure_config=FailureConfig(max_failures=cfg.scaling.max_failures),
                             checkpoint_config=CheckpointConfig(
                                 num_to_keep=cfg.checkpoint.keep,  # the best by val loss; Ray keeps the latest too
                                 checkpoint_score_attribute="val_loss" if has_val else None,
                                 checkpoint_score_order="min")))
    trainer.fit()


def in_process(config: dict, datasets: dict, folder: Path, report: Callable, cpus: float, keep: int) -> None:
    """The loop as one worker in this process: a one-process gloo group (made once per process), the
    datasets' rows, checkpoints copied to `folder` as Ray Train would store them (the `keep` best by
    validation loss and the latest), every report also handed to `report` (without the checkpoint)."""
    if not torch.distributed.is_initialized():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1",
                           "LOCAL_RANK": "0"})
        torch.distributed.init_process_group("gloo", rank=0, world_size=1)
    torch.set_num_threads(max(1, int(cpus)))
    folder.mkdir(parents=True, exist_ok=True)

    def save(metrics: dict, tmp: str | None) -> None:
        if tmp:
            shutil.rmtree(target := folder / f"checkpoint_{metrics['step']:08d}", ignore_errors=True)
            shutil.copytree(tmp, target)
            done = checkpoints.complete_checkpoints(folder)
            best = sorted(done[:-1], key=lambda c: checkpoints.state_of(c).get("val_loss") or float("inf"))
            for old in best[keep:]:
                shutil.rmtree(old)
        report(metrics)

    def latest() -> Path | None:
        done = checkpoints.complete_checkpoints(folder) if folder.is_dir() else []
        return done[-1] if done else None

    rows = {name: [dict(r) for r in ds.iter_rows()] for name, ds in datasets.items()}
    train(config, Session(lambda name: rows.get(f"{name}_0", []), save, latest))


def quiet_data() -> None:
    """Ray Data settings for the trainers: no progress bars (workers read small buffered parts) and the same
    blocks in the same order on every run (the same parts per worker)."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = True
    # Ray 2.60's parquet reader v2 starts a pool of FooterReader actors (up to 32 processes) to list a split's
    # footers: a small split read 1.0-1.7 s that way against 0.18 s through v1, measured on 2 cores.
    ctx.use_datasource_v2 = False
