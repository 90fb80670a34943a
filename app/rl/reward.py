"""The reward model: a scalar head per dimension on a causal LM, trained on preference pairs with the
pairwise ranking loss -log sigmoid(r_chosen - r_rejected - margin) on Ray Train workers (DDP).

    python -m jobs.reward jobs/configs/reward_demo.yaml
    python -m jobs.reward jobs/configs/reward_hh.yaml        # Anthropic HH-RLHF harmless pairs

Heads (`heads: {helpfulness: 1.0, safety: 1.0}`) are outputs of one sequence-classification model; a pair
trains the head named by its `dimension` (default: the first head); `score()` returns the weighted sum.
Output: runs/reward-<name>/final (HF directory, safetensors, reward_heads.json), metrics.jsonl,
manifest.json. `RewardModel(path).score(prompts, responses)` is the API PPO, eval and rejection sampling use.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from pydantic import Field

from app.config import Config, JobConfig, UserError
from app.rl.losses import pairwise_loss

HEADS_FILE = "reward_heads.json"


class RewardScaling(Config):
    num_workers: int = Field(2, ge=1)
    cpus_per_worker: float = 1.0
    use_gpu: bool = False


class RewardConfig(JobConfig):
    model: str = "smollm2-135m-instruct"   # base or SFT model (a spec or runs/sft-<name>/final)
    data: str = "runs/pipeline-demo/data_prefs/train"
    heads: dict[str, float] = {"preference": 1.0}
    val_share: float = Field(0.1, gt=0, lt=1)
    max_len: int = 256
    max_train_pairs: int | None = None
    max_val_pairs: int | None = None
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(8, ge=1)      # pairs per worker step
    lr: float = 2e-5
    weight_decay: float = 0.0
    train_top_layers: int | None = None   # train only the last N transformer layers + the heads (None: all)
    scaling: RewardScaling = RewardScaling()


def _batch(rows: list[dict], pad: int):
    """Chosen rows then rejected rows, right-padded: (ids, attention, heads, margins)."""
    seqs = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    width = max(map(len, seqs))
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
    attention = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    return ids, attention, torch.tensor([r["head"] for r in rows]), torch.tensor([r["margin"] for r in rows])


def _pair_scores(model, rows: list[dict], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids, attention, heads, margins = _batch(rows, pad)
    device = next(model.parameters()).device
    logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits.float()
    n = len(rows)
    pick = heads.to(device)[:, None]
    return logits[:n].gather(1, pick).squeeze(1), logits[n:].gather(1, pick).squeeze(1), margins.to(device)


@torch.no_grad()
def evaluate(model, rows: list[dict], pad: int, batch_size: int, rank: int = 0, world: int = 1) -> dict:
    """Pairwise loss and accuracy on the held-out pairs, each worker scoring its share."""
    model.eval()
    totals = torch.zeros(3)  # loss sum, correct, pairs
    mine = rows[rank::world]
    for i in range(0, len(mine), batch_size):
        chosen, rejected, margins = _pair_scores(model, mine[i:i + batch_size], pad)
        totals += torch.tensor([float(pairwise_loss(chosen, rejected, margins)) * len(chosen),
                                float((chosen > rejected).sum()), len(chosen)])
    if world > 1:
        torch.distributed.all_reduce(totals)
    model.train()
    return {"val_loss": float(totals[0] / totals[2]), "val_accuracy": float(totals[1] / totals[2])}


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


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch
    from transformers import AutoModelForSequenceClassification
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(config["seed"])
    model = AutoModelForSequenceClassification.from_pretrained(
        config["model_path"], num_labels=len(config["heads"]), use_safetensors=True)
    model.config.pad_token_id = config["pad"]
    freeze_below(model, config["train_top_layers"])
    model = ray.train.torch.prepare_model(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config["lr"],
                            weight_decay=config["weight_decay"])
    train, val, bs = config["train"], config["val"], config["batch_size"]
    steps_per_epoch = len(train) // (bs * world)
    step = 0
    for epoch in range(config["epochs"]):
        order = list(range(len(train)))
        random.Random(config["seed"] + epoch).shuffle(order)
        for s in range(steps_per_epoch):
            mine = [train[i] for i in order[(s * world + rank) * bs:(s * world + rank + 1) * bs]]
            chosen, rejected, margins = _pair_scores(model, mine, config["pad"])
            loss = pairwise_loss(chosen, rejected, margins)
            loss.backward()
            opt.step()
            opt.zero_grad()
            step += 1
            metrics = {"epoch": epoch, "step": step, "loss": float(loss),
                       "accuracy": float((chosen > rejected).float().mean())}
            if s == steps_per_epoch - 1:
                metrics.update(evaluate(model, val, config["pad"], bs, rank, world))
            if rank == 0:
                with open(config["metrics_path"], "a") as f:
                    f.write(json.dumps(metrics) + "\n")
            ray.train.report(metrics)
    if rank == 0:
        final = Path(config["final"])
        getattr(model, "module", model).save_pretrained(final, safe_serialization=True)
        (final / HEADS_FILE).write_text(json.dumps({"heads": config["heads"]}, indent=2))


def run(cfg: RewardConfig) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from app.cluster import init_ray
    from app.models import load_tokenizer, resolve
    from app.rl.preferences import read_pairs, split, tokenize
    from app.runinfo import sha256_path, write_manifest
    if not Path(cfg.data).exists():
        raise UserError(f"data {cfg.data} not found (python -m jobs.demo_data writes the demo pairs)")
    model_path = str(resolve(cfg.model))
    tokenizer = load_tokenizer(model_path)
    pairs, skipped = read_pairs(cfg.data)
    train_pairs, val_pairs = split(pairs, cfg.val_share, cfg.seed)
    heads = list(cfg.heads)
    train, dropped_train = tokenize(tokenizer, train_pairs[:cfg.max_train_pairs], heads, cfg.max_len)
    val, dropped_val = tokenize(tokenizer, val_pairs[:cfg.max_val_pairs], heads, cfg.max_len)
    if len(train) < cfg.batch_size * cfg.scaling.num_workers or not val:
        raise UserError(f"{len(train)} train / {len(val)} val pairs: too few for batch_size={cfg.batch_size} "
                        f"on {cfg.scaling.num_workers} workers")
    out = cfg.out("reward").resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    init_ray()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"model_path": model_path, "pad": tokenizer.pad_token_id, "heads": cfg.heads,
                           "train": train, "val": val, "seed": cfg.seed, "lr": cfg.lr,
                           "weight_decay": cfg.weight_decay, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
                           "train_top_layers": cfg.train_top_layers,
                           "metrics_path": str(out / "metrics.jsonl"), "final": str(out / "final")},
        scaling_config=ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                                     resources_per_worker={"CPU": cfg.scaling.cpus_per_worker}),
        run_config=RunConfig(name="train", storage_path=str(out / "ray")))
    trainer.fit()
    tokenizer.save_pretrained(out / "final")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in metrics if "val_accuracy" in m]
    summary = {"pairs": len(pairs), "skipped": skipped, "train_pairs": len(train), "val_pairs": len(val),
               "dropped": dropped_train + dropped_val, "first_loss": metrics[0]["loss"],
               "last_loss": metrics[-1]["loss"], **evals[-1], "final": str(out / "final")}
    write_manifest(out, cfg.model_dump(mode="json"), [], data_sha256=sha256_path(cfg.data), summary=summary)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}))
    print(f"reward: val accuracy {summary['val_accuracy']:.3f} -> {out / 'final'}")
    return summary


class RewardModel:
    """Load a trained reward model; score(prompts, responses) -> weighted sum of the head scores."""

    def __init__(self, path: str | Path, device: str = "cpu", max_len: int = 1024):
        from transformers import AutoModelForSequenceClassification

        from app.models import load_tokenizer
        self.tokenizer = load_tokenizer(str(path))
        self.model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True).to(device).eval()
        heads = json.loads((Path(path) / HEADS_FILE).read_text())["heads"]
        self.names, self.weights = list(heads), torch.tensor(list(heads.values()), device=device)
        self.max_len = max_len

    @torch.inference_mode()
    def score_heads(self, prompts: list, responses: list[str], batch_size: int = 16) -> torch.Tensor:
        """[N, heads] raw scores; a prompt is a message list or a user string."""
        from app.chat import render
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
