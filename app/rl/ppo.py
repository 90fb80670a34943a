"""Actor-based PPO: a controller driving Rollout, Reference, Reward, Critic and Learner actors.

    python -m jobs.ppo jobs/configs/ppo_demo.yaml
    python -m jobs.ppo jobs/configs/ppo_tiny.yaml            # tests: tiny policy, a function reward

Each step: the rollout actors sample responses for the next prompts (refusing any policy version but the
current one) -> reference log-probs, critic values, learner log-probs and rewards (reward model or
function, minus the safety penalty) -> per-token KL rewards, GAE, whitened advantages (app.rl.losses) ->
K epochs of clipped policy / value updates over the rollout actors' minibatches -> the learner publishes
version v+1 with a checksum, every rollout actor loads and reports it; the step fails after
`sync_timeout_s` rather than hang. `sync_logprob_gap` (rollout vs learner log-probs of the same tokens)
is the visible proof that rollouts sample the policy being trained.
Outputs: runs/ppo-<name>/metrics.jsonl, ppo_curve.png, samples.jsonl, final/ (policy), manifest.json.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from pydantic import Field

from app.config import Config, JobConfig, UserError
from app.rl import losses


class KLConfig(Config):
    init: float = 0.05
    target: float | None = None   # None: fixed coefficient; else adaptive towards this KL
    horizon: int = 10000


class PPOConfig(JobConfig):
    policy: str = "runs/sft-demo/final"
    reward_model: str | None = "runs/reward-demo/final"
    reward_function: str | None = None   # module:function(prompts, responses) -> list[float], instead of a model
    critic_init: str | None = None       # default: the reward model, else the policy
    prompts: str = "data/demo/raw/prompts.jsonl"
    steps: int = Field(8, ge=1)
    rollout_actors: int = Field(2, ge=1)
    prompts_per_actor: int = Field(4, ge=1)
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    epochs: int = Field(4, ge=1)         # K passes over the step's minibatches
    lr: float = 1e-5
    critic_lr: float = 1e-5
    clip: float = 0.2
    value_clip: float = 0.2
    entropy_coef: float = 0.01
    gamma: float = 1.0
    lam: float = 0.95
    kl: KLConfig = KLConfig()
    safety_penalty: float = 1.0
    toxicity_threshold: float = 0.3
    cpus_per_actor: float = 0.3
    sync_timeout_s: float = 300


def _prompts(path: str, tokenizer, limit_len: int = 512) -> list[tuple[list[dict], list[int]]]:
    from app.chat import render_prompt
    if not Path(path).is_file():
        raise UserError(f"prompts {path} not found (python -m jobs.demo_data writes data/demo/raw/prompts.jsonl)")
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        messages = record["prompt"] if isinstance(record["prompt"], list) else \
            [{"role": "user", "content": record["prompt"]}]
        out.append((messages, render_prompt(tokenizer, messages, limit_len)))
    return out


def _actors(cfg: PPOConfig, policy: str):
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from app.rl.actors import CriticActor, LearnerActor, ReferenceActor, RewardActor, RolloutActor
    n = cfg.rollout_actors + 4
    pg = placement_group([{"CPU": cfg.cpus_per_actor}] * n, strategy="PACK")
    ray_get(pg.ready(), 120, "placement group")

    def place(cls, i, *args, **kwargs):
        return cls.options(num_cpus=cfg.cpus_per_actor, scheduling_strategy=PlacementGroupSchedulingStrategy(
            pg, placement_group_bundle_index=i)).remote(*args, **kwargs)
    rollouts = [place(RolloutActor, i, policy, cfg.seed) for i in range(cfg.rollout_actors)]
    k = cfg.rollout_actors
    critic_init = cfg.critic_init or cfg.reward_model or policy
    return pg, (rollouts, place(ReferenceActor, k, policy, cfg.temperature),
            place(RewardActor, k + 1, cfg.reward_model, cfg.reward_function, cfg.safety_penalty,
                  cfg.toxicity_threshold),
            place(CriticActor, k + 2, critic_init, cfg.critic_lr, cfg.value_clip),
            place(LearnerActor, k + 3, policy, cfg.lr, cfg.clip, cfg.entropy_coef, cfg.temperature, seed=cfg.seed))


def ray_get(refs, timeout: float, what: str):
    import ray
    try:
        return ray.get(refs, timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        raise RuntimeError(f"{what} did not answer within {timeout:.0f}s") from None


def sync(learner, rollouts, version: int, timeout: float) -> str:
    """Publish the learner's weights as `version`; every rollout actor must report it with the checksum."""
    import ray
    state, checksum = ray_get(learner.weights.remote(), timeout, "learner weights")
    ref = ray.put(state)
    statuses = ray_get([a.load_weights.remote(version, ref, checksum) for a in rollouts], timeout, "weight sync")
    for i, s in enumerate(statuses):
        if s != {"version": version, "checksum": checksum}:
            raise RuntimeError(f"rollout actor {i} reports {s}, expected v{version} {checksum[:12]}")
    return checksum


def ppo_step(cfg: PPOConfig, actors, batches: list[dict], prompts: list[list[dict]], tokenizer, kl_ctl) -> dict:
    """Score the sampled batches and run K epochs of updates; returns the step's figures."""
    _, reference, reward, critic, learner = actors
    t0 = time.perf_counter()
    texts = [tokenizer.batch_decode(b["sequences"][:, b["prompt_width"]:] * b["response_mask"],
                                    skip_special_tokens=True) for b in batches]
    refs = [(reference.logprobs.remote(b), critic.values.remote(b), learner.logprobs.remote(b)) for b in batches]
    flat_texts = [t for ts in texts for t in ts]
    scored = reward.score.remote(prompts, flat_texts)
    per_batch, scores = [ray_get(list(r), cfg.sync_timeout_s, "scoring") for r in refs], ray_get(
        scored, cfg.sync_timeout_s, "reward")
    t_score = time.perf_counter() - t0
    experiences, start, kls, gaps = [], 0, [], []
    for b, (ref_lp, values, old_lp) in zip(batches, per_batch):
        n, mask = len(b["sequences"]), b["response_mask"]
        score = torch.tensor(scores["reward"][start:start + n])
        start += n
        rewards, kl = losses.token_rewards(score, old_lp, ref_lp, mask, kl_ctl.value)
        adv, ret = losses.gae(rewards, values, mask, cfg.gamma, cfg.lam)
        experiences.append((b, old_lp, losses.whiten(adv, mask), ret, values))
        kls.append(float(kl.sum(1).mean()))
        gaps.append(float(losses.masked_mean((b["rollout_logprobs"] - old_lp).abs(), mask)))
    t1 = time.perf_counter()
    stats, value_losses = [], []
    for _ in range(cfg.epochs):
        for b, old_lp, adv, ret, values in experiences:
            stats.append(learner.update.remote(b, old_lp, adv))
            value_losses.append(critic.update.remote(b, ret, values))
        stats_now = ray_get(stats[-len(experiences):], cfg.sync_timeout_s, "learner update")
        ray_get(value_losses[-len(experiences):], cfg.sync_timeout_s, "critic update")
    last = stats_now[-1]
    kl_mean = sum(kls) / len(kls)
    kl_ctl.update(kl_mean, len(flat_texts))
    rewards_t = torch.tensor(scores["reward"])
    return {"reward_mean": float(rewards_t.mean()), "reward_std": float(rewards_t.std()), "kl": kl_mean,
            "kl_coef": kl_ctl.value, "entropy": last["entropy"], "policy_loss": last["policy_loss"],
            "value_loss": float(ray_get(value_losses[-1], 10, "critic")), "clip_frac": last["clip_frac"],
            "response_length": float(sum(b["response_mask"].sum() for b in batches) / len(flat_texts)),
            "unsafe": sum(scores["unsafe"]), "sync_logprob_gap": max(gaps), "score_s": t_score,
            "train_s": time.perf_counter() - t1, "samples": list(zip(flat_texts[:2], scores["reward"][:2]))}


def run(cfg: PPOConfig) -> dict:
    from app.cluster import init_ray
    from app.models import load_tokenizer, resolve
    if not (cfg.reward_model or cfg.reward_function):
        raise UserError("set reward_model (a jobs.reward output) or reward_function (module:function)")
    policy = str(resolve(cfg.policy))
    tokenizer = load_tokenizer(policy)
    data = _prompts(cfg.prompts, tokenizer)
    out = cfg.out("ppo")
    out.mkdir(parents=True, exist_ok=True)
    init_ray()
    pg, actors = _actors(cfg, policy)
    try:
        return _train(cfg, actors, data, tokenizer, policy, out)
    finally:  # free the placement group's CPUs for whatever runs next on this cluster
        import ray
        from ray.util.placement_group import remove_placement_group
        for actor in actors[0] + list(actors[1:]):
            ray.kill(actor)
        remove_placement_group(pg)


def _train(cfg: PPOConfig, actors, data, tokenizer, policy: str, out: Path) -> dict:
    from app.models import load_policy
    from app.runinfo import sha256_file, write_manifest
    rollouts, learner = actors[0], actors[4]
    kl_ctl = losses.KLController(cfg.kl.init, cfg.kl.target, cfg.kl.horizon)
    version, checksum = 0, sync(learner, rollouts, 0, cfg.sync_timeout_s)  # everyone starts from the same v0
    per_step = cfg.rollout_actors * cfg.prompts_per_actor
    history = []
    with open(out / "metrics.jsonl", "w") as log, open(out / "samples.jsonl", "w") as samples:
        for step in range(cfg.steps):
            idx = [(step * per_step + i) % len(data) for i in range(per_step)]
            chunks = [idx[i::cfg.rollout_actors] for i in range(cfg.rollout_actors)]
            t0 = time.perf_counter()
            batches = ray_get([a.generate.remote([data[i][1] for i in chunk], version, cfg.max_new_tokens,
                                                 cfg.temperature, cfg.top_p, cfg.seed * 100003 + step * 101 + j)
                               for j, (a, chunk) in enumerate(zip(rollouts, chunks))], cfg.sync_timeout_s,
                              "rollout")
            t_gen = time.perf_counter() - t0
            figures = ppo_step(cfg, actors, batches, [data[i][0] for chunk in chunks for i in chunk], tokenizer,
                               kl_ctl)
            t1 = time.perf_counter()
            version += 1
            checksum = sync(learner, rollouts, version, cfg.sync_timeout_s)
            figures.update(step=step + 1, policy_version=version, checksum=checksum[:12], generate_s=t_gen,
                           sync_s=time.perf_counter() - t1)
            samples.write(json.dumps({"step": step + 1, "samples": figures.pop("samples")},
                                     ensure_ascii=False) + "\n")
            history.append(figures)
            log.write(json.dumps(figures) + "\n")
            log.flush()
            print(f"ppo step {step + 1}: reward {figures['reward_mean']:.3f} kl {figures['kl']:.3f} "
                  f"v{version} gap {figures['sync_logprob_gap']:.2e}", flush=True)
    final = out / "final"
    state = ray_get(learner.state.remote(), cfg.sync_timeout_s, "learner state")["model"]
    model, _ = load_policy(policy)
    model.load_state_dict(state)
    model.save_pretrained(final, safe_serialization=True)
    tokenizer.save_pretrained(final)
    plot(history, out / "ppo_curve.png")
    summary = {"steps": cfg.steps, "policy_version": version, "reward_first": history[0]["reward_mean"],
               "reward_last": history[-1]["reward_mean"], "kl_last": history[-1]["kl"], "final": str(final)}
    write_manifest(out, cfg.model_dump(mode="json"), [], prompts_sha256=sha256_file(cfg.prompts), summary=summary)
    print(json.dumps(summary))
    return summary


def plot(history: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(steps, [h["reward_mean"] for h in history], marker="o")
    ax[0].set(title="mean reward", xlabel="step")
    ax[1].plot(steps, [h["kl"] for h in history], marker="o", color="tab:red")
    ax[1].set(title="KL to reference", xlabel="step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
