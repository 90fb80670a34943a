"""Supervised fine-tuning on Ray Train + DeepSpeed (see app/train/sft.py).

    python -m jobs.sft jobs/configs/sft_demo.yaml
    python -m jobs.sft jobs/configs/sft_demo.yaml method=full scaling.zero_stage=3 name=full
    ray job submit --working-dir . -- python -m jobs.sft jobs/configs/sft_demo.yaml
"""
from app.cli import run_job
from app.train.config import SFTConfig
from app.train.sft import run

if __name__ == "__main__":
    run_job(SFTConfig, run, default_config="sft_demo.yaml")
