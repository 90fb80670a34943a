"""Ray Tune sweep over SFT hyperparameters (LoRA rank / alpha, learning rate, ...) with ASHA early stopping.

    python -m jobs.sweep jobs/configs/sweep_demo.yaml
    python -m jobs.sweep jobs/configs/sweep_tiny.yaml overrides='[data.path=<data stage output>]'
"""
from app.cli import run_job
from app.train.sweep import SweepConfig, run

if __name__ == "__main__":
    run_job(SweepConfig, run, default_config="sweep_demo.yaml")
