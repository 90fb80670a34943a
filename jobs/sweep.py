"""Ray Tune sweep over SFT hyperparameters (LoRA rank / alpha, learning rate, ...) with ASHA early stopping.

    python -m jobs.sweep jobs/configs/sweep_demo.yaml
    python -m jobs.sweep jobs/configs/sweep_tiny.yaml overrides='[data.path=<data stage output>]'
"""
from app.cli import Job
from app.train.config import SweepConfig

JOB = Job(SweepConfig, "app.train.sweep:run", "sweep_demo.yaml")

if __name__ == "__main__":
    JOB.main()
