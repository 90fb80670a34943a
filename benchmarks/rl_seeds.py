"""Does the demo's RL learn on every seed? Each RL config of the demo, from the same SFT model, on `--seeds`
seeds; per seed the held-out change against the starting policy (paired over the same held-out items, with
its 95% CI and p-value, app/rl/heldout.py) and the KL to the reference per response token at the last step.
Prints one JSON line: {<config>: [{seed, diff, ci_low, ci_high, p_value, kl_per_token}, ...], ...}.

    .venv/bin/python benchmarks/rl_seeds.py                 # after make demo: its SFT model and data
    .venv/bin/python benchmarks/rl_seeds.py --seeds 3 --configs grpo_demo

GRPO (jobs/configs/grpo_demo.yaml): exact-answer accuracy on the held-out arithmetic split (the config's
`heldout.max_samples` items). About 3 minutes per seed on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def grpo_seed(seed: int, sft: str, out: Path) -> dict:
    from app.config import load_config
    from app.rl.grpo import GRPOConfig, run
    cfg = load_config(GRPOConfig, str(ROOT / "jobs/configs/grpo_demo.yaml"), [
        f"policy={sft}", f"seed={seed}", f"output_dir={out / f'grpo-seed{seed}'}", "checkpoint_every=0",
        "wandb=false", "tensorboard=false"])
    summary = run(cfg)
    return {"seed": seed, "first": summary["heldout_first"], "last": summary["heldout_last"],
            "n": summary["heldout_n"], "diff": round(summary["heldout_diff"], 4),
            "ci_low": round(summary["heldout_ci_low"], 4), "ci_high": round(summary["heldout_ci_high"], 4),
            "p_value": round(summary["heldout_p_value"], 5), "kl_per_token": round(summary["kl_per_token_last"], 4),
            "kl_per_sequence": round(summary["kl_last"], 3), "verdict": summary["heldout_verdict"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--configs", nargs="+", default=["grpo_demo"], choices=["grpo_demo"])
    parser.add_argument("--sft", default=str(ROOT / "runs/pipeline-demo/sft/final"))
    parser.add_argument("--out", default=str(ROOT / "runs/rl-seeds"))
    a = parser.parse_args()
    if not Path(a.sft).is_dir():
        sys.exit(f"no SFT model at {a.sft}: run make demo first (or pass --sft)")
    result = {}
    for name in a.configs:
        rows = [grpo_seed(s, a.sft, Path(a.out)) for s in range(a.seeds)]
        result[name] = rows
        result[f"{name}_significantly_better"] = f"{sum(r['verdict'] == 'better' for r in rows)}/{len(rows)}"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
