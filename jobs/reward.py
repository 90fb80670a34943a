"""Train a reward model on preference pairs (pairwise ranking loss, Ray Train workers).

    python -m jobs.reward jobs/configs/reward_demo.yaml
    python -m jobs.reward jobs/configs/reward_hh.yaml
"""
from app.cli import run_job
from app.train.reward import RewardConfig, run

if __name__ == "__main__":
    run_job(RewardConfig, run, default_config="reward_demo.yaml")
