"""GRPO on the shared RL controller (app.rl.controller): `group_size` samples per prompt, each sample's
reward standardised within its group (no critic), the clipped objective with kl * KL(policy || reference)
in the loss, the same versioned weight sync, restarts, checkpoints and logs as PPO.

    python -m jobs.grpo jobs/configs/grpo_demo.yaml      # demo arithmetic, verifiable reward
    python -m jobs.grpo jobs/configs/grpo_gsm8k.yaml     # ../shared/data/gsm8k
"""
from __future__ import annotations

import torch

from app.train import losses
from app.rl.config import GRPOConfig
from app.rl.controller import Roles, drop_unsafe, score, step_figures, update
from app.rl.controller import run as run_rl
from app.rl.experience import Experience


def grpo_step(cfg: GRPOConfig, roles: Roles, batches: list[dict], prompts: list, references: list, tokenizer,
              kl_ctl: losses.KLController) -> dict:
    """Score the groups, standardise rewards within each group, run the clipped updates with the KL term;
    returns the step's figures."""
    # One on-policy pass (epochs 1, no overlap): the old log-probs are the update's own first forward, as in
    # DeepSeekMath's GRPO with mu = 1, so no separate learner pass is needed.
    on_policy = cfg.epochs == 1 and not cfg.overlap
    scored = score(cfg, roles, batches, prompts, references, tokenizer, old_pass=not on_policy)
    trained = drop_unsafe(cfg, batches, scored["rewards"]["unsafe"])
    rewards = torch.tensor(scored["rewards"]["reward"])
    advantages = losses.group_advantages(rewards, cfg.group_size)  # a batch holds whole groups, in order
    experiences, start = [], 0
    for b, ref, old in zip(trained, scored["ref"], scored["old"]):
        rows, mask = len(b["sequences"]), b["response_mask"]
        experiences.append(Experience(b, advantages[start:start + rows, None] * mask, old_logprobs=old,
                                      ref_logprobs=ref, rewards=rewards[start:start + rows], version=b["version"]))
        start += rows
    updated = update(cfg, roles, experiences, kl_ctl.value)  # with the learner's KL estimates (kl, kl_k1)
    kl_ctl.update(updated["kl_k1"], start)
    groups = rewards.view(-1, cfg.group_size)
    return {**step_figures(batches, scored, updated), "kl_coef": kl_ctl.value,
            "groups_without_signal": float((groups.std(1) == 0).float().mean())}


def run(cfg: GRPOConfig) -> dict:
    return run_rl(cfg, grpo_step)
