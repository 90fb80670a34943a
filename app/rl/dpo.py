"""DPO (and IPO) on Ray Train workers with DeepSpeed, the SFT way: same model methods (full, LoRA, QLoRA),
same checkpoints, exact resume, automatic restart and export as jobs.sft.

    python -m jobs.dpo jobs/configs/dpo_demo.yaml
    python -m jobs.dpo jobs/configs/dpo_tiny.yaml           # tests

The driver reads preference pairs (ours or HH-RLHF, app.rl.preferences), splits them by a stable hash,
tokenizes them (the loss covers only the final answer's tokens) and hands each worker its part through
Ray Data. Each worker first scores its pairs with the explicit reference model (`dpo.reference`, default
the starting model), frees it, then trains the policy on app.rl.losses.dpo_loss. Validation reports the
DPO loss, preference accuracy (implicit reward of chosen > rejected) and the mean reward margin.
Outputs as SFT: runs/dpo-<name>/final (+ adapter/), metrics.jsonl, training_curve.png, manifest.json.
"""
from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Literal

import torch
import torch.distributed as dist

from app.config import Config, JobConfig, UserError
from app.rl import losses
from app.train.config import (CheckpointSection, EvalSection, LoraSection, OptimSection, PromptTuningSection,
                              ScalingSection, TrainSection)


class PreferenceData(Config):
    path: str = "runs/pipeline-demo/data_prefs/train"  # a data stage output, {prompt, chosen, rejected} JSONL, or HH-RLHF (.jsonl.gz)
    val_share: float = 0.1
    max_len: int = 512
    max_train_pairs: int | None = None
    max_val_pairs: int | None = 64


class DPOSection(Config):
    beta: float = 0.1
    loss: Literal["sigmoid", "ipo"] = "sigmoid"
    reference: str | None = None   # the frozen reference model; default: the model training starts from


class DPOConfig(JobConfig):
    model: str = "runs/sft-demo/final"
    init_from: str | None = None
    trust_remote_code: bool = False
    method: Literal["full", "lora", "qlora"] = "lora"
    lora: LoraSection = LoraSection(dropout=0.0)
    prompt_tuning: PromptTuningSection = PromptTuningSection()   # unused by DPO; keeps SFT's loop arguments
    data: PreferenceData = PreferenceData()
    dpo: DPOSection = DPOSection()
    optim: OptimSection = OptimSection(lr=5e-5)
    train: TrainSection = TrainSection()
    eval: EvalSection = EvalSection()
    checkpoint: CheckpointSection = CheckpointSection()
    scaling: ScalingSection = ScalingSection()
    wandb: bool = True
    tensorboard: bool = True


def _pad(seqs: list[list[int]], pad: int) -> torch.Tensor:
    width = max(map(len, seqs))
    return torch.tensor([list(s) + [pad] * (width - len(s)) for s in seqs])


def collate(rows: list[dict], pad_id: int) -> dict:
    """Chosen sequences then rejected ones, right-padded: input ids, attention and answer-token masks."""
    ids = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    masks = [r["chosen_mask"] for r in rows] + [r["rejected_mask"] for r in rows]
    return {"input_ids": _pad(ids, pad_id), "attention_mask": _pad([[1] * len(s) for s in ids], 0),
            "answer_mask": _pad(masks, 0)}


def sequence_logprobs(model, batch: dict) -> torch.Tensor:
    """Summed log-probs of each sequence's answer tokens: [2B] (chosen first)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    token_lp = losses.gather_logprobs(logits, batch["input_ids"][:, 1:])
    return (token_lp * batch["answer_mask"][:, 1:]).sum(1)


def micro_batches(rows: list[dict], size: int, seed: int, epoch: int, shuffle: bool = True) -> list[list[dict]]:
    import random
    rows = sorted(rows, key=lambda r: r["id"])
    if shuffle:
        random.Random(seed * 1000 + epoch).shuffle(rows)
    return [rows[i:i + size] for i in range(0, len(rows) - (size - 1 if shuffle else 0), size)]


@torch.no_grad()
def add_reference_logprobs(rows: list[dict], reference: str, pad_id: int, size: int) -> None:
    """Score every pair once with the frozen reference (loaded here, freed after)."""
    from app.models import load_policy
    model = load_policy(reference)[0]
    for batch_rows in micro_batches(rows, size, 0, 0, shuffle=False):
        lp = sequence_logprobs(model, collate(batch_rows, pad_id))
        for i, r in enumerate(batch_rows):
            r["ref_chosen"], r["ref_rejected"] = float(lp[i]), float(lp[len(batch_rows) + i])
    del model


def dpo_batch_loss(engine, rows: list[dict], a: SimpleNamespace, pad_id: int):
    batch = {k: v.to(engine.device) for k, v in collate(rows, pad_id).items()}
    lp = sequence_logprobs(engine, batch)
    n = len(rows)
    ref = torch.tensor([[r["ref_chosen"] for r in rows], [r["ref_rejected"] for r in rows]], device=lp.device)
    return losses.dpo_loss(lp[:n], lp[n:], ref[0], ref[1], a.beta, a.loss_variant)


@torch.no_grad()
def evaluate(engine, val: list[dict], a: SimpleNamespace, pad_id: int) -> dict:
    """DPO loss, preference accuracy and mean reward margin over every worker's validation pairs."""
    from app.train.loop import _agree
    engine.eval()
    batches = micro_batches(val, a.micro_batch_size, 0, 0, shuffle=False)
    n = int(_agree(len(batches), dist.ReduceOp.MAX))
    total = torch.zeros(4, dtype=torch.float64)  # loss * pairs, correct, margin sum, pairs
    for i in range(n):  # the same number of forwards on every rank
        rows = batches[min(i, len(batches) - 1)] if batches else val[:1]
        loss, chosen, rejected = dpo_batch_loss(engine, rows, a, pad_id)
        if i < len(batches):
            total += torch.tensor([float(loss) * len(rows), float((chosen > rejected).sum()),
                                   float((chosen - rejected).sum()), len(rows)], dtype=torch.float64)
    dist.all_reduce(total)
    engine.train()
    pairs = max(total[3].item(), 1)
    return {"val_loss": total[0].item() / pairs, "val_accuracy": total[1].item() / pairs,
            "val_margin": total[2].item() / pairs}


def train_loop_per_worker(config: dict) -> None:
    """SFT's loop shape (app.train.loop) with the DPO objective on pairs."""
    import ray.train
    from app.train.loop import _agree, emit, restore, save_checkpoint, setup_engine, start_logging
    from app.train.model import build_model
    from app.models import count_parameters
    a = SimpleNamespace(**config)
    rank = ray.train.get_context().get_world_rank()
    torch.manual_seed(a.seed + rank)
    model, pad_id = build_model(a)
    counts = count_parameters(model)
    rows = lambda name: [dict(r) for r in ray.train.get_dataset_shard(f"{name}_{rank}").iter_rows()]  # noqa
    train, val = rows("train"), rows("val") if a.has_val else []
    add_reference_logprobs(train + val, a.reference, pad_id, a.micro_batch_size)
    steps_per_epoch = int(_agree(len(micro_batches(train, a.micro_batch_size, a.seed, 0)))) // a.grad_accum
    if steps_per_epoch == 0:
        raise RuntimeError("a worker has less than one optimizer step of pairs: lower micro_batch_size")
    total = a.max_steps or a.epochs * steps_per_epoch
    patience = a.patience or 10 ** 9
    engine, scheduler = setup_engine(a, model, total)
    pos = restore(engine, a)
    logger = start_logging(a, *counts) if dist.get_rank() == 0 else None
    if pos["step"] >= total or pos["bad_evals"] >= patience:
        return
    if pos["step"] == 0 and a.has_val:
        emit({"step": 0, **evaluate(engine, val, a, pad_id)}, logger)
    t0, seen = time.time(), []
    while pos["step"] < total:
        batches = micro_batches(train, a.micro_batch_size, a.seed, pos["epoch"])[:steps_per_epoch * a.grad_accum]
        for i in range(pos["micro"], len(batches)):
            loss, chosen, rejected = dpo_batch_loss(engine, batches[i], a, pad_id)
            engine.backward(loss)
            engine.step()
            seen.append((float(loss), float((chosen > rejected).float().mean()), float((chosen - rejected).mean())))
            pos["micro"] = i + 1
            if pos["micro"] % a.grad_accum:
                continue
            pos["step"] += 1
            metrics = {"step": pos["step"], "epoch": pos["epoch"], "train_loss": sum(s[0] for s in seen) / len(seen),
                       "train_accuracy": sum(s[1] for s in seen) / len(seen),
                       "train_margin": sum(s[2] for s in seen) / len(seen), "lr": scheduler.get_last_lr()[0],
                       "elapsed_s": time.time() - t0}
            seen = []
            stop = pos["step"] >= total
            if a.has_val and (pos["step"] % a.eval_every == 0 or pos["step"] % a.save_every == 0 or stop):
                metrics.update(evaluate(engine, val, a, pad_id))
                improved = metrics["val_loss"] < pos["best_val"] - 1e-6
                pos["best_val"] = min(pos["best_val"], metrics["val_loss"])
                pos["bad_evals"] = 0 if improved else pos["bad_evals"] + 1
                pos["val_loss"] = metrics["val_loss"]
                stop = stop or pos["bad_evals"] >= patience
            if pos["step"] % a.save_every == 0 or stop:
                save_checkpoint(engine, a, pos, metrics)
                logger and logger.log(metrics)
            elif pos["step"] % a.log_every == 0 or "val_loss" in metrics:
                emit(metrics, logger)
            if stop:
                logger and logger.close()
                return
        pos["epoch"], pos["micro"] = pos["epoch"] + 1, 0
    logger and logger.close()


def build_datasets(cfg: DPOConfig, model_path: str) -> tuple[dict, dict]:
    """({train_<rank>, val_<rank>} Ray datasets of tokenized pairs, counts)."""
    import ray
    from app.models import load_tokenizer
    from app.rl.preferences import read_pairs, split, tokenize
    pairs, skipped = read_pairs(cfg.data.path)
    train_pairs, val_pairs = split(pairs, cfg.data.val_share, cfg.seed)
    tokenizer = load_tokenizer(model_path)
    heads = sorted({p.get("dimension", "preference") for p in pairs})  # DPO learns every dimension at once
    train, dropped = tokenize(tokenizer, train_pairs[:cfg.data.max_train_pairs], heads, cfg.data.max_len)
    val, dropped_val = tokenize(tokenizer, val_pairs[:cfg.data.max_val_pairs], heads, cfg.data.max_len)
    n = cfg.scaling.num_workers
    if len(train) < n * cfg.train.micro_batch_size:
        raise UserError(f"{len(train)} usable training pairs in {cfg.data.path}: fewer than one micro-batch per worker")
    datasets = {f"train_{i}": part for i, part in enumerate(ray.data.from_items(train).split(n, equal=True))}
    if len(val) >= n:
        datasets.update({f"val_{i}": part for i, part in enumerate(ray.data.from_items(val).split(n, equal=True))})
    counts = {"pairs": len(pairs), "skipped": skipped, "train": len(train), "val": len(val),
              "too_long": dropped + dropped_val}
    return datasets, counts


def run(cfg: DPOConfig) -> dict:
    from pathlib import Path
    from app.cluster import init_ray
    from app.models import resolve
    from app.runinfo import sha256_path, write_manifest
    from app.train import checkpoints
    from app.train.export import export
    from app.train.metrics import plot_curve, read_metrics
    from app.train.sft import check_model, check_resume, fit, loop_config
    if not Path(cfg.data.path).exists():
        raise UserError(f"preference data {cfg.data.path} not found (python -m jobs.demo_data writes the demo's)")
    out = cfg.out("dpo")
    model_path = check_model(cfg)
    run_dir = (out / "ray" / "train").resolve()
    check_resume(run_dir, cfg, model_path)
    init_ray()
    datasets, counts = build_datasets(cfg, model_path)
    has_val = "val_0" in datasets
    loop = {**loop_config(cfg, model_path, out, has_val), "beta": cfg.dpo.beta, "loss_variant": cfg.dpo.loss,
            "reference": str(resolve(cfg.dpo.reference)) if cfg.dpo.reference else model_path}
    best = fit(cfg, train_loop_per_worker, loop, datasets, run_dir)
    final = export(best, model_path, out, cfg.method, cfg.lora.model_dump(), 0)
    metrics = read_metrics(out / "metrics.jsonl")
    plot_curve(metrics, out / "training_curve.png")
    val = [m for m in metrics if "val_accuracy" in m]
    summary = {"data": counts, "best_step": checkpoints.state_of(best)["step"], "final": str(final),
               "val_before": {k: val[0][k] for k in ("val_loss", "val_accuracy", "val_margin")} if val else None,
               "val_after": {k: val[-1][k] for k in ("val_loss", "val_accuracy", "val_margin")} if val else None}
    write_manifest(out, cfg.model_dump(mode="json"), [], model=model_path, data_sha256=sha256_path(cfg.data.path),
                   **summary)
    if val:
        print(f"dpo: val loss {val[0]['val_loss']:.4f} -> {val[-1]['val_loss']:.4f}, accuracy "
              f"{val[0]['val_accuracy']:.2f} -> {val[-1]['val_accuracy']:.2f}, margin "
              f"{val[0]['val_margin']:.3f} -> {val[-1]['val_margin']:.3f}")
    print(f"dpo: -> {final}")
    return summary
