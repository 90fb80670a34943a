"""PPO step benchmark: time per step split by phase, the rollout actor's sampling speed against plain
`generate`, and the synchronous schedule against `overlap: true`, in one run. Prints one JSON line.

    .venv/bin/python benchmarks/ppo_step.py                       # SmolLM2-135M-Instruct, LoRA policy
    .venv/bin/python benchmarks/ppo_step.py --model tiny --steps 3

Rollout overhead: the same prompts, batch, seed and token budget sampled (a) by `app.sampler.sample` in
this process and (b) through a RolloutActor (Ray call, object transfer), both with one torch thread;
target <= 10% slower. Schedules: the same PPO config run with overlap off and on; per-step means exclude
the first step (warm-up).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

QUESTIONS = ["Where is my order?", "How do I return a lamp that arrived broken?", "我的订单什么时候发货？",
             "退货需要多长时间到账？", "Can I change the delivery address?", "发票怎么开？",
             "Do you ship to Canada?", "怎么联系人工客服？"]


def rollout_overhead(model: str, batch: int, max_new_tokens: int, repeats: int) -> dict:
    import ray
    import torch
    from app.chat import render_prompt
    from app.models import load_policy
    from app.rl.actors import RolloutActor
    from app.sampler import sample
    torch.set_num_threads(1)
    policy, tok = load_policy(model)
    prompts = [render_prompt(tok, [{"role": "user", "content": q}]) for q in (QUESTIONS * 4)[:batch]]
    actor = RolloutActor.options(num_cpus=1).remote(model, 0)
    rates = {"generate": [], "actor": []}
    for r in range(repeats + 1):  # the first round warms both up
        t = time.perf_counter()
        out = sample(policy, prompts, max_new_tokens, [tok.eos_token_id], 1, 1.0, 1.0, r, tok.pad_token_id)
        plain = (int(out["response_mask"].sum()), time.perf_counter() - t)
        t = time.perf_counter()
        out = ray.get(actor.generate.remote(prompts, 0, max_new_tokens, 1.0, 1.0, r))
        via_actor = (int(out["response_mask"].sum()), time.perf_counter() - t)
        if r:
            rates["generate"].append(plain[0] / plain[1])
            rates["actor"].append(via_actor[0] / via_actor[1])
    ray.kill(actor)
    plain, via_actor = (sorted(v)[len(v) // 2] for v in rates.values())
    return {"generate_tok_s": round(plain, 1), "actor_tok_s": round(via_actor, 1),
            "actor_overhead_pct": round(100 * (plain / via_actor - 1), 1)}


def ppo_run(model: str, steps: int, overlap: bool, out: Path, prompts: Path) -> dict:
    from app.config import load_config
    from app.rl.ppo import PPOConfig, run
    lora = "lora={r: 8, alpha: 16, dropout: 0.0, target_modules: [q_proj, v_proj]}" if model != "tiny" else \
        "lora=null"
    cfg = load_config(PPOConfig, "jobs/configs/ppo_tiny.yaml", [
        f"policy={model}", f"prompts={prompts}", f"output_dir={out}", f"steps={steps}", f"overlap={overlap}",
        "max_new_tokens=32", "temperature=1.0", "epochs=2", "checkpoint_every=0", "wandb=false", lora,
        "optim.lr=1e-5", "cpus_per_actor=0.25"])
    t = time.perf_counter()
    run(cfg)
    total = time.perf_counter() - t
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]
    mean = lambda key: round(sum(r[key] for r in rows) / len(rows), 2)  # noqa: E731
    return {"step_s": mean("step_s"), "generate_s": mean("generate_s"), "score_s": mean("score_s"),
            "train_s": mean("train_s"), "sync_s": mean("sync_s"), "sync_mb": mean("sync_mb"),
            "run_s": round(total, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from app.cluster import init_ray
    init_ray()
    result = {"benchmark": "ppo_step", "model": args.model,
              **rollout_overhead(args.model, args.batch, 32, args.repeats)}
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.jsonl"
        prompts.write_text("\n".join(json.dumps({"id": f"q{i}", "prompt": q})
                                     for i, q in enumerate(QUESTIONS * 4)) + "\n", encoding="utf-8")
        sync = ppo_run(args.model, args.steps, False, Path(tmp) / "sync", prompts)
        overlap = ppo_run(args.model, args.steps, True, Path(tmp) / "overlap", prompts)
    result.update({"sync": sync, "overlap": overlap,
                   "overlap_speedup": round(sync["step_s"] / overlap["step_s"], 2)})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
