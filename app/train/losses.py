"""The math of RLHF, pure torch (no ray, no deepspeed): reward-model loss, the PPO pieces, GRPO's group
advantages and KL estimate, the DPO / IPO losses.

Shapes: per-token tensors are [batch, T] over the response tokens, `mask` 1 on real response tokens.
Conventions follow OpenRLHF / the InstructGPT recipe in seed 000: per-token KL penalty against the
reference policy with the sequence reward added on the last response token, GAE, whitened advantages,
clipped surrogate (eps 0.2), clipped value loss (coefficient 0.5 applied by the caller), entropy bonus.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | float = 0.0) -> torch.Tensor:
    """-log sigmoid(r_chosen - r_rejected - margin), averaged."""
    return -F.logsigmoid(chosen - rejected - margin).mean()


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the masked entries (mean kept when shift_mean is False)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return (out if shift_mean else out + mean) * mask


def token_rewards(score: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
                  kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token rewards, per-token KL): -kl_coef * (logp - ref_logp) on every response token, plus the
    sequence score on its last token."""
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = (mask.cumsum(1) == mask.sum(1, keepdim=True)) & mask.bool()
    rewards = rewards + last.to(rewards.dtype) * score[:, None]
    return rewards, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) by generalized advantage estimation over the masked response tokens."""
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    T = rewards.shape[1]
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        running = running * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip: float = 0.2, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(clipped surrogate loss, fraction of tokens where the clip was active); `weights` per token
    (tis_weights) multiply each token's term."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped, clipped = ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages
    terms = -torch.min(unclipped, clipped)
    loss = masked_mean(terms if weights is None else terms * weights, mask)
    return loss, masked_mean((clipped < unclipped).to(logprobs.dtype), mask)


def tis_weights(old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, mask: torch.Tensor,
               cap: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated importance sampling (Yao et al. 2025, "Your efficient RL framework secretly brings you
    off-policy RL training"; OpenRLHF's and veRL's TIS): per-token weights min(pi_old / pi_rollout, cap) that
    correct for sampling from a cheaper copy of the policy (INT8, another engine), and the share of response
    tokens where the cap bit. Exactly 1 where the two log-probs agree."""
    ratio = torch.exp(old_logprobs.detach() - rollout_logprobs)
    return ratio.clamp(max=cap) * mask, masked_mean((ratio > cap).to(ratio.dtype), mask)


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float = 0.2) -> torch.Tensor:
    """max((v - R)^2, (v_clipped - R)^2), v_clipped within `clip` of the rollout's value; the caller weighs it
    by the value coefficient (PPO's `value_coef`, seed 000's c1 = 0.5)."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)


def entropy(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean per-token entropy of the policy's distributions (logits [B, T, V])."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return masked_mean(-(logp.exp() * logp).sum(-1), mask)


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """GRPO: each sample's reward standardised within its group of `group_size` samples of one prompt
    (rewards laid out group by group); a group whose samples all score the same gets 0."""
    groups = rewards.view(-1, group_size)
    mean, std = groups.mean(1, keepdim=True), groups.std(1, keepdim=True)
    return ((groups - mean) / (std + eps)).view(-1)


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token KL(policy || reference) estimate exp(d) - d - 1 with d = ref - logp (non-negative,
    unbiased), masked mean: the KL term GRPO puts in its loss."""
    d = ref_logprobs - logprobs
    return masked_mean(torch.exp(d) - d - 1, mask)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1, variant: str = "sigmoid") -> tuple[torch.Tensor, ...]:
    """(loss, chosen rewards, rejected rewards) from summed response log-probs [B]. Implicit reward:
    beta * (policy - reference). sigmoid: -log sigma(beta * margin) (Rafailov et al.); ipo:
    (margin - 1 / (2 beta))^2 (Azar et al.), margin = the log-ratio difference."""
    chosen, rejected = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    margin = chosen - rejected
    if variant == "sigmoid":
        loss = -F.logsigmoid(beta * margin).mean()
    elif variant == "ipo":
        loss = ((margin - 1 / (2 * beta)) ** 2).mean()
    else:
        raise ValueError(f"unknown DPO loss variant {variant!r} (sigmoid, ipo)")
    return loss, beta * chosen.detach(), beta * rejected.detach()


def gather_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) for each position: logits [B, T, V], tokens [B, T] -> [B, T]."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens[..., None]).squeeze(-1)


class KLController:
    """Fixed (target None) or adaptive KL coefficient (Ziegler et al.): the proportional error, clipped to
    ±0.2, moves the coefficient by error * n_steps / horizon."""

    def __init__(self, init: float = 0.05, target: float | None = None, horizon: int = 10000):
        self.value, self.target, self.horizon = init, target, horizon

    def update(self, kl: float, n_steps: int) -> float:
        if self.target is not None:
            error = max(-0.2, min(0.2, kl / self.target - 1))
            self.value *= 1 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value, self.target, self.horizon = state["value"], state["target"], state["horizon"]


def sequence_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """(k1, k3): per-sequence summed KL(policy || reference) estimates over the response tokens, averaged over
    sequences. k1 = sum(logp - ref) is what PPO's penalty and the KL controller use; it is unbiased but goes
    negative on a batch, so the reported KL is k3 = sum(exp(d) - d - 1), d = ref - logp, never negative."""
    d = (ref_logprobs - logprobs) * mask
    return float((-d).sum(1).mean()), max(0.0, float(((torch.exp(d) - d - 1) * mask).sum(1).mean()))  # float noise


def approx_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean per-sequence summed KL estimate (k1), the figure the KL controller tracks."""
    return float(((logprobs - ref_logprobs) * mask).sum(1).mean())
