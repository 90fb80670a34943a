"""PPO's step on the shared RL controller (app.rl.controller): per-token KL rewards against the reference,
GAE over the critic's values, whitened advantages, K epochs of clipped policy and value updates with an
entropy bonus, each rollout batch split across the DeepSpeed learner ranks.

    python -m jobs.ppo jobs/configs/ppo_demo.yaml
    python -m jobs.ppo jobs/configs/ppo_tiny.yaml            # tests: tiny policy, a function reward
"""
from __future__ import annotations

import torch

from app.train import losses
from app.rl.config import PPOConfig
from app.rl.controller import Roles, drop_unsafe, score, step_figures, update
from app.rl.controller import run as run_rl
from app.rl.experience import Experience


def ppo_step(cfg: PPOConfig, roles: Roles, batches: list[dict], prompts: list, references: list, tokenizer,
             kl_ctl: losses.KLController) -> dict:
    """Score the sampled batches, turn scores into per-token KL rewards, GAE advantages (whitened) and
    returns, run K epochs of policy and value updates; returns the step's figures."""
    # Synchronous HF rollouts sample with the learner's own weights, so their log-probs are the old ones (the
    # learner checks the gap in its first update, ~3e-6); vLLM's kernels differ and `overlap` samples one
    # version behind, so those recompute them on the learner.
    recompute = cfg.engine() == "vllm" or cfg.overlap
    scored = score(cfg, roles, batches, prompts, references, tokenizer, old_pass=recompute)
    trained = drop_unsafe(cfg, batches, scored["rewards"]["unsafe"])
    experiences, start, kls = [], 0, []
    for b, ref, old, values in zip(trained, scored["ref"], scored["old"], scored["values"]):
        rows, mask = len(b["sequences"]), b["response_mask"]
        old = b["rollout_logprobs"] if old is None else old
        sequence_scores = torch.tensor(scored["rewards"]["reward"][start:start + rows])
        start += rows
        rewards, _ = losses.token_rewards(sequence_scores, old, ref, mask, kl_ctl.value)
        adv, returns = losses.gae(rewards, values, mask, cfg.gamma, cfg.lam)
        experiences.append(Experience(b, losses.whiten(adv, mask), old_logprobs=old, returns=returns, values=values,
                                      rewards=sequence_scores, version=b["version"]))
        kls.append(losses.sequence_kl(old, ref, mask))
    updated = update(cfg, roles, experiences)
    k1, k3 = (sum(k[i] for k in kls) / len(kls) for i in (0, 1))
    kl_ctl.update(k1, start)
    return {**step_figures(batches, scored, updated), "kl": k3, "kl_k1": k1, "kl_coef": kl_ctl.value}


def run(cfg: PPOConfig) -> dict:
    return run_rl(cfg, ppo_step)
