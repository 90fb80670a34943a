"""jobs.compress: prune a trained model (app/compress/prune.py), then recover its quality by logit distillation
from the unpruned model (jobs.sft with `distill.teacher`, on Ray Train).

    python -m jobs.compress jobs/configs/compress_demo.yaml
    python -m jobs.eval jobs/configs/eval_demo.yaml model=runs/compress-demo/distill/final gate.baseline=...

Writes pruned/ (the pruned model, loadable with from_pretrained), distill/ (a jobs.sft output: final/,
metrics.jsonl, ...) and manifest.json: the layers dropped and their influence, the parameter counts and
file sizes of teacher, pruned and distilled model, and the distillation's validation loss. Quality and
speed against the teacher are the eval stage's (pipeline_alt.yaml gates both models on the teacher's items).
"""
from __future__ import annotations

import pyarrow.parquet as pq
import torch

from app.chat import render
from app.config import UserError, load_config
from app.models import count_parameters, load_policy, resolve
from app.runinfo import write_manifest
from app.train import sft
from app.compress.config import CompressConfig
from app.train.config import SFTConfig
from app.compress.prune import importance, prune


def calibration(data: str, tokenizer, n: int, max_len: int, batch: int = 8) -> list[dict]:
    """The first n conversations of the data stage's train/ as padded {input_ids, attention_mask} batches."""
    rows = pq.read_table(f"{data}/train", columns=["messages"]).slice(0, n).to_pylist()
    if not rows:
        raise UserError(f"no calibration rows in {data}/train (run python -m jobs.data first)")
    ids = [render(tokenizer, r["messages"], max_len)[0] for r in rows]
    out = []
    for i in range(0, len(ids), batch):
        part = ids[i:i + batch]
        width = max(map(len, part))
        out.append({"input_ids": torch.tensor([p + [tokenizer.pad_token_id] * (width - len(p)) for p in part]),
                    "attention_mask": torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in part])})
    return out


def folder_bytes(path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def run(cfg: CompressConfig, report=None) -> dict:
    """Prune, save, distill (on Ray Train; with `report`, one worker in this process as a sweep trial)."""
    out = cfg.out("compress")
    teacher = resolve(cfg.teacher)
    distill_cfg = load_config(SFTConfig, cfg.distill, [
        *cfg.overrides, f"model={out / 'pruned'}", f"data.path={cfg.data}", f"distill.teacher={teacher}",
        f"output_dir={out / 'distill'}", "init_from=null"])  # checked before any model loads
    model, tokenizer = load_policy(str(teacher))
    if cfg.drop_layers >= model.config.num_hidden_layers:
        raise UserError(f"drop_layers={cfg.drop_layers}: the model has {model.config.num_hidden_layers} layers")
    before = count_parameters(model)[1]
    influence, channels = importance(model, calibration(cfg.data, tokenizer, cfg.calibration_samples,
                                                       cfg.calibration_max_len))
    pruned = prune(model, cfg.drop_layers, cfg.mlp_keep, influence, channels)
    model.save_pretrained(out / "pruned", safe_serialization=True)
    tokenizer.save_pretrained(out / "pruned")
    after = count_parameters(model)[1]
    print(f"compress: dropped layers {pruned['dropped_layers']} (block influence {pruned['layer_influence']}), "
          f"MLP {channels.shape[1]} -> {pruned['intermediate_size']} channels: {before:,} -> {after:,} parameters "
          f"({after / before:.1%}) -> {out / 'pruned'}")
    del model
    summary = sft.run(distill_cfg, report=report)
    sizes = {name: {"parameters": count_parameters(load_policy(str(path))[0])[1], "bytes": folder_bytes(path)}
             for name, path in (("teacher", teacher), ("pruned", out / "pruned"),
                                ("distilled", out / "distill" / "final"))}
    result = {"prune": pruned, "sizes": sizes, "distill": {k: summary[k] for k in ("val_loss_before", "val_loss_after",
                                                                                  "steps")}}
    write_manifest(out, cfg.model_dump(mode="json"), [], **result)
    print(f"compress: distilled val loss {summary['val_loss_before']:.4f} -> {summary['val_loss_after']:.4f}; "
          f"size {sizes['teacher']['bytes'] / 1e6:.0f} MB -> {sizes['distilled']['bytes'] / 1e6:.0f} MB -> {out}")
    return result
