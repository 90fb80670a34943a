"""GRPO benchmark: ours (jobs.grpo: rollout / reference / learner actors) against TRL's GRPOTrainer on the
same model, prompts, reward function, group size, completion length, LoRA, learning rate, KL coefficient and
number of steps, in one run. Prints one JSON line.

    .venv/bin/python benchmarks/grpo_vs_trl.py                 # SmolLM2-135M-Instruct, demo arithmetic
    .venv/bin/python benchmarks/grpo_vs_trl.py --steps 3 --model tiny

Per system: seconds per step (steps 2.. ; the first step warms up), completions/s, the reward curve and the
mean of its last 4 steps (95% bootstrap CI over those steps); ours on our sampler with float32 rollouts and
with INT8 rollouts (rollout_precision=int8), and on vLLM with bfloat16 rollouts where vLLM is installed (both
cheaper samplers corrected by truncated importance sampling), there also with `overlap: true` (step t+1
sampled while the learners train on step t, one version behind), with our step's phases (generate, score,
train, sync). TRL runs first, in a process no Ray has started in yet; its vLLM colocate mode is tried too
(`trl_vllm`: its figures, or why it does not run here). Target: ours >= 2x TRL's completions/s.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def questions(n: int) -> list[dict]:
    import random
    from app.demo.generate import arithmetic
    return [json.loads(line) for line in arithmetic(random.Random(7), n)]


def curve(rewards: list[float], k: int) -> dict:
    """The per-step reward curve and the mean of its last k steps with a 95% bootstrap CI over those steps."""
    import numpy as np
    from app.stats import mean_ci
    last = np.array(rewards[-k:])
    low, high = mean_ci(last)
    return {"reward_curve": [round(r, 4) for r in rewards], f"reward_last{k}": round(float(last.mean()), 4),
            "ci": [round(low, 4), round(high, 4)]}


def ours(model: str, prompts: Path, a, engine: str = "hf", precision: str = "float32", overlap: bool = False) -> dict:
    from app.config import load_config
    from app.rl.grpo import GRPOConfig, run
    out = prompts.parent / f"ours-{engine}-{precision}-{overlap}"
    cfg = load_config(GRPOConfig, "jobs/configs/grpo_demo.yaml", [
        f"policy={model}", f"prompts={prompts}", f"output_dir={out}", f"steps={a.steps}", f"group_size={a.group}",
        "rollout_actors=2", f"prompts_per_actor={a.prompts // 2}", f"max_new_tokens={a.tokens}", "temperature=1.0", f"optim.lr={a.lr}",
        f"kl={{init: {a.beta}}}", "checkpoint_every=0", "wandb=false", "heldout=null", "threads={learner: 2, reference: 2}",
        f"rollout_engine={engine}", f"rollout_precision={precision}", f"overlap={str(overlap).lower()}"])
    run(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    mean = lambda key: round(sum(r[key] for r in rows[1:]) / len(rows[1:]), 2)  # noqa: E731
    step_s = mean("step_s")
    return {"step_s": step_s, "completions_per_s": round(a.prompts * a.group / step_s, 2),
            **{k: mean(k) for k in ("generate_s", "score_s", "train_s", "sync_s")},
            "sync_logprob_gap": max(r["sync_logprob_gap"] for r in rows), "tis_capped": mean("tis_capped"),
            **curve([r["reward_mean"] for r in rows], a.last)}


def trl(model: str, records: list[dict], a, vllm: bool = False) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from app.models import load_policy
    from app.rl.rewards import exact_answer
    torch.set_num_threads(2)
    policy, tokenizer = load_policy(model)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]}
                              for r in records])

    def reward(prompts, completions, answer, **_):
        return exact_answer(prompts, [c[0]["content"] for c in completions], answer)

    with tempfile.TemporaryDirectory() as tmp:
        args = GRPOConfig(output_dir=tmp, use_cpu=True, per_device_train_batch_size=a.prompts * a.group,
                          num_generations=a.group, max_completion_length=a.tokens, max_steps=a.steps,
                          learning_rate=a.lr, beta=a.beta, temperature=1.0, logging_steps=1, save_strategy="no",
                          report_to="none", seed=0, disable_tqdm=True, lr_scheduler_type="constant",
                          **({"use_vllm": True, "vllm_mode": "colocate"} if vllm else {}))
        trainer = GRPOTrainer(model=policy, processing_class=tokenizer, reward_funcs=[reward], args=args,
                              train_dataset=data, peft_config=LoraConfig(
                                  r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                  target_modules=LORA["target_modules"], task_type="CAUSAL_LM"))
        stamps: list[float] = []
        trainer.add_callback(type("Clock", (TrainerCallback,), {
            "on_step_end": lambda self, *args, **kwargs: stamps.append(time.perf_counter())})())
        trainer.train()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    step_s = (stamps[-1] - stamps[0]) / (len(stamps) - 1)  # wall time between step ends, from step 2 on
    return {"step_s": round(step_s, 2), "completions_per_s": round(a.prompts * a.group / step_s, 2),
            **curve([h["reward"] for h in logs], a.last)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--last", type=int, default=4, help="steps whose mean reward is compared")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--beta", type=float, default=0.04)
    a = parser.parse_args()
    records = questions(a.prompts * a.steps)
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.jsonl"
        prompts.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", encoding="utf-8")
        result = {"benchmark": "grpo_vs_trl", "model": a.model, "completions_per_step": a.prompts * a.group,
                  "trl": trl(a.model, records, a)}  # first, before Ray starts any process
        try:
            result["trl_vllm"] = trl(a.model, records, a, vllm=True)
        except Exception as exc:  # reported, not hidden
            result["trl_vllm"] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
        result["ours"] = ours(a.model, prompts, a)
        result["ours_int8"] = ours(a.model, prompts, a, "hf", "int8")
        if importlib.util.find_spec("vllm"):
            result["ours_vllm"] = ours(a.model, prompts, a, "vllm", "bfloat16")
            result["ours_vllm_overlap"] = ours(a.model, prompts, a, "vllm", "bfloat16", overlap=True)
    best_trl = max(v["completions_per_s"] for k, v in result.items() if k.startswith("trl") and "error" not in v)
    for name in ("ours", "ours_int8", "ours_vllm", "ours_vllm_overlap"):
        if name in result:
            result[name.replace("ours", "speedup")] = round(result[name]["completions_per_s"] / best_trl, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
