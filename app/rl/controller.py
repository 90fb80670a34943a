"""The RL controller shared by PPO and GRPO: it places the role actors, samples each step's prompts on the
rollout actors, hands the batches to the algorithm's step function (app.rl.ppo.ppo_step,
app.rl.grpo.grpo_step), publishes and syncs the new policy version, logs, checkpoints and resumes.

    python -m jobs.ppo jobs/configs/ppo_demo.yaml
    python -m jobs.grpo jobs/configs/grpo_demo.yaml
    (the same command again after a crash resumes at the last checkpoint)

Weight sync (app.rl.sync): after each step the learner publishes version v+1 (the policy, or only its
LoRA adapter) with a checksum; every rollout actor loads and reports it; every wait has a timeout.
`sync_logprob_gap` (rollout vs learner log-probs of the same tokens) is the visible proof that rollouts
sample the policy being trained. A rollout actor that dies restarts (Ray `max_restarts`), is reloaded with
the current version and re-samples its chunk with the same seed: prompts are neither lost nor repeated
(`prompt_ids` per step in metrics.jsonl). `overlap: true` samples step t+1 while the learners train on step
t (one step off-policy). Every `checkpoint_every` steps the run saves the learners (DeepSpeed: weights, optimizer,
RNG), the critic and its optimizer, the KL controller, step, policy version and data position.
Outputs: runs/<ppo|grpo>-<name>/metrics.jsonl, <algo>_curve.png, samples.jsonl, final/ (policy),
checkpoints/, manifest.json; wandb (offline) and TensorBoard when enabled.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from app.chat import ChatTooLong, render_prompt
from app.cluster import init_ray
from app.config import UserError
from app.models import load_policy, load_tokenizer, resolve
from app.rl import heldout as held
from app.train import losses
from app.rl.actors import SCORER_ACTORS, Colocated, LearnerActor, RolloutActor, ScorersActor
from app.rl.config import RLConfig
from app.rl.experience import Experience, PromptRow
from app.rl.sync import Sampler, publish, ray_get, sync
from app.runinfo import sha256_path, write_manifest
from app.tasks import load_prompts, skipped_line
from app.train.logger import MetricsLogger, read_metrics


def _prompts(path: str, tokenizer, limit_len: int = 512) -> tuple[list[PromptRow], dict[str, int]]:
    """(a PromptRow per usable prompt record, records skipped by reason);
    app/tasks.py reads the formats, and a prompt that does not fit in `limit_len` tokens is skipped as
    too_long. No usable prompt is an error that says why."""
    records, skipped = load_prompts(path)
    rows = []
    for r in records:
        try:
            rows.append(PromptRow(r["id"], r["prompt"], render_prompt(tokenizer, r["prompt"], limit_len), r["answer"]))
        except ValueError as exc:  # ChatTooLong, or a prompt that ends with an assistant message
            reason = "too_long" if isinstance(exc, ChatTooLong) else "ends_with_assistant"
            skipped[reason] = skipped.get(reason, 0) + 1
    if not rows:
        raise UserError(f"no usable prompts in {path}: {skipped_line(skipped)}")
    return rows, skipped


@dataclass
class Roles:
    rollouts: list
    reference: object
    reward: object
    critic: object
    learners: list

    def all(self) -> list:
        """Every actor once (colocated roles: their one ScorersActor)."""
        actors = [a.host if isinstance(a, Colocated) else a
                  for a in (*self.rollouts, self.reference, self.reward, self.critic, *self.learners) if a]
        return list({id(a): a for a in actors}.values())


def _actors(cfg: RLConfig, policy: str):
    """(placement group, Roles): one bundle per actor (its CPUs and the role's `gpus`), packed; with
    `colocate`, one bundle for the scoring roles together (the most GPU and threads any of them asks for)."""
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    k, n, lora = cfg.rollout_actors, cfg.scaling.learners, cfg.lora.model_dump() if cfg.lora else None
    scorers = {"reference": ((str(resolve(cfg.reference())), cfg.temperature), {}),
               "reward": ((cfg.reward_model, cfg.reward_functions(), cfg.safety.penalty,
                           cfg.safety.model_dump(include={"scorer", "threshold"})), {})}
    if cfg.uses_critic:
        scorers["critic"] = ((cfg.critic_init or cfg.reward_model or policy, cfg.critic_lr, cfg.value_clip,
                              cfg.critic_top_layers), {"value_coef": cfg.value_coef})
    groups = [[r] for r in scorers] if not cfg.colocate else [list(scorers)]
    order = [["rollout"]] * k + groups + [["learner"]] * n
    gpus = [max(cfg.gpus.get(r, 0) for r in roles) for roles in order]
    bundles = [{"CPU": cfg.cpus_per_actor, **({"GPU": gpu} if gpu else {})} for gpu in gpus]
    pg = placement_group(bundles, strategy="PACK")
    ray_get(pg.ready(), 600, "placement group")

    def place(cls, i, *args, options=None, **kwargs):
        kwargs["threads"] = max(cfg.threads.get(r, 1) for r in order[i])
        return cls.options(num_cpus=cfg.cpus_per_actor, num_gpus=bundles[i].get("GPU", 0),
                           scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i),
                           **(options or {})).remote(*args, **kwargs)
    if cfg.colocate:
        host = place(ScorersActor, k, scorers, options=dict(name=f"{cfg.algorithm}-{cfg.name}-scorers"))
        scoring = {role: Colocated(host, role) for role in scorers}
    else:
        scoring = {role: place(SCORER_ACTORS[role], k + i, *args, **kwargs)
                   for i, (role, (args, kwargs)) in enumerate(scorers.items())}
    roles = Roles(
        rollouts=[place(RolloutActor, j, policy, cfg.seed, lora, cfg.engine(), cfg.rollout_precision,
                        vllm=cfg.vllm.model_dump(), options=dict(name=f"{cfg.algorithm}-{cfg.name}-rollout-{j}",
                                                                 max_restarts=cfg.max_restarts)) for j in range(k)],
        reference=scoring["reference"], reward=scoring["reward"], critic=scoring.get("critic"),
        learners=[place(LearnerActor, len(order) - n + r, policy, r, n, cfg.optim.lr, cfg.clip, cfg.entropy_coef,
                        cfg.temperature, cfg.scaling.zero_stage, lora, cfg.optim.grad_clip, seed=cfg.seed,
                        tis_cap=cfg.tis())
                  for r in range(n)])
    addr, port = ray_get(roles.learners[0].address.remote(), 120, "learner 0")
    ray_get([learner.setup.remote(addr, port) for learner in roles.learners], 600, "learner group set-up")
    return pg, roles


def score(cfg: RLConfig, roles: Roles, batches: list[dict], prompts: list, references: list, tokenizer,
          old_pass: bool = True) -> dict:
    """Everything a step needs about its samples, computed by the roles in parallel: decoded texts,
    reference log-probs, the learner's (old) log-probs when `old_pass`, critic values (PPO), rewards; plus
    the rollout-vs-learner log-prob gap that proves the rollouts sampled the current policy (without the
    old pass, the learner measures it in its first update, before any step)."""
    t0 = time.perf_counter()
    texts = [t for b in batches for t in tokenizer.batch_decode(
        b["sequences"][:, b["prompt_width"]:] * b["response_mask"], skip_special_tokens=True)]
    refs = [[roles.reference.logprobs.remote(b)] + ([roles.learners[0].logprobs.remote(b)] if old_pass else []) +
            ([roles.critic.values.remote(b)] if roles.critic else []) for b in batches]
    scored = roles.reward.score.remote(prompts, texts, references)
    per_batch = [ray_get(r, cfg.sync_timeout_s, "scoring") for r in refs]
    rewards = ray_get(scored, cfg.sync_timeout_s, "reward")
    old = [p[1] if old_pass else None for p in per_batch]
    gaps = [float(losses.masked_mean((b["rollout_logprobs"] - o).abs(), b["response_mask"]))
            for b, o in zip(batches, old) if o is not None]
    return {"texts": texts, "ref": [p[0] for p in per_batch], "old": old,
            "values": [p[-1] if roles.critic else None for p in per_batch], "rewards": rewards,
            "gap": max(gaps) if gaps else None, "score_s": time.perf_counter() - t0}


def update(cfg: RLConfig, roles: Roles, experiences: list[Experience], kl_coef: float = 0.0) -> dict:
    """K epochs over the step's minibatches (one Experience per rollout batch), each split by rows across the
    learner ranks; the critic (PPO) trains on the whole batch. Returns the last epoch's mean figures and the
    rollout gap rank 0 saw before the first optimizer step."""
    n, t0, first_gap = len(roles.learners), time.perf_counter(), None
    for _ in range(cfg.epochs):
        stats, value_losses = [], []
        for exp in experiences:
            stats += [learner.update.remote(exp.rows(r, n), kl_coef) for r, learner in enumerate(roles.learners)]
            if exp.returns is not None:
                value_losses.append(roles.critic.update.remote(exp.batch, exp.returns, exp.values))
        stats = ray_get(stats, cfg.sync_timeout_s, "learner update")
        value_losses = ray_get(value_losses, cfg.sync_timeout_s, "critic update")
        first_gap = stats[0]["rollout_gap"] if first_gap is None else first_gap
    figures = {k: sum(s[k] for s in stats) / len(stats) for k in stats[0] if k != "rollout_gap"}
    figures["first_update_gap"] = first_gap
    if value_losses:
        figures["value_loss"] = sum(value_losses) / len(value_losses)
    return {**figures, "train_s": time.perf_counter() - t0}


def drop_unsafe(cfg: RLConfig, batches: list[dict], unsafe: list[bool]) -> list[dict]:
    """With `safety.unsafe: reject`, the batches with their unsafe rows' response masks zeroed (no loss, no KL on
    them; their rewards still count in a group's baseline); otherwise the batches as they are."""
    import torch
    if cfg.safety.unsafe != "reject" or not any(unsafe):
        return batches
    out, start = [], 0
    for b in batches:
        rows = len(b["sequences"])
        keep = torch.tensor([not u for u in unsafe[start:start + rows]], dtype=b["response_mask"].dtype)
        out.append(b if keep.all() else {**b, "response_mask": b["response_mask"] * keep[:, None]})
        start += rows
    return out


def step_figures(batches: list[dict], scored: dict, updated: dict) -> dict:
    """The figures every algorithm logs about its samples and updates."""
    import torch
    rewards = torch.tensor(scored["rewards"]["reward"])
    return {"reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
            "response_length": float(sum(b["response_mask"].sum() for b in batches) / len(rewards)),
            "unsafe": sum(scored["rewards"]["unsafe"]), "resampled": sum(b.get("resampled", 0) for b in batches),
            "score_s": scored["score_s"], "texts": scored["texts"], "rewards": scored["rewards"]["reward"],
            **updated, "sync_logprob_gap": scored["gap"] if scored["gap"] is not None else
            updated["first_update_gap"]}


def save_checkpoint(cfg: RLConfig, out: Path, roles: Roles, state: dict) -> None:
    """checkpoints/step-N/{learner (DeepSpeed, every rank), critic, controller.json}; the `latest` pointer is
    written last, so a crash mid-save leaves the previous checkpoint in charge."""
    root = out / "checkpoints"
    folder = root / f"step-{state['step']:06d}"
    ray_get([learner.save.remote(str(folder / "learner")) for learner in roles.learners] +
            ([roles.critic.save.remote(str(folder / "critic"))] if roles.critic else []), cfg.sync_timeout_s, "checkpoint")
    (folder / "controller.json").write_text(json.dumps(state, indent=1))
    (root / "latest.tmp").write_text(folder.name)
    (root / "latest.tmp").replace(root / "latest")
    for old in root.glob("step-*"):
        if old != folder:
            shutil.rmtree(old)


def load_checkpoint(cfg: RLConfig, out: Path, roles: Roles) -> dict | None:
    latest = out / "checkpoints" / "latest"
    if not (cfg.resume and latest.exists()):
        return None
    folder = out / "checkpoints" / latest.read_text().strip()
    ray_get([learner.load.remote(str(folder / "learner")) for learner in roles.learners] +
            ([roles.critic.load.remote(str(folder / "critic"))] if roles.critic else []), cfg.sync_timeout_s,
            "checkpoint load")
    return json.loads((folder / "controller.json").read_text())


def run(cfg: RLConfig, step_fn: Callable) -> dict:
    """Train with `step_fn(cfg, roles, batches, prompts, references, tokenizer, kl_ctl) -> figures`."""
    if cfg.needs_reward and not (cfg.reward_model or cfg.reward_function):
        raise UserError("set reward_model (a jobs.reward output) and/or reward_function (module:function)")
    policy = str(resolve(cfg.policy))
    tokenizer = load_tokenizer(policy)
    data, skipped = _prompts(cfg.prompts, tokenizer)
    print(f"{cfg.algorithm}: {len(data)} training prompts from {cfg.prompts} ({skipped_line(skipped)})", flush=True)
    heldout = _prompts(cfg.heldout.prompts, tokenizer)[0][:cfg.heldout.max_samples] if cfg.heldout else []
    held.check_disjoint(heldout, data)
    out = cfg.out(cfg.algorithm)
    out.mkdir(parents=True, exist_ok=True)
    init_ray()
    pg, roles = _actors(cfg, policy)
    try:
        return _train(cfg, step_fn, roles, data, heldout, tokenizer, policy, out, skipped)
    finally:  # free the placement group's CPUs for whatever runs next on this cluster
        import ray
        from ray.util.placement_group import remove_placement_group
        for actor in roles.all():
            ray.kill(actor, no_restart=True)
        remove_placement_group(pg)


def _train(cfg: RLConfig, step_fn: Callable, roles: Roles, data: list, heldout: list, tokenizer, policy: str,
           out: Path, skipped: dict) -> dict:
    kl_ctl = losses.KLController(cfg.kl.init, cfg.kl.target, cfg.kl.horizon)
    resumed = load_checkpoint(cfg, out, roles)
    start, version = (resumed["step"], resumed["version"]) if resumed else (0, 0)
    if resumed:
        kl_ctl.load_state_dict(resumed["kl"])
        print(f"{cfg.algorithm}: resuming after step {start} (policy v{version})", flush=True)
    else:
        for stale in ("metrics.jsonl", "samples.jsonl", "heldout.jsonl"):
            (out / stale).unlink(missing_ok=True)
    history = [m for m in read_metrics(out / "metrics.jsonl") if m["step"] <= start] if resumed else []
    measured = [m for m in read_metrics(out / "heldout.jsonl") if m["step"] <= start] \
        if resumed and (out / "heldout.jsonl").is_file() else []
    logger = MetricsLogger(str(out), cfg.name, cfg.model_dump(mode="json"), cfg.wandb, cfg.tensorboard,
                           cfg.algorithm)
    probe = data[0].ids  # the first training prompt: every sync is checked on the learner's log-probs of it
    pub = publish(roles.learners[0], version, cfg.sync_timeout_s, probe, cfg.sync_tolerance())
    sync(roles.rollouts, pub, cfg.sync_timeout_s, cfg.max_restarts)  # everyone samples the same version
    sampler = Sampler(cfg.sampling_plan(), roles.rollouts, data)

    def measure(step: int, version: int) -> dict:
        measured.append(held.measure(cfg, roles, heldout, version, tokenizer, step))
        with open(out / "heldout.jsonl", "a") as f:
            f.write(json.dumps(measured[-1], ensure_ascii=False) + "\n")
        print(f"{cfg.algorithm} held-out reward at step {step}: {measured[-1]['mean']:.3f} "
              f"[{measured[-1]['ci_low']:.3f}, {measured[-1]['ci_high']:.3f}] (n={measured[-1]['n']})", flush=True)
        return held.figures(measured[-1])
    if heldout and not measured:
        measure(0, pub.version)  # the starting policy
    pending = sampler.launch(start, pub.version) if start < cfg.steps else None
    for step in range(start, cfg.steps):
        t_step = time.perf_counter()
        batches = sampler.collect(pending, pub)
        t_gen = time.perf_counter() - (pending["t0"] if not cfg.overlap else t_step)
        chunks = pending["chunks"]
        if cfg.overlap and step + 1 < cfg.steps:  # step t+1 samples the policy before this update
            pending = sampler.launch(step + 1, pub.version)
        ids = [i for chunk in chunks for i in chunk]
        rows = [data[i] for i in ids for _ in range(cfg.group_size)]  # the order of the batches' rows
        figures = step_fn(cfg, roles, batches, [r.messages for r in rows], [r.reference for r in rows], tokenizer, kl_ctl)
        t1 = time.perf_counter()
        pub = publish(roles.learners[0], pub.version + 1, cfg.sync_timeout_s, probe, cfg.sync_tolerance())
        probe_gap = sync(roles.rollouts, pub, cfg.sync_timeout_s, cfg.max_restarts)
        figures.update(step=step + 1, policy_version=pub.version, checksum=pub.checksum[:12], sync_probe_gap=probe_gap,
                       sampled_versions=sorted({b["version"] for b in batches}), generate_s=t_gen,
                       sync_s=time.perf_counter() - t1, sync_mb=pub.megabytes, rollout_restarts=sampler.restarts,
                       prompt_ids=[data[i].id for i in ids])
        every = cfg.heldout.every if cfg.heldout else 0
        if heldout and ((every and (step + 1) % every == 0) or step + 1 == cfg.steps):
            figures.update(measure(step + 1, pub.version))
        if not cfg.overlap and step + 1 < cfg.steps:
            pending = sampler.launch(step + 1, pub.version)
        texts, rewards = figures.pop("texts"), figures.pop("rewards")
        with open(out / "samples.jsonl", "a") as f:
            f.write(json.dumps({"step": step + 1, "samples": [
                {"id": row.id, "response": t, "reward": r} for row, t, r in list(zip(rows, texts, rewards))[:3]]},
                ensure_ascii=False) + "\n")
        figures["step_s"] = time.perf_counter() - t_step
        logger.log(figures)
        history.append(figures)
        print(f"{cfg.algorithm} step {step + 1}: reward {figures['reward_mean']:.3f} kl {figures['kl']:.3f} "
              f"v{pub.version} gap {figures['sync_logprob_gap']:.2e} {figures['step_s']:.1f}s", flush=True)
        if cfg.checkpoint_every and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps):
            save_checkpoint(cfg, out, roles, {"step": step + 1, "version": pub.version, "kl": kl_ctl.state_dict(),
                                              "data_position": (step + 1) * len(ids), "checksum": pub.checksum})
    logger.close()
    final = _save_final(cfg, roles, tokenizer, policy, out)
    plot(history, measured, out / f"{cfg.algorithm}_curve.png")
    summary = {"steps": cfg.steps, "prompts": {"used": len(data), "skipped": skipped}, "policy_version": pub.version, "checksum": pub.checksum,
               "resumed_from": start if resumed else None, "reward_first": history[0]["reward_mean"],
               "reward_last": history[-1]["reward_mean"], "kl_last": history[-1]["kl"],
               "kl_per_token_last": history[-1].get("kl_loss"),  # k3, mean over response tokens
               "rollout_restarts": sampler.restarts, "final": str(final),
               **(held.change(measured[0], measured[-1]) if len(measured) > 1 else {})}
    write_manifest(out, cfg.model_dump(mode="json"), [], prompts_sha256=sha256_path(cfg.prompts), summary=summary)
    print(json.dumps(summary))
    return summary


def _save_final(cfg: RLConfig, roles: Roles, tokenizer, policy: str, out: Path) -> Path:
    """final/: the trained policy as a plain HF directory (a LoRA adapter merged in), safetensors."""
    final = out / "final"
    model, _ = load_policy(policy)
    model.load_state_dict(ray_get(roles.learners[0].merged_state.remote(), cfg.sync_timeout_s, "learner state"))
    model.save_pretrained(final, safe_serialization=True)
    tokenizer.save_pretrained(final)
    return final


def plot(history: list[dict], measured: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(steps, [h["reward_mean"] for h in history], marker="o", label="training batch")
    if measured:
        ax[0].errorbar([m["step"] for m in measured], [m["mean"] for m in measured], capsize=3, marker="s",
                       yerr=[[m["mean"] - m["ci_low"] for m in measured], [m["ci_high"] - m["mean"] for m in measured]],
                       label=f"held-out (n={measured[0]['n']}, 95% CI)")
        ax[0].legend(fontsize=8)
    ax[0].set(title="mean reward", xlabel="step")
    ax[1].plot(steps, [h["kl"] for h in history], marker="o", color="tab:red")
    ax[1].set(title="KL to reference (k3)", xlabel="step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
