"""Best-of-k rejection sampling (RAFT, rejection-sampling fine-tuning; seed 000's "rejection sampling" beside
the blocklist): the policy answers each prompt k times on the rollout actors, the reward role scores every
answer (a reward model and/or verifiable reward functions) and judges its safety (app/safety.py), and the best
safe answer of each prompt becomes an SFT record for another round of jobs.sft.

    python -m jobs.rejection_sample jobs/configs/rejection_sample_demo.yaml
    python -m jobs.sft jobs/configs/sft_demo.yaml data.path=runs/rejection-demo   # train on what it kept

A prompt whose answers are all unsafe, or whose best answer scores below `min_reward`, gives no record; it is
written to rejected/ with the reason. The summary pairs, per prompt, the best answer with the first sample
(a single sample, as serving without best-of would answer): mean reward and unsafe share of both, and the
paired bootstrap CI of the reward difference.
"""
from __future__ import annotations

import json

import numpy as np
import ray

from app.cluster import init_ray
from app.data.io import write_parquet
from app.stats import paired_bootstrap
from app.models import load_tokenizer, resolve
from app.records import REJECT_SCHEMA, SFT_SCHEMA
from app.rl.actors import RewardActor, RolloutActor
from app.rl.controller import _prompts
from app.rl.sync import ray_get
from app.runinfo import write_manifest
from app.safety import rank
from app.tasks import skipped_line


def pick_best(rewards: list[float], unsafe: list[bool], min_reward: float | None) -> tuple[int | None, str]:
    """(index of the best safe answer or None, why none): the highest reward among safe answers, ties to the
    first."""
    best = rank(rewards, [not u for u in unsafe])[0]
    if unsafe[best]:
        return None, "all_unsafe"
    if min_reward is not None and rewards[best] < min_reward:
        return None, "below_min_reward"
    return best, ""


def run(cfg) -> dict:
    out = cfg.out("rejection")
    policy = str(resolve(cfg.policy))
    tokenizer = load_tokenizer(policy)
    data, skipped = _prompts(cfg.prompts, tokenizer)
    data = data[:cfg.limit] if cfg.limit else data
    init_ray()
    rollouts = [RolloutActor.options(num_cpus=cfg.cpus_per_actor).remote(policy, cfg.seed)
                for _ in range(cfg.rollout_workers)]
    reward_model = str(resolve(cfg.reward_model)) if cfg.reward_model else None
    reward = RewardActor.options(num_cpus=cfg.cpus_per_actor).remote(reward_model, cfg.reward_functions(), 0.0,
                                                                     cfg.safety.model_dump())
    chunks = [data[i:i + cfg.batch_size] for i in range(0, len(data), cfg.batch_size)]
    batches = ray_get([rollouts[j % len(rollouts)].generate.remote(
        [row.ids for row in chunk], 0, cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.seed + j, n=cfg.k)
        for j, chunk in enumerate(chunks)], 3600, "rejection sampling rollouts")
    kept, rejected, firsts, bests, unsafe_first, unsafe_best = [], [], [], [], [], []
    for chunk, batch in zip(chunks, batches):
        responses = batch["sequences"][:, batch["prompt_width"]:] * batch["response_mask"]
        texts = [t.strip() for t in tokenizer.batch_decode(responses, skip_special_tokens=True)]
        scored = ray_get(reward.score.remote([row.messages for row in chunk for _ in range(cfg.k)], texts,
                                             [row.reference for row in chunk for _ in range(cfg.k)]), 600, "reward role")
        for p, (rid, messages, _, _) in enumerate(chunk):  # a PromptRow: id, messages, ids, reference
            group = slice(p * cfg.k, (p + 1) * cfg.k)
            rewards, unsafe, answers = scored["raw"][group], scored["unsafe"][group], texts[group]
            served, _ = pick_best(rewards, unsafe, None)  # what best-of-k answers (the best of all if none is safe)
            firsts.append(rewards[0])
            unsafe_first.append(unsafe[0])
            bests.append(rewards[served] if served is not None else max(rewards))
            unsafe_best.append(served is None)
            best, why = pick_best(rewards, unsafe, cfg.min_reward)
            if best is None:
                rejected.append({"id": rid, "reason": why, "detail": f"rewards {[round(r, 3) for r in rewards]}",
                                 "source": cfg.prompts, "raw": json.dumps(messages, ensure_ascii=False)})
                continue
            kept.append({"id": f"{rid}-rs", "messages": [*messages, {"role": "assistant", "content": answers[best]}],
                         "intent": "", "lang": "", "flags": json.dumps({"rejection_sampled": {
                             "k": cfg.k, "reward": round(rewards[best], 4), "policy": cfg.policy}})})
    paths = write_parquet(sorted(kept, key=lambda r: r["id"]), SFT_SCHEMA, out / "train")
    paths += write_parquet(sorted(rejected, key=lambda r: r["id"]), REJECT_SCHEMA, out / "rejected")
    best, first = np.array(bests), np.array(firsts)
    low, high, _ = paired_bootstrap("mean", best, first, seed=cfg.seed)
    summary = {"prompts": len(data), "skipped": skipped, "k": cfg.k, "kept": len(kept),
               "rejected": {r: sum(x["reason"] == r for x in rejected) for r in ("all_unsafe", "below_min_reward")},
               "reward_single": float(first.mean()), "reward_best_of_k": float(best.mean()),
               "reward_diff_ci": [float(low), float(high)], "unsafe_single": float(np.mean(unsafe_first)),
               "unsafe_best_of_k": float(np.mean(unsafe_best))}
    write_manifest(out, cfg.model_dump(mode="json"), paths, **summary)
    print(f"rejection sampling: {len(data)} prompts x {cfg.k} answers ({skipped_line(skipped)}); kept {len(kept)}, "
          f"rejected {summary['rejected']}. Reward: single sample {summary['reward_single']:.4f}, best of {cfg.k} "
          f"{summary['reward_best_of_k']:.4f} (paired 95% CI of the gain [{low:+.4f}, {high:+.4f}], n={len(data)}); "
          f"unsafe {summary['unsafe_single']:.1%} -> {summary['unsafe_best_of_k']:.1%} -> {out}/train")
    for actor in [*rollouts, reward]:
        ray.kill(actor)
    return summary
