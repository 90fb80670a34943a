"""Sweep benchmark: the same search space and trial budget with ASHA and with every trial run to the end,
in one run: wall time and best validation loss. Prints one JSON line.

    .venv/bin/python benchmarks/sweep.py                  # tiny model on runs/data-demo (python -m jobs.data)
    .venv/bin/python benchmarks/sweep.py --data <data stage output> --steps 24

Target: ASHA within 2% of the full grid's best metric in <= 50% of its time.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def sweep(out: Path, data: str, steps: int, scheduler: str) -> dict:
    from app.config import load_config
    from app.train.sweep import SweepConfig, run
    cfg = load_config(SweepConfig, "jobs/configs/sweep_tiny.yaml", [
        f"output_dir={out}", "space={optim.lr: [1.0e-2, 3.0e-3, 1.0e-3, 1.0e-4], lora.r: [4, 8]}",
        f"overrides=[data.path={data}, scaling.num_workers=1, train.max_steps={steps}, eval.every=2, "
        f"eval.patience=null, checkpoint.every={steps}, tensorboard=false]", f"scheduler.type={scheduler}",
        "scheduler.grace_period=4", "resume=false"])
    t = time.perf_counter()
    summary = run(cfg)
    return {"wall_s": round(time.perf_counter() - t, 1), "best_val_loss": round(summary["best"]["best_metric"], 4),
            "best_params": summary["best"]["params"], "stopped_early": summary["stopped_early"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="runs/data-demo")
    parser.add_argument("--steps", type=int, default=16)
    a = parser.parse_args()
    if not (Path(a.data) / "train").is_dir():
        sys.exit(f"{a.data}/train not found: run python -m jobs.data jobs/configs/data_demo.yaml first")
    with tempfile.TemporaryDirectory() as tmp:
        full = sweep(Path(tmp) / "full", a.data, a.steps, "fifo")
        asha = sweep(Path(tmp) / "asha", a.data, a.steps, "asha")
    print(json.dumps({"benchmark": "sweep", "trials": 8, "max_steps": a.steps, "full": full, "asha": asha,
                      "time_ratio": round(asha["wall_s"] / full["wall_s"], 2),
                      "best_gap_pct": round(100 * (asha["best_val_loss"] / full["best_val_loss"] - 1), 2)}))


if __name__ == "__main__":
    main()
