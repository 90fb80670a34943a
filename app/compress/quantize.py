"""The quantize stage: INT8 weight-only on CPU (the format: app/int8.py), bitsandbytes 8-bit on GPU; then size,
decode speed, perplexity and greedy agreement against the source model.

    python -m jobs.quantize model=registry:latest-promoted

Output: runs/quantize-<name>/model (serve it with serve_configs/int8.yaml, gate it with jobs.eval
gate.mode=non_inferiority gate.keys=baseline) and comparison.json.
"""
from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import pyarrow.dataset as ds
import torch

from app.config import UserError
from app.compress.config import QuantizeConfig
from app.int8 import quantize_model, save_int8
from app.models import load_policy, resolve
from app.runinfo import write_manifest


def run(cfg: QuantizeConfig) -> dict:
    """Write runs/quantize-<name>/model (INT8) and comparison.json (size, decode speed, perplexity)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    texts = _texts(Path(cfg.data), cfg.max_texts)
    original, tokenizer = load_policy(cfg.model)
    out = cfg.out("quantize")
    if torch.cuda.is_available():  # bitsandbytes LLM.int8 on GPU; the HF directory carries its config
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig
        quantized = AutoModelForCausalLM.from_pretrained(resolve(cfg.model), device_map="cuda",
                                                         quantization_config=BitsAndBytesConfig(load_in_8bit=True))
        quantized.save_pretrained(out / "model")
        tokenizer.save_pretrained(out / "model")
        original = original.cuda()
    else:
        quantized = quantize_model(copy.deepcopy(original), tuple(cfg.skip))
        save_int8(quantized, tokenizer, out / "model", {"source": cfg.model})
        quantized = load_policy(str(out / "model"))[0]  # measure what was saved
    result = {"model": cfg.model, "scheme": "bnb-int8" if torch.cuda.is_available() else
              "int8-weight-only-per-channel", "device": "cuda" if torch.cuda.is_available() else "cpu"}
    for key, model in (("original", original), ("int8", quantized)):
        tokens_per_s, greedy = decode_speed(model, tokenizer, cfg.decode_tokens)
        result[key] = {"size_mb": round(model_bytes(model) / 2**20, 1), "decode_tokens_per_s": round(tokens_per_s, 1),
                       "perplexity": round(perplexity(model, tokenizer, texts, cfg.max_len), 3)}
        result[key + "_greedy"] = greedy
    result["speedup"] = round(result["int8"]["decode_tokens_per_s"] / result["original"]["decode_tokens_per_s"], 2)
    result["size_ratio"] = round(result["int8"]["size_mb"] / result["original"]["size_mb"], 3)
    result["perplexity_increase_pct"] = round(
        100 * (result["int8"]["perplexity"] / result["original"]["perplexity"] - 1), 2)
    a, b = result.pop("original_greedy"), result.pop("int8_greedy")
    result["greedy_agreement"] = round(sum(x == y for x, y in zip(a, b)) / max(1, len(a)), 3)
    (out / "comparison.json").write_text(json.dumps(result, indent=2))
    write_manifest(out, cfg.model_dump(mode="json"), sorted((out / "model").glob("*.safetensors")),
                   texts=len(texts), result=result)
    print(json.dumps(result))
    print(f"quantize: INT8 model -> {out / 'model'}")
    return result


def _texts(path: Path, limit: int) -> list[str]:
    if not path.exists():
        raise UserError(f"data {path} not found: run the data stage first (python -m jobs.data) or set data=")
    rows = ds.dataset(str(path), format="parquet").to_table(columns=["messages"]).to_pylist()
    return [" ".join(m["content"] for m in r["messages"]) for r in sorted(rows, key=lambda r: str(r))[:limit]]


@torch.inference_mode()
def perplexity(model, tokenizer, texts: list[str], max_len: int) -> float:
    nll, count = 0.0, 0
    for text in texts:
        ids = tokenizer(text, return_tensors="pt").input_ids[:, :max_len].to(next(model.parameters()).device)
        if ids.shape[1] < 2:
            continue
        nll += model(ids, labels=ids).loss.item() * (ids.shape[1] - 1)
        count += ids.shape[1] - 1
    return math.exp(nll / count)


@torch.inference_mode()
def decode_speed(model, tokenizer, tokens: int) -> tuple[float, list[int]]:
    """(greedy decode tokens/s at batch 1, best of two runs; the tokens)."""
    ids = tokenizer("Tell me about the history of Paris.", return_tensors="pt").input_ids
    ids = ids.to(next(model.parameters()).device)
    best, out = 0.0, None
    for _ in range(2):
        start = time.perf_counter()
        out = model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        best = max(best, tokens / (time.perf_counter() - start))
    return best, out[0, ids.shape[1]:].tolist()


def model_bytes(model) -> int:
    """Bytes of parameters and buffers, a tied tensor counted once."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total
