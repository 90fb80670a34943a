"""RL measured on prompts it never trains on: a fixed held-out set, answered greedily by the rollout actors
with the current policy version and scored by the same reward role as training, at the start (the starting
policy, e.g. the SFT model), every `heldout.every` steps and at the end.

    python -m jobs.grpo jobs/configs/grpo_demo.yaml heldout.prompts=<data stage output>/test

Training-batch means are noisy (a handful of sampled answers, the policy moving under them); the held-out
mean is the same prompts each time, so start vs end is a paired comparison (app/stats.py, as the
gate: bootstrap CI of the difference, one-sided p, McNemar for pass/fail rewards). Each measurement goes to metrics.jsonl (heldout_reward, its 95% CI,
heldout_n) and heldout.jsonl (every item's reward), and the summary carries the paired start -> end change.
"""
from __future__ import annotations

import numpy as np

from app.config import UserError
from app.stats import compare_metric, mean_ci
from app.rl.sync import ray_get


def check_disjoint(heldout: list, train: list) -> None:
    """Refuse a held-out set that shares an id or a prompt text with the training prompts."""
    ids, texts = {r.id for r in train}, {_text(r.messages) for r in train}
    shared = [r.id for r in heldout if r.id in ids or _text(r.messages) in texts]
    if shared:
        raise UserError(f"heldout.prompts shares {len(shared)} prompts with the training prompts (e.g. {shared[0]}): "
                        f"held-out prompts must be ones the policy never trains on (use the data stage's test/)")


def _text(messages: list[dict]) -> str:
    return "\n".join(m["content"] for m in messages)


def measure(cfg, roles, data: list, version: int, tokenizer, step: int) -> dict:
    """{step, version, mean, ci_low, ci_high, n, items: [{id, reward}]} for the policy the rollouts hold."""
    k, h = len(roles.rollouts), cfg.heldout
    chunks = [list(range(j, len(data), k)) for j in range(k)]
    refs = [roles.rollouts[j].generate.remote([data[i].ids for i in chunk], version, h.max_new_tokens or
                                              cfg.max_new_tokens, 0.0, 1.0, 0, full_precision=True)
            for j, chunk in enumerate(chunks) if chunk]
    batches = ray_get(refs, cfg.sync_timeout_s, "held-out generation")
    order = [i for chunk in chunks for i in chunk]
    texts = [t for b in batches for t in tokenizer.batch_decode(
        b["sequences"][:, b["prompt_width"]:] * b["response_mask"], skip_special_tokens=True)]
    rewards = ray_get(roles.reward.score.remote([data[i].messages for i in order], texts, [data[i].reference for i in order]),
                      cfg.sync_timeout_s, "held-out reward")["reward"]
    by_id = sorted(zip((data[i].id for i in order), rewards, texts))
    values = np.array([r for _, r, _ in by_id])
    low, high = mean_ci(values)
    return {"step": step, "version": version, "mean": float(values.mean()), "ci_low": low, "ci_high": high,
            "n": len(values), "items": [{"id": i, "reward": float(r), "response": t} for i, r, t in by_id]}


def figures(m: dict) -> dict:
    return {"heldout_reward": m["mean"], "heldout_ci_low": m["ci_low"], "heldout_ci_high": m["ci_high"],
            "heldout_n": m["n"]}


def change(first: dict, last: dict, alpha: float = 0.05) -> dict:
    """The paired start -> end change on the same held-out prompts, by the eval gate's own statistics
    (bootstrap CI; exact McNemar when every reward is pass/fail), with a zero margin."""
    as_items = lambda m: [{"id": i["id"], "set": "heldout", "heldout_reward": i["reward"]} for i in m["items"]]  # noqa: E731
    row = compare_metric("heldout_reward", as_items(last), as_items(first), tolerance=0.0, alpha=alpha)
    return {"heldout_first": first["mean"], "heldout_last": last["mean"], "heldout_n": last["n"],
            "heldout_diff": row["diff"], "heldout_ci_low": row["ci_low"], "heldout_ci_high": row["ci_high"],
            "heldout_p_value": row["p_value"], "heldout_verdict": row["verdict"]}
