"""Train a reward model on preference pairs (pairwise ranking loss, Ray Train workers).

    python -m jobs.reward jobs/configs/reward_demo.yaml
    python -m jobs.reward jobs/configs/reward_hh.yaml
"""
from app.cli import Job
from app.train.config import RewardConfig

JOB = Job(RewardConfig, "app.train.reward:run", "reward_demo.yaml")

if __name__ == "__main__":
    JOB.main()
