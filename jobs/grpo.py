"""GRPO with verifiable rewards (or a reward model) on the PPO actors, without a critic.

    python -m jobs.grpo jobs/configs/grpo_demo.yaml
    python -m jobs.grpo jobs/configs/grpo_tiny.yaml
"""
from app.cli import run_job
from app.rl.grpo import GRPOConfig, run

if __name__ == "__main__":
    run_job(GRPOConfig, run, default_config="grpo_demo.yaml")
