"""Training metrics from rank 0: metrics.jsonl, TensorBoard, wandb (offline by default), and the curve."""
from __future__ import annotations

import json
from pathlib import Path


class MetricsLogger:
    def __init__(self, out_dir: str, name: str, config: dict, wandb: bool, tensorboard: bool,
                 job_type: str = "sft"):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tb = self.run = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))
        if wandb:
            import wandb as wb
            self.run = wb.init(project="raypost", job_type=job_type, name=name, config=config, dir=out_dir,
                               reinit="finish_previous")

    def log(self, metrics: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(metrics) + "\n")
        step = metrics.get("step", 0)
        for key, value in metrics.items():
            if self.tb is not None and isinstance(value, (int, float)) and key != "step":
                self.tb.add_scalar(key, value, step)
        if self.run is not None:
            self.run.log({k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.run is not None:
            self.run.finish()


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl with later lines winning for a repeated step (a restarted run re-logs a few steps)."""
    by_step: dict[tuple, dict] = {}
    for line in Path(path).read_text().splitlines():
        m = json.loads(line)
        by_step[(m.get("step"), "val_loss" in m)] = {**by_step.get((m.get("step"), "val_loss" in m), {}), **m}
    return sorted(by_step.values(), key=lambda m: m.get("step", 0))


def plot_curve(metrics: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    train = [(m["step"], m["train_loss"]) for m in metrics if "train_loss" in m]
    val = [(m["step"], m["val_loss"]) for m in metrics if "val_loss" in m]
    if train:
        ax.plot(*zip(*train), label="train loss", alpha=0.7)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
