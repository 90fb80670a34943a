"""DPO / IPO on preference pairs, on Ray Train workers with DeepSpeed.

    python -m jobs.dpo jobs/configs/dpo_demo.yaml
    python -m jobs.dpo jobs/configs/dpo_tiny.yaml data.path=<pairs.jsonl>
"""
from app.cli import run_job
from app.train.dpo import DPOConfig, run

if __name__ == "__main__":
    run_job(DPOConfig, run, default_config="dpo_demo.yaml")
