"""Actor-based PPO on a policy with a reward model (or a reward function).

    python -m jobs.ppo jobs/configs/ppo_demo.yaml
    python -m jobs.ppo jobs/configs/ppo_tiny.yaml
"""
from app.cli import Job
from app.rl.config import PPOConfig

JOB = Job(PPOConfig, "app.rl.ppo:run", "ppo_demo.yaml")

if __name__ == "__main__":
    JOB.main()
