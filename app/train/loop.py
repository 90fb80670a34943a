"""The one training loop of every offline trainer (SFT, DPO, the reward model), run on each Ray Train worker:
build the model, read this worker's data part, then optimizer steps with evaluation, early stopping,
checkpoints and exact resume. DeepSpeed carries ZeRO, mixed precision, gradient accumulation and clipping;
the optimizer is torch AdamW and the schedule transformers' warmup + cosine/linear/constant.

    python -m jobs.sft jobs/configs/sft_demo.yaml        # app/train/sft.py: next-token loss on assistant tokens
    python -m jobs.dpo jobs/configs/dpo_demo.yaml        # app/train/dpo.py: the DPO loss on preference pairs
    python -m jobs.reward jobs/configs/reward_demo.yaml  # app/train/reward.py: the pairwise ranking loss

What differs between them is an `Objective` (the model, how rows become micro-batches, the loss of one
micro-batch); the trainer module's `objective(cfg, run)` builds it on the worker from the job's pydantic
config, re-validated there. Every worker trains on its own part of the Ray Data training set
(`train_<rank>`, split once by the driver, app/train/fit.py); the number of steps is agreed across workers
(the minimum), so collectives never wait on a worker that ran out of data.

The loop reads its data part, reports and finds its last checkpoint through a `Session`: Ray Train's on its
workers (`train_loop_per_worker`), or, for a one-worker sweep trial that trains on its own Tune actor, the
in-process one of app/train/fit.py.
"""
from __future__ import annotations

import importlib
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import ray.train
import torch
import torch.distributed as dist

from app.models import count_parameters
from app.precision import train_precision
from app.train import checkpoints
from app.train.deepspeed import build_ds_config, import_deepspeed
from app.train.logger import MetricsLogger
from app.train.model import trainable_state_dict


@dataclass
class Step:
    """One micro-batch through the objective."""
    loss: torch.Tensor            # what backward sees
    stats: dict[str, float]       # logged as train_<k> (mean over the step's micro-batches) and val_<k>
    weight: float                 # what validation means weigh by (target tokens, pairs)
    tokens: int = 0               # non-padding tokens, for throughput


@dataclass
class Objective:
    """What one trainer adds to the loop."""
    model: torch.nn.Module                               # ready for DeepSpeed (peft applied, frozen parts frozen)
    batches: Callable[[list[dict], int, bool], list]     # (rows, epoch, train) -> that epoch's micro-batches
    step: Callable[[object, object], Step]               # (engine, micro-batch) -> Step
    prepare: Callable[[list[dict]], None] = lambda rows: None  # once per worker, before training (DPO: reference)
    derive: Callable[[dict], dict] = lambda val: {}      # extra validation figures from the means (SFT: val_ppl)
    answer: Callable[[object, list[dict]], list[dict]] | None = None  # (engine, val rows) -> app.metrics
    # item_scores of greedy answers against the references (SFT's eval.generate)


@dataclass
class Session:
    """What the loop needs from whoever runs it."""
    shard: Callable[[str], list[dict]]            # "train" / "val" -> this worker's rows
    report: Callable[[dict, str | None], None]    # (metrics, checkpoint folder or None): every rank calls it
    checkpoint: Callable[[], Path | None]         # the latest reported checkpoint folder (resume), if any


def ray_train_session() -> Session:
    """On a Ray Train worker: its dataset shard, ray.train.report (Ray merges every rank's checkpoint folder
    into one under the run's storage) and ray.train.get_checkpoint."""
    def shard(name: str) -> list[dict]:
        return [dict(r) for r in ray.train.get_dataset_shard(f"{name}_{dist.get_rank()}").iter_rows()]

    def report(metrics: dict, folder: str | None) -> None:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if folder else None)

    def checkpoint() -> Path | None:
        ckpt = ray.train.get_checkpoint()
        return Path(ckpt.path) if ckpt else None
    return Session(shard, report, checkpoint)


@dataclass
class Run:
    """What the driver decided for this run, passed to every worker beside the job's config."""
    model_path: str
    out_dir: str
    has_val: bool
    identity: dict                # what a checkpoint must share with the run that resumes it
    job_type: str                 # sft | dpo | reward: wandb's job type
    extra: dict = field(default_factory=dict)  # trainer-specific facts (DPO: the reference model's path)


def agree(value: float, op=dist.ReduceOp.MIN) -> float:
    """The same number on every rank (the minimum by default)."""
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=op)
    return t.item()


def grad_norm(module: torch.nn.Module) -> float | None:
    """The total L2 norm of the gradients DeepSpeed is about to step on (already averaged over ranks at the
    accumulation boundary), for ZeRO-0, whose float32 path clips without keeping the norm (ZeRO-1/2/3 report
    it through engine.get_global_grad_norm)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else None


def setup_engine(cfg, model, total_steps: int):
    from transformers import get_scheduler
    o = cfg.optim
    ds_config = build_ds_config(cfg.train.micro_batch_size, o.grad_accum, o.grad_clip, cfg.scaling.zero_stage,
                                train_precision(cfg.train.precision), cfg.scaling.offload, o.lr, tuple(o.betas),
                                o.weight_decay)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = None if cfg.scaling.offload else torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas),
                                                                    weight_decay=o.weight_decay)
    schedule = lambda opt: get_scheduler(o.schedule if o.schedule != "constant" else "constant_with_warmup",  # noqa
                                         opt, num_warmup_steps=o.warmup_steps, num_training_steps=total_steps)
    engine, _, _, scheduler = import_deepspeed().initialize(model=model, model_parameters=params, optimizer=optimizer,
                                                   lr_scheduler=schedule, config=ds_config)
    return engine, scheduler


@torch.no_grad()
def evaluate(engine, objective: Objective, val: list) -> dict:
    """Validation means (weighted by each micro-batch's weight) over every worker's part: val_<k>."""
    engine.eval()
    n = int(agree(len(val), dist.ReduceOp.MAX))
    keys, totals = None, None
    for i in range(n):  # every rank runs the same number of forwards (ZeRO-3 gathers in each)
        result = objective.step(engine, val[min(i, len(val) - 1)])
        keys = keys or sorted(result.stats)
        if totals is None:
            totals = torch.zeros(len(keys) + 1, dtype=torch.float64)
        if i < len(val):
            totals += torch.tensor([result.stats[k] * result.weight for k in keys] + [result.weight],
                                   dtype=torch.float64)
    dist.all_reduce(totals)
    engine.train()
    weight = totals[-1].item()
    means = {f"val_{k}": totals[j].item() / weight if weight > 0 else float("nan") for j, k in enumerate(keys)}
    return {**means, **objective.derive(means)}


@torch.no_grad()
def answer_scores(engine, objective: Objective, rows: list[dict]) -> dict:
    """ROUGE-L (mean) and corpus BLEU of greedy answers to `rows` over every worker's part: the checkpoint's
    generation evaluation (seed 001: every checkpoint triggers an evaluation)."""
    from app.metrics import bleu_from_stats
    engine.eval()
    items = objective.answer(engine, rows) if rows else []
    engine.train()
    bleu_stats = [sum(col) for col in zip(*(i["bleu_stats"] for i in items))] or [0] * 10
    totals = torch.tensor([sum(i["rougeL"] for i in items), len(items), *bleu_stats], dtype=torch.float64)
    dist.all_reduce(totals)
    n = totals[1].item()
    return {"val_rougeL": totals[0].item() / n, "val_bleu": bleu_from_stats(totals[2:].tolist())} if n else {}


def save_checkpoint(engine, cfg, run: Run, pos: dict, metrics: dict, session: Session) -> None:
    """Every rank: DeepSpeed states and its RNG; rank 0: trainable weights (safetensors). Then the
    rank's manifest and complete marker, and one report of the folder."""
    rank = dist.get_rank()
    weights = trainable_state_dict(engine.module, cfg.scaling.zero_stage)  # a collective under ZeRO-3
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        engine.save_checkpoint(str(folder / "ds"), tag="state", client_state={"position": dict(pos)},
                               exclude_frozen_parameters=True)  # LoRA: not the frozen base weights again
        torch.save(checkpoints.rng_state(), folder / f"rng-rank{rank}.pt")
        if rank == 0:
            from safetensors.torch import save_file
            save_file({k: v.contiguous() for k, v in weights.items()}, folder / "trainable.safetensors")
        checkpoints.finish(folder, rank, dist.get_world_size(), {**pos, "metrics": metrics, "identity": run.identity})
        session.report(metrics, tmp)


def restore(engine, session: Session) -> dict:
    """Load the latest complete checkpoint (if any) into the engine; returns the saved data position."""
    folder = checkpoints.pick_resume(session.checkpoint())
    if folder is None:
        return {"step": 0, "epoch": 0, "micro": 0, "best_val": float("inf"), "bad_evals": 0, "val_loss": None}
    _, client = engine.load_checkpoint(str(folder / "ds"), tag="state", load_module_strict=False)
    checkpoints.set_rng_state(torch.load(folder / f"rng-rank{dist.get_rank()}.pt", weights_only=False))
    return client["position"]


def stream(objective: Objective, train: list[dict], per_epoch: int, epoch: int, micro: int):
    """(micro-batch, position after it) from a data position on, epoch after epoch."""
    while True:
        batches = objective.batches(train, epoch, True)[:per_epoch]
        for i in range(micro, len(batches)):
            yield batches[i], ((epoch, i + 1) if i + 1 < len(batches) else (epoch + 1, 0))
        epoch, micro = epoch + 1, 0


def train_loop_per_worker(config: dict) -> None:
    """On a Ray Train worker. config: {"objective": "module:function" of an objective(cfg_json, run) factory,
    "cfg": the job's config as JSON, "run": a Run as a dict} (app/train/fit.py)."""
    train(config, ray_train_session())


def train(config: dict, session: Session) -> None:
    """The loop (train_loop_per_worker's config), reporting through `session`."""
    cfg_json, run = config["cfg"], Run(**config["run"])
    torch.manual_seed(cfg_json["seed"] + dist.get_rank())
    module, name = config["objective"].split(":")
    cfg, objective = getattr(importlib.import_module(module), name)(cfg_json, run)
    counts = count_parameters(objective.model)  # before ZeRO-3 partitions the parameters
    train, val_rows = session.shard("train"), session.shard("val") if run.has_val else []
    objective.prepare(train + val_rows)
    val = objective.batches(val_rows, 0, False) if run.has_val else []
    generating = bool(objective.answer and run.has_val and getattr(cfg.eval, "generate", 0))  # same on all ranks
    answered = val_rows[:cfg.eval.generate] if generating else []
    accum = cfg.optim.grad_accum
    steps_per_epoch = int(agree(len(objective.batches(train, 0, True)))) // accum
    if steps_per_epoch == 0:
        raise RuntimeError("a worker has less than one optimizer step of data: lower train.micro_batch_size "
                           "or optim.grad_accum")
    total = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
    patience = cfg.eval.patience or 10 ** 9
    engine, scheduler = setup_engine(cfg, objective.model, total)
    pos = restore(engine, session)
    logger = start_logging(cfg, run, *counts) if dist.get_rank() == 0 else None
    if pos["step"] >= total or pos["bad_evals"] >= patience:
        return
    if pos["step"] == 0 and run.has_val:  # the "before" figure
        before = {"step": 0, **evaluate(engine, objective, val)}
        emit({**before, **(answer_scores(engine, objective, answered) if generating else {})}, logger, session)
    t0, tokens, seen = time.time(), 0, []
    world = dist.get_world_size()
    for batch, (pos["epoch"], pos["micro"]) in stream(objective, train, steps_per_epoch * accum, pos["epoch"],
                                                      pos["micro"]):
        result = objective.step(engine, batch)
        engine.backward(result.loss)
        own_norm = grad_norm(engine.module) \
            if cfg.scaling.zero_stage == 0 and engine.is_gradient_accumulation_boundary() else None
        engine.step()
        tokens += result.tokens
        seen.append(result.stats)
        if pos["micro"] % accum:
            continue
        pos["step"] += 1
        step, elapsed = pos["step"], time.time() - t0
        metrics = {"step": step, "epoch": pos["epoch"],
                   **{f"train_{k}": sum(s[k] for s in seen) / len(seen) for k in seen[0]},
                   "lr": scheduler.get_last_lr()[0], "tokens": tokens * world, "elapsed_s": elapsed,
                   "tokens_per_s": tokens * world / max(elapsed, 1e-9)}
        norm = engine.get_global_grad_norm()  # before clipping; None where DeepSpeed does not keep it
        norm = own_norm if norm is None else norm
        if norm is not None:
            metrics["grad_norm"] = float(norm)
        seen = []
        stop = step >= total
        if run.has_val and (step % cfg.eval.every == 0 or step % cfg.checkpoint.every == 0 or stop):
            metrics.update(evaluate(engine, objective, val))
            improved = metrics["val_loss"] < pos["best_val"] - 1e-6
            pos["best_val"] = min(pos["best_val"], metrics["val_loss"])
            pos["bad_evals"] = 0 if improved else pos["bad_evals"] + 1
            pos["val_loss"] = metrics["val_loss"]
            stop = stop or pos["bad_evals"] >= patience
        if generating and (step % cfg.checkpoint.every == 0 or stop):
            metrics.update(answer_scores(engine, objective, answered))
        if step % cfg.checkpoint.every == 0 or stop:
            save_checkpoint(engine, cfg, run, pos, metrics, session)
            logger and logger.log(metrics)
        elif "val_loss" in metrics:
            emit(metrics, logger, session)
        elif step % cfg.train.log_every == 0 and logger:
            logger.log(metrics)  # not a Ray Train report: each waits for the controller to take the last
        if stop:
            break
    logger and logger.close()


def start_logging(cfg, run: Run, trainable: int, total: int) -> MetricsLogger:
    logger = MetricsLogger(run.out_dir, cfg.name, cfg.model_dump(mode="json"), cfg.wandb, cfg.tensorboard,
                           run.job_type)
    print(f"trainable parameters: {trainable:,} of {total:,} ({trainable / total:.2%})", flush=True)
    logger.log({"step": 0, "trainable_params": trainable, "total_params": total, "trainable_share": trainable / total})
    return logger


def emit(metrics: dict, logger, session: Session) -> None:
    """Report (on Ray Train a barrier: every rank calls it) and, on rank 0, log. Only validation results and
    checkpoints are reported (and so reach a sweep's scheduler): a Ray Train report waits until the
    controller's poll (every 0.25 s) took the previous one, which a report per step would pay every step."""
    session.report(metrics, None)
    if logger is not None:
        logger.log(metrics)


def perplexity(val: dict) -> dict:
    return {"val_ppl": math.exp(min(val["val_loss"], 50))}
