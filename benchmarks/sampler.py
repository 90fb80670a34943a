"""The one sampler (app/sampler.py) against what a user would call instead: HF `model.generate` and
transformers' own continuous batching (`model.generate_batch`), and the RL rollout actors' vLLM engine
(app/vllm_engine.py, float32 and bfloat16) where it is installed, on the same prompts, token budget and
threads, in one run. Prints one JSON line.

    .venv/bin/python benchmarks/sampler.py                  # SmolLM2-135M-Instruct, 2 prompts x 4 samples
    .venv/bin/python benchmarks/sampler.py --threads 2 --prompts 16 --tokens 64 --reps 1 --no-generate-batch

A GRPO rollout's shape: `prompts` demo arithmetic questions, `group` samples of each, `tokens` new tokens
with no end token (every system decodes the same number of tokens; vLLM stops at the model's own end token,
so its rate counts the tokens it decoded), temperature 1. Tokens/s is the best of `reps` timed calls after
one warm-up call each.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def best_rate(fn, tokens: int, reps: int) -> float:
    """fn returns the tokens it decoded, or None for `tokens`."""
    fn()
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        done = fn() or tokens
        rates.append(done / (time.perf_counter() - t0))
    return round(max(rates), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-generate-batch", action="store_true", help="skip transformers' continuous batching "
                        "(5x slower than generate on CPU: minutes at the rollout shape)")
    a = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(a.threads)  # vLLM's engine takes its threads from here
    import torch
    from transformers import GenerationConfig
    from app.chat import render_prompt
    from app.demo.generate import arithmetic
    from app.int8 import quantize_model
    from app.models import load_policy, resolve
    from app.sampler import sample
    from app import vllm_engine
    torch.set_num_threads(a.threads)
    model, tok = load_policy(a.model)
    questions = [json.loads(line)["prompt"] for line in arithmetic(random.Random(7), a.prompts)]
    prompts = [render_prompt(tok, [{"role": "user", "content": q}], 512) for q in questions]
    rows, total = [p for p in prompts for _ in range(a.group)], len(prompts) * a.group * a.tokens
    never = [len(tok)]  # an end token no row produces: every system decodes `tokens` tokens per row

    def generate():
        width = max(map(len, rows))
        ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in rows])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in rows])
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=a.tokens, min_new_tokens=a.tokens, do_sample=True, temperature=1.0,
                             top_p=1.0, top_k=None, pad_token_id=tok.pad_token_id)
        assert out.shape[1] == width + a.tokens

    def generate_batch():
        cfg = GenerationConfig(max_new_tokens=a.tokens, min_new_tokens=a.tokens, do_sample=True, temperature=1.0,
                               top_p=1.0, top_k=None, eos_token_id=never[0], pad_token_id=tok.pad_token_id)
        out = model.generate_batch(inputs=rows, generation_config=cfg)
        assert sum(len(o.generated_tokens) for o in out.values()) == total

    def ours(m):
        def run():
            out = sample(m, prompts, a.tokens, never, n=a.group, temperature=1.0, seed=0, pad_id=tok.pad_token_id)
            assert int(out["response_mask"].sum()) == total
        return run

    result = {"benchmark": "sampler", "model": a.model, "threads": a.threads, "rows": len(rows),
              "new_tokens": a.tokens, "generate_tok_s": best_rate(generate, total, a.reps)}
    try:
        if not a.no_generate_batch:
            result["generate_batch_tok_s"] = best_rate(generate_batch, total, a.reps)
    except Exception as exc:  # reported, not hidden: the library path may not run on this machine
        result["generate_batch_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    result["ours_tok_s"] = best_rate(ours(model), total, a.reps)
    result["ours_int8_tok_s"] = best_rate(ours(quantize_model(model)), total, a.reps)
    if vllm_engine.available():
        for dtype in ("float32", "bfloat16"):
            llm = vllm_engine.start_llm(str(resolve(a.model)), 0, dtype=dtype, kv_cache_mb=512, max_model_len=1024)

            def run():
                out = vllm_engine.sample(llm, prompts, tok.pad_token_id, [], a.tokens, n=a.group, seed=0)
                return int(out["response_mask"].sum())
            result[f"vllm_{dtype}_tok_s"] = best_rate(run, total, a.reps)
            del llm
        result["vllm_bfloat16_vs_ours"] = round(result["vllm_bfloat16_tok_s"] / result["ours_tok_s"], 2)
    for key in ("generate_batch_tok_s", "ours_tok_s", "ours_int8_tok_s", "vllm_float32_tok_s", "vllm_bfloat16_tok_s"):
        if key in result:
            result[key.replace("_tok_s", "_vs_generate")] = round(result[key] / result["generate_tok_s"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
