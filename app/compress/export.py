"""jobs.export: the model exported to ONNX with its KV cache (app/onnx.py), checked against the PyTorch model
greedy token by token, and its size and decode speed beside float32 and INT8.

    python -m jobs.export format=onnx model=registry:latest-promoted
"""
from __future__ import annotations

import copy
import json
import time

import torch

from app.onnx import OnnxCausalLM, export_onnx, greedy


def run(cfg) -> dict:
    """jobs.export (app.compress.config.ExportConfig): runs/export-<name>/model and comparison.json."""
    from app.chat import render_prompt
    from app.eval.evaluate import load_records
    from app.int8 import quantize_model
    from app.models import load_policy
    from app.compress.quantize import model_bytes
    from app.runinfo import write_manifest
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    records, _ = load_records(cfg.data, cfg.prompts)
    original, tokenizer = load_policy(cfg.model)
    prompts = [render_prompt(tokenizer, r["prompt"]) for r in records]
    out = cfg.out("export")
    start = time.perf_counter()
    longest = max(prompts, key=len)  # traced beside its own first half: two lengths, one of them padded
    export_onnx(original, tokenizer, out / "model", [longest, longest[:max(1, len(longest) // 2)]],
                None if cfg.fusions == "none" else cfg.fusions)
    export_s = time.perf_counter() - start
    onnx = OnnxCausalLM(out / "model", cfg.threads or 0)

    stop = {tokenizer.eos_token_id}
    pairs = [(greedy(original, p, cfg.max_new_tokens, stop), greedy(onnx, p, cfg.max_new_tokens, stop))
             for p in prompts]
    agree = sum(_common_prefix(a, b) for a, b in pairs)
    int8 = quantize_model(copy.deepcopy(original), tuple(cfg.int8_skip))
    speed_prompt = tokenizer("Tell me about the history of Paris.").input_ids
    files = sorted((out / "model").glob("*.onnx*"))
    result = {"model": cfg.model, "format": cfg.format, "fusions": cfg.fusions, "export_s": round(export_s, 1),
              "prompts": len(pairs), "greedy_equal": sum(a == b for a, b in pairs),
              "token_agreement": round(agree / max(1, sum(max(len(a), len(b)) for a, b in pairs)), 4)}
    for key, model, size in (("pytorch_fp32", original, model_bytes(original)), ("int8", int8, model_bytes(int8)),
                             ("onnx", onnx, sum(f.stat().st_size for f in files))):
        result[key] = {"size_mb": round(size / 2**20, 1),
                       "decode_tokens_per_s": round(_decode_speed(model, speed_prompt, cfg.decode_tokens), 1)}
    speed = {k: result[k]["decode_tokens_per_s"] for k in ("pytorch_fp32", "int8", "onnx")}
    result["onnx_speedup_vs_fp32"] = round(speed["onnx"] / speed["pytorch_fp32"], 2)
    result["onnx_speedup_vs_int8"] = round(speed["onnx"] / speed["int8"], 2)
    result["faster_on_cpu"] = "onnx" if speed["onnx"] > speed["int8"] else "int8"
    (out / "comparison.json").write_text(json.dumps(result, indent=2))
    write_manifest(out, cfg.model_dump(mode="json"), files, prompts=len(prompts), result=result)
    print(json.dumps(result))
    print(f"export: ONNX model -> {out / 'model'}")
    return result


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _decode_speed(model, prompt: list[int], tokens: int) -> float:
    """Greedy decode tokens/s at batch 1 (best of two runs), with the loop every model shares."""
    best = 0.0
    for _ in range(2):
        start = time.perf_counter()
        greedy(model, prompt, tokens)
        best = max(best, tokens / (time.perf_counter() - start))
    return best
