"""Supervised fine-tuning on Ray Train: the driver side.

    python -m jobs.sft jobs/configs/sft_demo.yaml [key=value ...]
    ray job submit --working-dir . -- python -m jobs.sft jobs/configs/sft_demo.yaml

It checks the config against the model before any worker starts (QLoRA needs CUDA, LoRA target modules
must exist, a checkpoint under output_dir must come from the same model and method), tokenizes the data
stage's train/ and val/ with app/chat.py on Ray Data, runs app/train/loop.py on `scaling.num_workers`
TorchTrainer workers with DeepSpeed, restarts failed workers from the last checkpoint, and finally
exports the best checkpoint as final/ (and adapter/), metrics.jsonl, training_curve.png, manifest.json.
Re-running the same command resumes from the last complete checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path

import ray
import torch

from app.cluster import init_ray
from app.config import UserError
from app.models import resolve
from app.runinfo import sha256_file, write_manifest
from app.train import checkpoints
from app.train.config import SFTConfig
from app.train.data import tokenize_batch
from app.train.export import export
from app.train.metrics import plot_curve, read_metrics


def check_model(cfg: SFTConfig) -> str:
    """Resolve the starting model and validate the method against it; returns its local path."""
    if cfg.method == "qlora" and not (cfg.scaling.use_gpu and torch.cuda.is_available()):
        raise UserError("method=qlora needs CUDA (4-bit bitsandbytes); use method=lora on CPU")
    spec = cfg.model
    if cfg.init_from:
        spec = str(Path(cfg.init_from) / "final") if (Path(cfg.init_from) / "final").is_dir() else cfg.init_from
    path = str(resolve(spec))
    if cfg.method in ("lora", "qlora"):
        from transformers import AutoConfig, AutoModelForCausalLM
        with torch.device("meta"):
            meta = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
        names = {n.rsplit(".", 1)[-1] for n, m in meta.named_modules() if isinstance(m, torch.nn.Linear)}
        missing = [t for t in cfg.lora.target_modules if t not in names]
        if missing:
            raise UserError(f"lora.target_modules {missing} are not linear layers of {spec} "
                            f"(available: {', '.join(sorted(names))})")
    return path


def check_resume(run_dir: Path, cfg: SFTConfig, model_path: str) -> None:
    done = checkpoints.complete_checkpoints(run_dir) if run_dir.is_dir() else []
    if done:
        saved = checkpoints.state_of(done[-1]).get("identity", {})
        if saved and saved != identity(cfg, model_path):
            raise UserError(f"{run_dir} holds checkpoints of another model, method or world size ({saved}); "
                            f"use another output_dir or name")


def identity(cfg: SFTConfig, model_path: str) -> dict:
    """What a checkpoint must share with the run that resumes it."""
    return {"model": model_path, "method": cfg.method, "workers": cfg.scaling.num_workers,
            "zero_stage": cfg.scaling.zero_stage}


def load_split(folder: Path, model_path: str, max_len: int, limit: int | None):
    if not folder.is_dir():
        return None
    ds = ray.data.read_parquet(str(folder))
    if limit is not None:
        ds = ds.limit(limit)
    return ds.map_batches(tokenize_batch, batch_format="numpy", fn_kwargs={"model_path": model_path,
                                                                           "max_len": max_len})


def build_datasets(cfg: SFTConfig, model_path: str) -> dict:
    data = Path(cfg.data.path)
    if not (data / "train").is_dir():
        raise UserError(f"no training data: {data}/train not found (run python -m jobs.data first)")
    train = load_split(data / "train", model_path, cfg.data.max_len, cfg.data.max_train_samples)
    if cfg.data.replay_path and cfg.data.replay_share > 0:
        replay = load_split(Path(cfg.data.replay_path), model_path, cfg.data.max_len, None)
        if replay is None:
            raise UserError(f"data.replay_path {cfg.data.replay_path} is not a folder of SFT Parquet files")
        n = round(train.count() * cfg.data.replay_share / (1 - cfg.data.replay_share))
        train = train.union(replay.random_shuffle(seed=cfg.seed).limit(n))
    train = train.materialize()
    if train.count() == 0:
        raise UserError(f"no usable training rows in {data}/train (every conversation was empty or too long)")
    val = load_split(data / "val", model_path, cfg.data.max_len, cfg.data.max_val_samples)
    val = val.materialize() if val is not None else None
    # One fixed part per worker (split once, here): the same rows reach the same rank on every run and
    # restart, which exact resume needs; each worker streams only its own part.
    n = cfg.scaling.num_workers
    datasets = {f"train_{i}": part for i, part in enumerate(train.split(n, equal=True))}
    if val is not None and val.count() >= n:  # else no validation (each worker needs a part)
        datasets.update({f"val_{i}": part for i, part in enumerate(val.split(n, equal=True))})
    return datasets


def loop_config(cfg: SFTConfig, model_path: str, out: Path, has_val: bool) -> dict:
    """The flat arguments train_loop_per_worker gets (it never sees the config object)."""
    o, t = cfg.optim, cfg.train
    return dict(model_path=model_path, trust_remote_code=cfg.trust_remote_code, method=cfg.method,
                lora_r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                target_modules=cfg.lora.target_modules, num_virtual_tokens=cfg.prompt_tuning.num_virtual_tokens,
                max_len=cfg.data.max_len, packing=getattr(cfg.data, "packing", False), lr=o.lr, weight_decay=o.weight_decay,
                betas=list(o.betas), schedule=o.schedule, warmup_steps=o.warmup_steps, grad_clip=o.grad_clip,
                grad_accum=o.grad_accum, epochs=t.epochs, max_steps=t.max_steps, micro_batch_size=t.micro_batch_size,
                precision=t.precision, gradient_checkpointing=t.gradient_checkpointing, dropout=t.dropout,
                log_every=t.log_every, eval_every=cfg.eval.every, patience=cfg.eval.patience,
                save_every=cfg.checkpoint.every, zero_stage=cfg.scaling.zero_stage, offload=cfg.scaling.offload,
                seed=cfg.seed, has_val=has_val, out_dir=str(out.resolve()), name=cfg.name,
                identity=identity(cfg, model_path), wandb=cfg.wandb, tensorboard=cfg.tensorboard,
                config=cfg.model_dump(mode="json"))


def run(cfg: SFTConfig, callbacks: list | None = None) -> dict:
    """Train; `callbacks` are Ray Train callbacks (a sweep passes Tune's TuneReportCallback)."""
    from app.train.loop import train_loop_per_worker
    out = cfg.out("sft")
    model_path = check_model(cfg)
    run_dir = (out / "ray" / "train").resolve()
    check_resume(run_dir, cfg, model_path)
    init_ray()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # workers read small buffered parts
    ctx.execution_options.preserve_order = True  # same blocks in the same order: same parts every run
    datasets = build_datasets(cfg, model_path)
    best = fit(cfg, train_loop_per_worker, loop_config(cfg, model_path, out, "val_0" in datasets), datasets, run_dir,
               callbacks)
    final = export(best, model_path, out, cfg.method, cfg.lora.model_dump(), cfg.prompt_tuning.num_virtual_tokens)
    return summarize(cfg, out, best, final, model_path)


def fit(cfg: SFTConfig, train_loop, loop: dict, datasets: dict, run_dir: Path, callbacks: list | None = None) -> Path:
    """`train_loop` on Ray Train workers (cfg.scaling), checkpoints under run_dir, restarts on worker failure;
    returns the best complete checkpoint (lowest val loss, else the last). SFT and DPO share it."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    has_val = "val_0" in datasets
    trainer = TorchTrainer(
        train_loop, train_loop_config=loop,
        scaling_config=ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                                     resources_per_worker={"CPU": cfg.scaling.cpus_per_worker}),
        datasets=datasets, dataset_config=DataConfig(datasets_to_split=[]),
        run_config=RunConfig(name="train", storage_path=str(run_dir.parent), callbacks=callbacks or [],
                             failure_config=FailureConfig(max_failures=cfg.scaling.max_failures),
                             checkpoint_config=CheckpointConfig(
                                 num_to_keep=cfg.checkpoint.keep,  # the best by val loss; Ray keeps the latest too
                                 checkpoint_score_attribute="val_loss" if has_val else None,
                                 checkpoint_score_order="min")))
    trainer.fit()
    kept = checkpoints.complete_checkpoints(run_dir)
    if not kept:
        raise RuntimeError(f"training finished without a complete checkpoint under {run_dir}")
    scored = [c for c in kept if checkpoints.state_of(c).get("val_loss") is not None]
    return min(scored, key=lambda c: checkpoints.state_of(c)["val_loss"]) if scored else kept[-1]


def summarize(cfg: SFTConfig, out: Path, best: Path, final: Path, model_path: str) -> dict:
    metrics = read_metrics(out / "metrics.jsonl")
    plot_curve(metrics, out / "training_curve.png")
    val = [m for m in metrics if "val_loss" in m]
    data_manifest = Path(cfg.data.path) / "manifest.json"
    summary = {"best_checkpoint": str(best), "best_step": checkpoints.state_of(best)["step"],
               "val_loss_before": val[0]["val_loss"] if val else None,
               "val_loss_after": min(m["val_loss"] for m in val) if val else None,
               "steps": metrics[-1].get("step") if metrics else 0,
               "trainable": next((m for m in metrics if "trainable_params" in m), {}),
               "data_manifest_sha256": sha256_file(data_manifest) if data_manifest.is_file() else None}
    write_manifest(out, cfg.model_dump(mode="json"), [], model=model_path, final=str(final), **summary)
    (out / "config.resolved.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=2))
    if val:
        print(f"validation loss: {summary['val_loss_before']:.4f} before -> {summary['val_loss_after']:.4f} after "
              f"(ppl {val[0]['val_ppl']:.1f} -> {min(m['val_ppl'] for m in val):.1f})")
    print(f"sft: {summary['steps']} steps, best step {summary['best_step']} -> {final}")
    return summary

