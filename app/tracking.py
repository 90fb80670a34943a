"""Run tracking: wandb (offline by default, see app/__init__.py) for a stage's summary figures."""
from __future__ import annotations


def log_summary(job_type: str, name: str, config: dict, metrics: dict, out_dir) -> None:
    import wandb
    run = wandb.init(project="raypost", job_type=job_type, name=name, config=config, dir=str(out_dir),
                     reinit="finish_previous")
    run.log(metrics)
    run.finish()
