"""What the RL roles pass each other: one rollout batch with everything its update needs. A leaf module.

    exp = Experience(batch, advantages, old_logprobs=None, ref_logprobs=ref, version=3)   # app/rl/grpo.py
    learner.update.remote(exp.rows(rank, world), kl_coef)                                # app/rl/controller.py
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import torch


class PromptRow(NamedTuple):
    """One RL prompt as app.rl.controller._prompts reads it: its id, the chat messages, their rendered token
    ids (what a rollout actor samples from) and the reference answer (None without one)."""
    id: str
    messages: list[dict]
    ids: list[int]
    reference: str | None


@dataclass
class Experience:
    """One rollout batch ready for the learners. `batch` is the rollout actor's output: `sequences` (prompt +
    response token ids, left-padded prompts), `attention_mask`, `response_mask`, `prompt_width`,
    `rollout_logprobs` (the behaviour policy's log-probs of the sampled tokens). Tensors are [rows, response]."""
    batch: dict
    advantages: torch.Tensor                     # per token
    old_logprobs: torch.Tensor | None = None     # None: on-policy, the update's first forward gives them
    ref_logprobs: torch.Tensor | None = None     # GRPO: the KL term in the loss
    returns: torch.Tensor | None = None          # PPO: the critic's targets ...
    values: torch.Tensor | None = None           # ... and its values when sampled
    rewards: torch.Tensor | None = None          # per sequence, as scored
    version: int = 0                             # the policy version that sampled it

    def rows(self, rank: int, world: int) -> "Experience":
        """Rows rank, rank + world, ...: a learner rank's share of every tensor."""
        part = lambda x: x[rank::world] if torch.is_tensor(x) else x  # noqa: E731
        batch = {k: part(v) for k, v in self.batch.items()}
        if world > 1:  # a rank's rows no longer come in whole groups
            batch["group_size"] = 1
        return replace(self, batch=batch,
                       **{k: part(getattr(self, k)) for k in ("advantages", "old_logprobs", "ref_logprobs",
                                                              "returns", "values", "rewards")})
