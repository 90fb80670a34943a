"""RLHF: reward model (pairwise ranking loss) and the pure PPO math. See app/rl/losses.py."""
