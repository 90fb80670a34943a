"""A LoRA policy's weight sync into a running vLLM engine, both ways, on the RL rollout shape. Prints one JSON
line.

    .venv/bin/python benchmarks/vllm_lora_sync.py            # SmolLM2-135M-Instruct, bf16, 1 thread

merged (what app/rl/actors.py RolloutActor does): the adapter is merged into the base weights (W + s·B·A)
and the whole model goes through vLLM's in-place `reload_weights`, then the probe's prompt log-probs.
adapter: the engine runs with `enable_lora`, the adapter is written as a peft folder and each version is a
new `LoRARequest` (a new id: vLLM caches adapters by id), loaded by the probe's request.
Per system: seconds per sync (mean of `--syncs` after one warm-up), rollout tokens/s (`--prompts` × `--group`
rows of `--tokens` tokens, no end token, best of 3), and the step cost sync + rollout; `probe_gap`: the
mean difference between the two ways' log-probs of the probe under the last version, beside the
adapter's own effect (base against merged).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def adapter_of(model_name: str, r: int, version: int) -> tuple[dict, object]:
    """A peft adapter on q,k,v,o with non-zero B (a trained adapter's shape), its state dict and config."""
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from app.models import load_policy
    torch.manual_seed(version)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    model = get_peft_model(load_policy(model_name)[0], config)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.005)
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}, config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--syncs", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    a = parser.parse_args()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import torch
    from safetensors.torch import save_file
    from vllm import SamplingParams, TokensPrompt
    from vllm.lora.request import LoRARequest
    from app import vllm_engine
    from app.chat import render_prompt
    from app.models import load_policy, load_tokenizer, resolve
    from app.rl.rollout import merge_lora
    torch.set_num_threads(1)
    path = str(resolve(a.model))
    tok = load_tokenizer(path)
    prompts = [render_prompt(tok, [{"role": "user", "content": f"What is {i} + {i + 3}?"}]) for i in range(a.prompts)]
    probe = prompts[0] + tok("The answer is 7.", add_special_tokens=False)["input_ids"]
    rows = [TokensPrompt(prompt_token_ids=p) for p in prompts for _ in range(a.group)]
    params = SamplingParams(temperature=1.0, max_tokens=a.tokens, ignore_eos=True, seed=0)
    versions = [adapter_of(a.model, a.r, v) for v in range(a.syncs + 1)]
    base = {k: v.clone() for k, v in load_policy(a.model)[0].state_dict().items()}
    scaling = versions[0][1].lora_alpha / a.r

    def rate(llm, lora=None) -> float:
        best = 0.0
        for _ in range(3):
            t0 = time.perf_counter()
            llm.generate(rows, params, use_tqdm=False, lora_request=lora)
            best = max(best, len(rows) * a.tokens / (time.perf_counter() - t0))
        return round(best, 1)

    result = {"benchmark": "vllm_lora_sync", "model": a.model, "dtype": a.dtype, "r": a.r,
              "rows": len(rows), "tokens": a.tokens}

    def start(**lora):
        from vllm import LLM
        return LLM(path, seed=0, logprobs_mode="processed_logprobs", enable_prefix_caching=True,
                   worker_extension_cls="app.vllm_engine.WeightReloader", **vllm_engine.engine_kwargs(a.dtype), **lora)

    llm = start()
    base_probe = vllm_engine.prompt_logprobs(llm, probe)
    times = []
    for state, _ in versions:
        t0 = time.perf_counter()
        llm.collective_rpc("reload_policy", args=({**base, **merge_lora(base, state, scaling)},))
        llm.reset_prefix_cache()
        merged_probe = vllm_engine.prompt_logprobs(llm, probe)
        times.append(time.perf_counter() - t0)
    merged = {"sync_s": round(sum(times[1:]) / a.syncs, 3), "tokens_per_s": rate(llm)}
    del llm
    llm = start(enable_lora=True, max_lora_rank=a.r, max_loras=1)
    times, folder = [], Path(tempfile.mkdtemp())
    for version, (state, config) in enumerate(versions):
        t0 = time.perf_counter()
        saved = folder / f"v{version}"
        saved.mkdir()
        save_file({k: v.contiguous() for k, v in state.items()}, saved / "adapter_model.safetensors")
        config.save_pretrained(saved)
        lora = LoRARequest(f"v{version}", version + 1, str(saved))
        out = llm.generate([TokensPrompt(prompt_token_ids=probe)], SamplingParams(max_tokens=1, prompt_logprobs=0),
                           use_tqdm=False, lora_request=lora)[0]
        times.append(time.perf_counter() - t0)
    adapter_probe = [d[t].logprob for t, d in zip(probe[1:], out.prompt_logprobs[1:])]
    adapter = {"sync_s": round(sum(times[1:]) / a.syncs, 3), "tokens_per_s": rate(llm, lora)}
    rollout_s = lambda r: len(rows) * a.tokens / r["tokens_per_s"]  # noqa: E731
    for name, r in (("merged", merged), ("adapter", adapter)):
        r["step_s"] = round(r["sync_s"] + rollout_s(r), 3)
        result[name] = r
    result["merged_step_speedup"] = round(adapter["step_s"] / merged["step_s"], 2)  # > 1: merged is cheaper
    # the same policy both ways (the last version): mean |difference| of the probe's log-probs, beside the
    # adapter's own effect on them (against the base model)
    gap = lambda x, y: round(sum(abs(p - q) for p, q in zip(x, y)) / len(x), 4)  # noqa: E731
    result["probe_gap"] = {"merged_vs_adapter": gap(merged_probe, adapter_probe), "base_vs_merged": gap(base_probe, merged_probe),
                           "base_vs_adapter": gap(base_probe, adapter_probe)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
