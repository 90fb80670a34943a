"""GRPO with verifiable rewards (or a reward model) on the PPO actors, without a critic.

    python -m jobs.grpo jobs/configs/grpo_demo.yaml
    python -m jobs.grpo jobs/configs/grpo_tiny.yaml
"""
from app.cli import Job
from app.rl.config import GRPOConfig

JOB = Job(GRPOConfig, "app.rl.grpo:run", "grpo_demo.yaml")

if __name__ == "__main__":
    JOB.main()
