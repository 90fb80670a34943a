"""On-policy distillation on the shared RL controller (app.rl.controller): the student (the policy) samples
answers on the rollout actors, the teacher, loaded in the reference role, scores every sampled token, and
each token's advantage is minus the reverse KL estimate log pi_student(token) - log pi_teacher(token)
(Agarwal et al. 2024, GKD; Thinking Machines' "On-policy distillation", 2025: discount 0, one update per
batch). The student learns where it actually goes, which offline distillation on fixed text (jobs.sft's
`distill:` section) does not see. Same versioned weight sync, checkpoints, resume and held-out measurement
as PPO and GRPO; a reward, when configured, is only measured.

    python -m jobs.distill jobs/configs/distill_demo.yaml      # the pruned demo student, the SFT teacher
    python -m jobs.distill jobs/configs/distill_tiny.yaml      # tests
"""
from __future__ import annotations

import torch

from app.config import UserError
from app.models import load_tokenizer
from app.train import losses
from app.rl.config import OnPolicyDistillConfig
from app.rl.controller import Roles, score, step_figures, update
from app.rl.controller import run as run_rl
from app.rl.experience import Experience


def reverse_kl_advantages(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token advantages -(log pi_student - log pi_teacher) of the sampled tokens, 0 past the response."""
    return (teacher - student) * mask


def distill_step(cfg: OnPolicyDistillConfig, roles: Roles, batches: list[dict], prompts: list, references: list,
                 tokenizer, kl_ctl: losses.KLController) -> dict:
    """Score the student's samples under the teacher, one clipped policy-gradient update with the per-token
    reverse-KL advantages; returns the step's figures (`kl`: KL(student || teacher) per sequence, k3)."""
    on_policy = cfg.epochs == 1 and not cfg.overlap
    scored = score(cfg, roles, batches, prompts, references, tokenizer, old_pass=not on_policy)
    experiences, kls, start = [], [], 0
    for b, teacher, old in zip(batches, scored["ref"], scored["old"]):
        rows, mask = len(b["sequences"]), b["response_mask"]
        student = b["rollout_logprobs"] if old is None else old  # float32 rollouts: the learner's own (gap ~1e-6)
        experiences.append(Experience(b, reverse_kl_advantages(student, teacher, mask), old_logprobs=old,
                                      rewards=torch.tensor(scored["rewards"]["reward"][start:start + rows]),
                                      version=b["version"]))
        kls.append(losses.sequence_kl(student, teacher, mask) + (float(losses.masked_mean(student - teacher, mask)),))
        start += rows
    updated = update(cfg, roles, experiences)
    k1, k3, per_token = (sum(k[i] for k in kls) / len(kls) for i in range(3))
    return {**step_figures(batches, scored, updated), "kl": k3, "kl_k1": k1, "reverse_kl_per_token": per_token}


def run(cfg: OnPolicyDistillConfig) -> dict:
    student, teacher = load_tokenizer(cfg.policy), load_tokenizer(cfg.teacher)
    if student.get_vocab() != teacher.get_vocab():
        raise UserError(f"teacher {cfg.teacher} and student {cfg.policy} have different vocabularies: on-policy "
                        "distillation compares their log-probs token by token (use jobs.sft's distill: section "
                        "only with the same tokenizer too)")
    return run_rl(cfg, distill_step)
