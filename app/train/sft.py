"""Supervised fine-tuning on Ray Train: the data, the objective the shared loop trains (app/train/loop.py),
the export.

    python -m jobs.sft jobs/configs/sft_demo.yaml [key=value ...]
    ray job submit --working-dir . -- python -m jobs.sft jobs/configs/sft_demo.yaml

It checks the config against the model before any worker starts (QLoRA needs CUDA, LoRA target modules
must exist, a checkpoint under output_dir must come from the same model and method), tokenizes the data
stage's train/ and val/ with app/chat.py on Ray Data, runs app/train/loop.py with this module's
`objective` on `scaling.num_workers` TorchTrainer workers with DeepSpeed (app/train/fit.py), restarts
failed workers from the last checkpoint, and finally
exports the best checkpoint as final/ (and adapter/), metrics.jsonl, training_curve.png, manifest.json.
Re-running the same command resumes from the last complete checkpoint.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import ray
import torch
from ray.data.expressions import col

from app.cluster import init_ray
from app.config import UserError
from app.models import resolve
from app.runinfo import dropped_line, sha256_file, write_manifest
from app.train import checkpoints
from app.train.config import SFTConfig
from app.train.data import IGNORE, micro_batches, tokenize_batch
from app.train.export import export
from app.train.fit import check_resume, fit, quiet_data, split
from app.train.loop import Objective, Run, Step, perplexity
from app.train.logger import plot_curve, read_metrics
from app.train.model import build_model


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
    if cfg.method == "ia3":
        from peft.utils import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as IA3_MODULES
        from transformers import AutoConfig
        kind = AutoConfig.from_pretrained(path).model_type
        if kind not in IA3_MODULES:
            raise UserError(f"method=ia3: peft has no IA3 modules for model type {kind!r} "
                            f"(it has them for {', '.join(sorted(IA3_MODULES))}); use method=lora")
    return path


def load_split(folder: Path, model_path: str, max_len: int, limit: int | None, objective: str = "chat",
               system_prompt: str | None = None) -> tuple:
    """(the split's trainable rows, materialized; {read, kept, dropped: {reason: n}}) of one data stage
    split; (None, {}) when the folder is absent or the limit is 0. The reasons are app/train/data.py
    tokenize_batch's."""
    if not folder.is_dir() or limit == 0:
        return None, {}
    ds = ray.data.read_parquet(str(folder))
    if limit is not None:
        ds = ds.limit(limit)
    ds = ds.map_batches(tokenize_batch, batch_format="numpy",
                        fn_kwargs={"model_path": model_path, "max_len": max_len, "objective": objective,
                                   "system_prompt": system_prompt}
                        ).materialize()
    reasons = Counter(ds.select_columns(["drop"]).to_pandas()["drop"])
    kept = reasons.pop("", 0)
    counts = {"read": kept + sum(reasons.values()), "kept": kept, "dropped": dict(sorted(reasons.items()))}
    if reasons:  # else every row trains as it is (its empty `drop` is ignored): no second pass
        ds = ds.filter(expr=col("drop") == "").materialize()
    return ds, counts


def _dropped(counts: dict, max_len: int) -> str:
    why = {"too_long": f"longer than data.max_len={max_len} tokens", "no_answer": "without an assistant reply",
           "malformed": "not a conversation"}
    return dropped_line(counts["dropped"], why)


def build_datasets(cfg: SFTConfig, model_path: str) -> tuple[dict, dict]:
    """(the per-worker datasets, the row counts of each split: read, kept, dropped by reason)."""
    train, val, counts = tokenize_splits(cfg, model_path)
    return split(train, val, cfg.scaling.num_workers), counts


def tokenize_splits(cfg: SFTConfig, model_path: str) -> tuple:
    """(train, val or None: tokenized and materialized, the row counts of each split: read, kept, dropped by
    reason). Says so in the log; no usable training row is an error that says where the rows went."""
    data = Path(cfg.data.path)
    if not (data / "train").is_dir():
        raise UserError(f"no training data: {data}/train not found (run python -m jobs.data first)")
    train, counts = load_split(data / "train", model_path, cfg.data.max_len, cfg.data.max_train_samples,
                               cfg.objective, cfg.system_prompt)
    counts = {"train": counts}
    if counts["train"]["kept"] == 0:
        raise UserError(f"no usable training rows in {data}/train: of {counts['train']['read']} read, "
                        f"{_dropped(counts['train'], cfg.data.max_len)}")
    if cfg.data.replay_path and cfg.data.replay_share > 0:
        replay, counts["replay"] = load_split(Path(cfg.data.replay_path), model_path, cfg.data.max_len, None,
                                              system_prompt=cfg.system_prompt)
        if replay is None:
            raise UserError(f"data.replay_path {cfg.data.replay_path} is not a folder of SFT Parquet files")
        n = round(counts["train"]["kept"] * cfg.data.replay_share / (1 - cfg.data.replay_share))
        train = train.union(replay.random_shuffle(seed=cfg.seed).limit(n)).materialize()
    val, counts["val"] = load_split(data / "val", model_path, cfg.data.max_len, cfg.data.max_val_samples,
                                    cfg.objective, cfg.system_prompt)
    for name, c in counts.items():
        if c:
            print(f"sft data: {name} {c['kept']} of {c['read']} rows ({_dropped(c, cfg.data.max_len)})", flush=True)
    return train, val, counts


def run(cfg: SFTConfig, callbacks: list | None = None, report=None, data: tuple | None = None) -> dict:
    """Train. A sweep trial passes Ray Train `callbacks` (Tune's TuneReportCallback) or, for one worker in
    the trial's own process, `report` (tune.report); and `data`, tokenize_splits' result made once per sweep."""
    out = cfg.out("sft")
    model_path = check_model(cfg)
    check_resume(out, cfg, model_path)
    init_ray()
    quiet_data()
    train, val, counts = data or tokenize_splits(cfg, model_path)
    best = fit(cfg, objective, split(train, val, cfg.scaling.num_workers), out, model_path, "sft",
               callbacks=callbacks, report=report)
    final = export(best, model_path, out, cfg.method, cfg.lora.model_dump(), cfg.prompt_tuning.num_virtual_tokens,
                   cfg.system_prompt)
    return summarize(cfg, out, best, final, model_path, counts)


def objective(cfg_json: dict, run: Run) -> tuple[SFTConfig, Objective]:
    """On each worker: the model (method applied) and the next-token loss on assistant tokens."""
    cfg = SFTConfig.model_validate(cfg_json)
    model, pad_id = build_model(cfg, run.model_path)
    d, mb = cfg.data, cfg.train.micro_batch_size

    def batches(rows: list[dict], epoch: int, train: bool) -> list[dict]:
        if train:
            return micro_batches(rows, mb, d.max_len, d.packing, cfg.seed, epoch, pad_id)
        return micro_batches(rows, mb, d.max_len, False, 0, 0, pad_id, drop_last=False)

    teacher = load_teacher(cfg.distill.teacher) if cfg.distill.teacher else None

    def step(engine, batch: dict) -> Step:
        inputs = {k: v.to(engine.device) for k, v in batch.items() if k != "_real_tokens"}
        out = engine(**inputs)
        loss, stats = out.loss, {"loss": out.loss.item()}
        if teacher is not None:
            with torch.no_grad():
                target = teacher(**{k: v for k, v in inputs.items() if k != "labels"}).logits
            kl = distill_kl(out.logits, target, inputs["labels"], cfg.distill.temperature)
            loss = cfg.distill.alpha * kl + (1 - cfg.distill.alpha) * out.loss
            stats["kl"] = kl.item()
        return Step(loss, stats, float((batch["labels"][:, 1:] != IGNORE).sum()), batch["_real_tokens"])
    return cfg, Objective(model, batches, step, derive=perplexity,
                          answer=answerer(run.model_path, cfg.eval.max_new_tokens) if cfg.eval.generate else None)


def load_teacher(spec: str):
    """The frozen teacher of distill.teacher on this worker (outside DeepSpeed: it never trains)."""
    from app.models import load_policy
    model = load_policy(str(resolve(spec)))[0].eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
               temperature: float) -> torch.Tensor:
    """Forward KL(teacher || student) of the temperature-softened next-token distributions, mean over the
    tokens that carry a label, times T^2 (so its gradients keep their scale as T changes)."""
    mask = labels[:, 1:] != IGNORE
    s = torch.log_softmax(student_logits[:, :-1][mask].float() / temperature, -1)
    t = torch.log_softmax(teacher_logits[:, :-1][mask].float() / temperature, -1)
    return torch.nn.functional.kl_div(s, t, log_target=True, reduction="batchmean") * temperature ** 2


def answerer(model_path: str, max_new_tokens: int):
    """(engine, tokenized val rows) -> item scores of greedy answers (app/sampler.py) to each row's context
    up to its last assistant turn, against that turn."""
    from app.metrics import item_scores
    from app.models import load_tokenizer
    from app.sampler import sample
    tok = load_tokenizer(model_path)

    def answer(engine, rows: list[dict]) -> list[dict]:
        prompts, refs = [], []
        for r in rows:
            ids, labels = [int(t) for t in r["input_ids"]], [int(t) for t in r["labels"]]
            end = max(i for i, t in enumerate(labels) if t != IGNORE) + 1
            start = end
            while start > 0 and labels[start - 1] != IGNORE:
                start -= 1
            prompts.append(ids[:start])
            refs.append(tok.decode(ids[start:end], skip_special_tokens=True).strip())
        out = sample(engine.module, prompts, max_new_tokens, {tok.eos_token_id}, pad_id=tok.pad_token_id)
        preds = tok.batch_decode(out["sequences"][:, out["prompt_width"]:], skip_special_tokens=True)
        return item_scores([p.strip() for p in preds], refs)
    return answer


def summarize(cfg: SFTConfig, out: Path, best: Path, final: Path, model_path: str, counts: dict) -> dict:
    metrics = read_metrics(out / "metrics.jsonl")
    plot_curve(metrics, out / "training_curve.png")
    val = [m for m in metrics if "val_loss" in m]
    data_manifest = Path(cfg.data.path) / "manifest.json"
    summary = {"data": counts, "best_checkpoint": str(best), "best_step": checkpoints.state_of(best)["step"],
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
    if answered := [m for m in metrics if "val_rougeL" in m]:
        print(f"greedy answers to {cfg.eval.generate} val rows per worker: ROUGE-L {answered[0]['val_rougeL']:.4f} "
              f"-> {answered[-1]['val_rougeL']:.4f}, BLEU {answered[0]['val_bleu']:.2f} -> "
              f"{answered[-1]['val_bleu']:.2f} (steps {answered[0]['step']} -> {answered[-1]['step']})")
    print(f"sft: {summary['steps']} steps, best step {summary['best_step']} -> {final}")
    return summary

