"""The reward model: a scalar head per dimension on a causal LM, trained on preference pairs with the
pairwise ranking loss -log sigmoid(r_chosen - r_rejected - margin), by the shared loop (app/train/loop.py:
DeepSpeed, checkpoints, exact resume, restarts, each worker on its Ray Data part).

    python -m jobs.reward jobs/configs/reward_demo.yaml
    python -m jobs.reward jobs/configs/reward_hh.yaml        # Anthropic HH-RLHF harmless pairs

Heads (`heads: {helpfulness: 1.0, safety: 1.0}`) are outputs of one sequence-classification model; a pair
trains the head named by its `dimension` (default: the first head); `score()` returns the weighted sum.
Output: runs/reward-<name>/final (HF directory, safetensors, reward_heads.json), metrics.jsonl,
training_curve.png, val_pairs.jsonl (each held-out pair's margin, the wrong ones first), manifest.json; the
summary's `heldout` gives accuracy with its 95% interval, by head and by rejected_kind where the pairs name
one. `RewardModel(path).score(prompts, responses)` is the API PPO, eval's judge and rejection sampling use.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import ray
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from app.chat import render
from app.cluster import init_ray
from app.config import UserError
from app.models import load_tokenizer, resolve
from app.train.losses import pairwise_loss
from app.runinfo import sha256_path, write_manifest
from app.train import checkpoints, preferences
from app.train.config import RewardConfig
from app.train.fit import check_resume, fit, split
from app.train.loop import Objective, Run, Step
from app.train.logger import plot_curve, read_metrics

HEADS_FILE = "reward_heads.json"


def pair_scores(model, rows: list[dict], pad: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(chosen scores, rejected scores, margins), each on the head its pair names."""
    batch = preferences.collate(rows, pad)
    logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
    n, logits = len(rows), logits.float()
    pick = torch.tensor([r["head"] for r in rows], device=device)[:, None]
    margins = torch.tensor([r["margin"] for r in rows], device=device)
    return logits[:n].gather(1, pick).squeeze(1), logits[n:].gather(1, pick).squeeze(1), margins


def freeze_below(model, top_layers: int | None) -> None:
    """Leave only the last `top_layers` decoder layers, the final norm and the heads trainable."""
    if top_layers is None:
        return
    base = getattr(model, model.base_model_prefix)
    for p in base.parameters():
        p.requires_grad = False
    for module in list(base.layers[len(base.layers) - top_layers:]) + [base.norm]:
        for p in module.parameters():
            p.requires_grad = True


def build(model_path: str, heads: int, pad: int, trust_remote_code: bool = False):
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=heads, use_safetensors=True,
                                                               trust_remote_code=trust_remote_code)
    model.config.pad_token_id = pad
    return model


def objective(cfg_json: dict, run: Run) -> tuple[RewardConfig, Objective]:
    """On each worker: the sequence-classification model (lower layers frozen on request), the ranking loss;
    validation reports loss and pairwise accuracy (chosen scored above rejected)."""
    cfg = RewardConfig.model_validate(cfg_json)
    pad = load_tokenizer(run.model_path).pad_token_id
    model = build(run.model_path, len(cfg.heads), pad, cfg.trust_remote_code)
    freeze_below(model, cfg.train_top_layers)
    mb = cfg.train.micro_batch_size

    def batches(rows: list[dict], epoch: int, train: bool) -> list[list[dict]]:
        return preferences.micro_batches(rows, mb, cfg.seed, epoch) if train else \
            preferences.micro_batches(rows, mb, 0, 0, shuffle=False)

    def step(engine, rows: list[dict]) -> Step:
        chosen, rejected, margins = pair_scores(engine, rows, pad, engine.device)
        loss = pairwise_loss(chosen, rejected, margins)
        return Step(loss, {"loss": float(loss), "accuracy": float((chosen > rejected).float().mean())},
                    float(len(rows)), sum(len(r["chosen"]) + len(r["rejected"]) for r in rows))
    return cfg, Objective(model.train(), batches, step)


def export(checkpoint: Path, model_path: str, out: Path, cfg: RewardConfig, tokenizer) -> Path:
    """final/: the base model with the checkpoint's trained weights, the tokenizer and the heads' weights."""
    weights = load_file(checkpoint / "trainable.safetensors")
    model = build(model_path, len(cfg.heads), tokenizer.pad_token_id, cfg.trust_remote_code)
    missing = set(weights) - set(dict(model.named_parameters()))
    if missing:
        raise RuntimeError(f"checkpoint weights not in the reward model: {sorted(missing)[:3]}")
    model.load_state_dict(weights, strict=False)
    final = out / "final"
    shutil.rmtree(final, ignore_errors=True)
    model.save_pretrained(final, safe_serialization=True)
    tokenizer.save_pretrained(final)
    (final / HEADS_FILE).write_text(json.dumps({"heads": cfg.heads}, indent=2))
    return final


def run(cfg: RewardConfig, report=None) -> dict:
    """Train; with `report` (one worker), the loop runs in this process and hands it every report (as a sweep
    trial of jobs.sft does: no Ray Train start)."""
    preferences.require(cfg.data)
    out = cfg.out("reward")
    model_path = str(resolve(cfg.model))
    check_resume(out, cfg, model_path)
    tokenizer = load_tokenizer(model_path)
    workers = cfg.scaling.num_workers
    train, val, counts = preferences.load(cfg.data, tokenizer, list(cfg.heads), cfg.seed,
                                          workers * cfg.train.micro_batch_size)
    if len(val) < workers:
        raise UserError(f"{len(val)} validation pairs in {cfg.data.path}: fewer than one per worker ({workers}); "
                        f"raise data.val_share or data.max_val_pairs")
    init_ray()
    datasets = split(ray.data.from_items(train), ray.data.from_items(val), workers)
    best = fit(cfg, objective, datasets, out, model_path, "reward", report=report)
    final = export(best, model_path, out, cfg, tokenizer)
    metrics = read_metrics(out / "metrics.jsonl")
    plot_curve(metrics, out / "training_curve.png")
    steps, best_state = [m for m in metrics if "train_loss" in m], checkpoints.state_of(best)
    summary = {"data": counts, "best_step": best_state["step"],
               "first_loss": steps[0]["train_loss"], "last_loss": steps[-1]["train_loss"],
               "val_loss": best_state["metrics"]["val_loss"], "val_accuracy": best_state["metrics"]["val_accuracy"],
               "heldout": heldout(final, cfg, {r["id"] for r in val}, out / "val_pairs.jsonl"), "final": str(final)}
    write_manifest(out, cfg.model_dump(mode="json"), [], model=model_path, data_sha256=sha256_path(cfg.data.path),
                   summary=summary)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}))
    h = summary["heldout"]
    groups = "".join(f"; by {name}: " + ", ".join(f"{k} {v['accuracy']:.2f} (n={v['n']})" for k, v in h[key].items())
                     for key, name in (("by_head", "head"), ("by_kind", "rejected kind")) if len(h[key]) > 1)
    print(f"reward: held-out accuracy {h['accuracy']:.3f} [{h['ci_low']:.3f}, {h['ci_high']:.3f}] (n={h['n']})"
          f"{groups} (best step {summary['best_step']}) -> {final}")
    return summary


def heldout(final: Path, cfg: RewardConfig, ids: set, path: Path) -> dict:
    """The exported model on the validation pairs (none trained on; they chose the checkpoint): accuracy (the
    pair's head scores chosen above rejected) with its exact 95% binomial interval, the same by head and by
    rejected_kind where the pairs name one, and every pair with its margin in `path`, the wrong ones first."""
    from scipy.stats import binomtest
    pairs = [p for p in preferences.train_val(cfg.data, cfg.seed)[1] if p["id"] in ids]
    model = RewardModel(final, max_len=cfg.data.max_len)
    heads = [model.names.index(p.get("dimension", model.names[0])) for p in pairs]
    prompts = [p["prompt"] for p in pairs]
    rows = torch.arange(len(pairs))
    margins = (model.score_heads(prompts, [p["chosen"] for p in pairs])[rows, heads]
               - model.score_heads(prompts, [p["rejected"] for p in pairs])[rows, heads]).tolist()
    scored = sorted(({"id": p["id"], "margin": m, "right": m > 0, "head": model.names[h],
                      "rejected_kind": p.get("rejected_kind"), "prompt": p["prompt"][-1]["content"],
                      "chosen": p["chosen"], "rejected": p["rejected"]}
                     for p, m, h in zip(pairs, margins, heads)), key=lambda r: r["margin"])
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in scored), encoding="utf-8")

    def accuracy(group: list[dict]) -> dict:
        right = sum(r["right"] for r in group)
        ci = binomtest(right, len(group)).proportion_ci(0.95)
        return {"n": len(group), "accuracy": right / len(group), "ci_low": ci.low, "ci_high": ci.high}
    def by(key: str) -> dict:
        return {k: accuracy([r for r in scored if r[key] == k]) for k in sorted({r[key] for r in scored} - {None})}
    return {**accuracy(scored), "by_head": by("head"), "by_kind": by("rejected_kind")}


class RewardModel:
    """Load a trained reward model; score(prompts, responses) -> weighted sum of the head scores."""

    def __init__(self, path: str | Path, device: str = "cpu", max_len: int = 1024):
        self.tokenizer = load_tokenizer(str(path))
        self.model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True).to(device).eval()
        heads = json.loads((Path(path) / HEADS_FILE).read_text())["heads"]
        self.names, self.weights = list(heads), torch.tensor(list(heads.values()), device=device)
        self.max_len = max_len

    @torch.inference_mode()
    def score_heads(self, prompts: list, responses: list[str], batch_size: int = 16) -> torch.Tensor:
        """[N, heads] raw scores; a prompt is a message list or a user string."""
        rows = []
        for prompt, response in zip(prompts, responses):
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            rows.append(render(self.tokenizer, messages + [{"role": "assistant", "content": response}],
                               self.max_len)[0])
        out = []
        for i in range(0, len(rows), batch_size):
            chunk = rows[i:i + batch_size]
            width = max(map(len, chunk))
            pad = self.tokenizer.pad_token_id
            ids = torch.tensor([r + [pad] * (width - len(r)) for r in chunk], device=self.weights.device)
            attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in chunk], device=ids.device)
            out.append(self.model(input_ids=ids, attention_mask=attention).logits.float())
        return torch.cat(out)

    def score(self, prompts: list, responses: list[str], batch_size: int = 16) -> list[float]:
        return (self.score_heads(prompts, responses, batch_size) @ self.weights).tolist()
