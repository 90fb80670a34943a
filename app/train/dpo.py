"""DPO (and IPO) on Ray Train workers with DeepSpeed, the SFT way: same model methods (full, LoRA, QLoRA),
same checkpoints, exact resume, automatic restart and export as jobs.sft.

    python -m jobs.dpo jobs/configs/dpo_demo.yaml
    python -m jobs.dpo jobs/configs/dpo_tiny.yaml           # tests

The driver reads preference pairs (ours or HH-RLHF, app.train.preferences), splits them by a stable hash,
tokenizes them (the loss covers only the final answer's tokens) and hands each worker its part through
Ray Data. The shared loop (app/train/loop.py) runs this module's `objective`: each worker first scores its
pairs with the explicit reference model (`dpo.reference`, default the starting model), frees it, then
trains the policy on app.train.losses.dpo_loss. Validation reports the DPO loss, preference accuracy
(implicit reward of chosen > rejected) and the mean reward margin.
Outputs as SFT: runs/dpo-<name>/final (+ adapter/), metrics.jsonl, training_curve.png, manifest.json.
"""
from __future__ import annotations

import ray
import torch

from app.cluster import init_ray
from app.models import load_policy, load_tokenizer, resolve
from app.train import losses
from app.runinfo import sha256_path, write_manifest
from app.train import checkpoints, preferences
from app.train.config import DPOConfig
from app.train.export import export
from app.train.fit import check_resume, fit, split
from app.train.loop import Objective, Run, Step
from app.train.logger import plot_curve, read_metrics
from app.train.model import build_model
from app.train.sft import check_model


def sequence_logprobs(model, batch: dict) -> torch.Tensor:
    """Summed log-probs of each sequence's answer tokens: [2B] (chosen first)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    token_lp = losses.gather_logprobs(logits, batch["input_ids"][:, 1:])
    return (token_lp * batch["answer_mask"][:, 1:]).sum(1)


@torch.no_grad()
def add_reference_logprobs(rows: list[dict], reference: str, pad_id: int, size: int) -> None:
    """Score every pair once with the frozen reference (loaded here, freed after)."""
    model = load_policy(reference)[0]
    for batch_rows in preferences.micro_batches(rows, size, 0, 0, shuffle=False):
        lp = sequence_logprobs(model, preferences.collate(batch_rows, pad_id))
        for i, r in enumerate(batch_rows):
            r["ref_chosen"], r["ref_rejected"] = float(lp[i]), float(lp[len(batch_rows) + i])
    del model


def objective(cfg_json: dict, run: Run) -> tuple[DPOConfig, Objective]:
    """On each worker: the policy (method applied), the reference log-probs of its pairs, the DPO loss;
    validation adds preference accuracy (implicit reward of chosen > rejected) and the mean reward margin."""
    cfg = DPOConfig.model_validate(cfg_json)
    model, pad_id = build_model(cfg, run.model_path)
    mb = cfg.train.micro_batch_size

    def batches(rows: list[dict], epoch: int, train: bool) -> list[list[dict]]:
        return preferences.micro_batches(rows, mb, cfg.seed, epoch) if train else \
            preferences.micro_batches(rows, mb, 0, 0, shuffle=False)

    def step(engine, rows: list[dict]) -> Step:
        batch = {k: v.to(engine.device) for k, v in preferences.collate(rows, pad_id).items()}
        lp = sequence_logprobs(engine, batch)
        n = len(rows)
        ref = torch.tensor([[r["ref_chosen"] for r in rows], [r["ref_rejected"] for r in rows]], device=lp.device)
        loss, chosen, rejected = losses.dpo_loss(lp[:n], lp[n:], ref[0], ref[1], cfg.dpo.beta, cfg.dpo.loss)
        stats = {"loss": float(loss), "accuracy": float((chosen > rejected).float().mean()),
                 "margin": float((chosen - rejected).mean())}
        return Step(loss, stats, float(n), int(batch["attention_mask"].sum()))

    prepare = lambda rows: add_reference_logprobs(rows, run.extra["reference"], pad_id, mb)  # noqa: E731
    return cfg, Objective(model, batches, step, prepare)


def build_datasets(cfg: DPOConfig, model_path: str) -> tuple[dict, dict]:
    """({train_<rank>, val_<rank>} Ray datasets of tokenized pairs, counts); DPO learns every dimension at once."""
    train, val, counts = preferences.load(cfg.data, load_tokenizer(model_path), None, cfg.seed,
                                          cfg.scaling.num_workers * cfg.train.micro_batch_size)
    return split(ray.data.from_items(train), ray.data.from_items(val) if val else None, cfg.scaling.num_workers), counts


def run(cfg: DPOConfig, report=None) -> dict:
    """Train; with `report` (one worker), the loop runs in this process and hands it every report."""
    preferences.require(cfg.data)
    out = cfg.out("dpo")
    model_path = check_model(cfg)
    check_resume(out, cfg, model_path)
    init_ray()
    datasets, counts = build_datasets(cfg, model_path)
    reference = str(resolve(cfg.dpo.reference)) if cfg.dpo.reference else model_path
    best = fit(cfg, objective, datasets, out, model_path, "dpo", extra={"reference": reference}, report=report)
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
