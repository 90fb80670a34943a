"""The SFT loop that runs on every Ray Train worker, in the shape of Ray's examples: setup_model,
setup_data, then train steps with evaluation, checkpoints and early stopping. DeepSpeed carries ZeRO,
mixed precision, gradient accumulation and clipping; the optimizer is torch AdamW and the schedule
transformers' warmup + cosine/linear.

Every worker trains on its own part of the Ray Data training set (`get_dataset_shard("train_<rank>")`,
split once by the driver), buffered one epoch at a time; the number of steps is agreed across workers
(the minimum), so collectives never wait on a worker that ran out of data.
"""
from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist

from app.models import count_parameters
from app.train import checkpoints
from app.train.data import micro_batches
from app.train.deepspeed import build_ds_config
from app.train.model import build_model, trainable_state_dict


def _agree(value: float, op=dist.ReduceOp.MIN) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=op)
    return t.item()


def setup_data(a: SimpleNamespace, pad_id: int) -> tuple[list[dict], list[dict]]:
    import ray.train
    rank = ray.train.get_context().get_world_rank()
    rows = lambda name: [dict(r) for r in ray.train.get_dataset_shard(f"{name}_{rank}").iter_rows()]  # noqa
    train = rows("train")
    val = micro_batches(rows("val"), a.micro_batch_size, a.max_len, False, 0, 0, pad_id, drop_last=False) \
        if a.has_val else []
    return train, val


def setup_engine(a: SimpleNamespace, model, total_steps: int):
    import deepspeed
    from transformers import get_scheduler
    ds_config = build_ds_config(a.micro_batch_size, a.grad_accum, a.grad_clip, a.zero_stage, a.precision,
                                a.offload, a.lr, tuple(a.betas), a.weight_decay)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = None if a.offload else torch.optim.AdamW(params, lr=a.lr, betas=tuple(a.betas),
                                                          weight_decay=a.weight_decay)
    schedule = lambda opt: get_scheduler(a.schedule if a.schedule != "constant" else "constant_with_warmup",  # noqa
                                         opt, num_warmup_steps=a.warmup_steps, num_training_steps=total_steps)
    engine, _, _, scheduler = deepspeed.initialize(model=model, model_parameters=params, optimizer=optimizer,
                                                   lr_scheduler=schedule, config=ds_config)
    return engine, scheduler


@torch.no_grad()
def evaluate(engine, val: list[dict]) -> tuple[float, float]:
    """(validation loss per assistant token, perplexity), summed over all workers."""
    engine.eval()
    n = int(_agree(len(val), dist.ReduceOp.MAX))
    total = torch.zeros(2, dtype=torch.float64)
    for i in range(n):  # every rank runs the same number of forwards (ZeRO-3 gathers in each)
        batch = {k: v for k, v in val[min(i, len(val) - 1)].items() if k != "_real_tokens"}
        loss = engine(**{k: v.to(engine.device) for k, v in batch.items()}).loss.double().cpu()
        tokens = (batch["labels"][:, 1:] != -100).sum().double()
        if i < len(val):
            total += torch.stack([loss * tokens, tokens])
    dist.all_reduce(total)
    engine.train()
    mean = (total[0] / total[1]).item() if total[1] > 0 else float("nan")
    return mean, math.exp(min(mean, 50))


def save_checkpoint(engine, a: SimpleNamespace, pos: dict, metrics: dict) -> None:
    """Every rank: DeepSpeed states and its RNG; rank 0: trainable weights (safetensors). Then the
    rank's manifest and complete marker, and one ray.train.report that Ray merges into one folder."""
    import ray.train
    rank = dist.get_rank()
    weights = trainable_state_dict(engine.module, a.zero_stage)  # a collective under ZeRO-3
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        engine.save_checkpoint(str(folder / "ds"), tag="state", client_state={"position": dict(pos)},
                               exclude_frozen_parameters=True)  # LoRA: not the frozen base weights again
        torch.save(checkpoints.rng_state(), folder / f"rng-rank{rank}.pt")
        if rank == 0:
            from safetensors.torch import save_file
            save_file({k: v.contiguous() for k, v in weights.items()}, folder / "trainable.safetensors")
        checkpoints.finish(folder, rank, dist.get_world_size(), {**pos, "metrics": metrics, "identity": a.identity})
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def restore(engine, a: SimpleNamespace) -> dict:
    """Load the latest complete checkpoint (if any) into the engine; returns the saved data position."""
    import ray.train
    ckpt = ray.train.get_checkpoint()
    folder = checkpoints.pick_resume(Path(ckpt.path) if ckpt else None) if ckpt else None
    if folder is None:
        return {"step": 0, "epoch": 0, "micro": 0, "best_val": float("inf"), "bad_evals": 0, "val_loss": None}
    _, client = engine.load_checkpoint(str(folder / "ds"), tag="state", load_module_strict=False)
    checkpoints.set_rng_state(torch.load(folder / f"rng-rank{dist.get_rank()}.pt", weights_only=False))
    return client["position"]


def stream(train: list[dict], a: SimpleNamespace, pad_id: int, per_epoch: int, epoch: int, micro: int):
    """(micro-batch, position after it) from a data position on, epoch after epoch."""
    while True:
        batches = micro_batches(train, a.micro_batch_size, a.max_len, a.packing, a.seed, epoch, pad_id)[:per_epoch]
        for i in range(micro, len(batches)):
            yield batches[i], ((epoch, i + 1) if i + 1 < len(batches) else (epoch + 1, 0))
        epoch, micro = epoch + 1, 0


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    a = SimpleNamespace(**config)
    torch.manual_seed(a.seed + ray.train.get_context().get_world_rank())
    model, pad_id = build_model(a)
    counts = count_parameters(model)  # before ZeRO-3 partitions the parameters
    train, val = setup_data(a, pad_id)
    n_micro = len(micro_batches(train, a.micro_batch_size, a.max_len, a.packing, a.seed, 0, pad_id))
    steps_per_epoch = int(_agree(n_micro)) // a.grad_accum
    if steps_per_epoch == 0:
        raise RuntimeError("a worker has less than one optimizer step of data: lower micro_batch_size or grad_accum")
    total = a.max_steps or a.epochs * steps_per_epoch
    patience = a.patience or 10 ** 9
    engine, scheduler = setup_engine(a, model, total)
    pos = restore(engine, a)
    logger = start_logging(a, *counts) if dist.get_rank() == 0 else None
    if pos["step"] >= total or pos["bad_evals"] >= patience:
        return
    if pos["step"] == 0 and a.has_val:  # the "before" figure
        loss, ppl = evaluate(engine, val)
        emit({"step": 0, "val_loss": loss, "val_ppl": ppl}, logger)
    t0, tokens, losses = time.time(), 0, []
    for batch, (pos["epoch"], pos["micro"]) in stream(train, a, pad_id, steps_per_epoch * a.grad_accum,
                                                      pos["epoch"], pos["micro"]):
        batch = dict(batch)
        tokens += batch.pop("_real_tokens")
        loss = engine(**{k: v.to(engine.device) for k, v in batch.items()}).loss
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
        if pos["micro"] % a.grad_accum:
            continue
        pos["step"] += 1
        step = pos["step"]
        elapsed = time.time() - t0
        metrics = {"step": step, "epoch": pos["epoch"], "train_loss": sum(losses) / len(losses),
                   "lr": scheduler.get_last_lr()[0], "tokens": tokens * dist.get_world_size(),
                   "elapsed_s": elapsed, "tokens_per_s": tokens * dist.get_world_size() / max(elapsed, 1e-9)}
        losses = []
        stop = step >= total
        if a.has_val and (step % a.eval_every == 0 or step % a.save_every == 0 or stop):
            metrics["val_loss"], metrics["val_ppl"] = evaluate(engine, val)
            improved = metrics["val_loss"] < pos["best_val"] - 1e-6
            pos["best_val"] = min(pos["best_val"], metrics["val_loss"])
            pos["bad_evals"] = 0 if improved else pos["bad_evals"] + 1
            pos["val_loss"] = metrics["val_loss"]
            stop = stop or pos["bad_evals"] >= patience
        if step % a.save_every == 0 or stop:
            save_checkpoint(engine, a, pos, metrics)
            logger and logger.log(metrics)
        elif step % a.log_every == 0 or "val_loss" in metrics:
            emit(metrics, logger)
        if stop:
            break
    logger and logger.close()


def start_logging(a: SimpleNamespace, trainable: int, total: int):
    from app.train.metrics import MetricsLogger
    logger = MetricsLogger(a.out_dir, a.name, a.config, a.wandb, a.tensorboard)
    print(f"trainable parameters: {trainable:,} of {total:,} ({trainable / total:.2%})", flush=True)
    logger.log({"step": 0, "trainable_params": trainable, "total_params": total, "trainable_share": trainable / total})
    return logger


def emit(metrics: dict, logger) -> None:
    """Report to Ray Train (a barrier: every rank calls it) and, on rank 0, to the logs."""
    import ray.train
    ray.train.report(metrics)
    if logger is not None:
        logger.log(metrics)
