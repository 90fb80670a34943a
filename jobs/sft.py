"""Supervised fine-tuning on Ray Train + DeepSpeed (see app/train/sft.py).

    python -m jobs.sft jobs/configs/sft_demo.yaml
    python -m jobs.sft jobs/configs/sft_demo.yaml method=full scaling.zero_stage=3 name=full
    ray job submit --working-dir . -- python -m jobs.sft jobs/configs/sft_demo.yaml
"""
from app.cli import Job
from app.train.config import SFTConfig

JOB = Job(SFTConfig, "app.train.sft:run", "sft_demo.yaml")

if __name__ == "__main__":
    JOB.main()
