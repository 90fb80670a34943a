"""DPO / IPO on preference pairs, on Ray Train workers with DeepSpeed.

    python -m jobs.dpo jobs/configs/dpo_demo.yaml
    python -m jobs.dpo jobs/configs/dpo_tiny.yaml data.path=<pairs.jsonl>
"""
from app.cli import Job
from app.train.config import DPOConfig

JOB = Job(DPOConfig, "app.train.dpo:run", "dpo_demo.yaml")

if __name__ == "__main__":
    JOB.main()
