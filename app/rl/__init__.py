"""Online RL (PPO, GRPO): rollout, reference, reward, critic and learner actors around app/rl/controller.py."""
