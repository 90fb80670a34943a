"""Actor-based PPO on a policy with a reward model (or a reward function).

    python -m jobs.ppo jobs/configs/ppo_demo.yaml
    python -m jobs.ppo jobs/configs/ppo_tiny.yaml
"""
from app.cli import run_job
from app.rl.ppo import PPOConfig, run

if __name__ == "__main__":
    run_job(PPOConfig, run, default_config="ppo_demo.yaml")
