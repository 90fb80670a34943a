"""Which float type makes a matmul fast on this machine, and a model that computes in it. A leaf module
(torch only): app/models.py loads `dtype="auto"` models with it and app/int8.py picks its dense path by it.

bf16 pays only where the hardware multiplies it natively: a CUDA GPU with bf16, or a CPU with AMX tiles.
Measured on a 2-core AMX Xeon, one thread, a 576x1536 Linear (ms): 600 rows fp32 11.2, bf16 1.8; 32 rows
1.01 vs 0.43. With AMX switched off (ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16, an avx512_bf16 CPU without
AMX) bf16 took 19.6 vs 12.3 at 600 rows, and on AVX2 145 vs 12: there float32 stays.

    python -m jobs.eval jobs/configs/eval_demo.yaml dtype=auto
"""
from __future__ import annotations

from functools import cache

import torch


@cache  # asked by every Int8Linear forward: the hardware does not change under a process
def fast_bf16(cuda: bool = False) -> bool:
    """True where a bf16 matmul beats a float32 one: on this CPU (it has AMX), or with cuda=True on this
    machine's GPU (it supports bf16)."""
    if cuda:
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def compute_dtype() -> torch.dtype:
    """What a CPU matmul is fastest in here: bf16 with AMX, else float32."""
    return torch.bfloat16 if fast_bf16() else torch.float32


def train_precision(precision: str) -> str:
    """A trainer's train.precision with "auto" resolved on the worker: bf16 where fast_bf16(), else fp32.
    Measured on the demo's LoRA SFT (2 workers, 2-core AMX CPU): 90 -> 116 tokens/s."""
    if precision != "auto":
        return precision
    return "bf16" if fast_bf16(cuda=torch.cuda.is_available()) else "fp32"


def bf16_body(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer body computes in bf16 (SmolLM2's own training precision); the input embedding and
    the output head keep float32 weights, and the head float32 inputs, so logits keep their digits (bf16
    logits break greedy ties and the end-of-answer token: app/compress/quantize.py). Buffers (rotary frequencies)
    stay float32. In place; returns the model. Measured on the demo SFT model, 2-core AMX CPU: 32 test
    prompts x 48 tokens 28.7 -> 15.6 s (21 of 32 answers identical to float32's), 32 held-out arithmetic
    prompts x 24 tokens 11.2 -> 6.1 s (30 of 32 identical)."""
    keep = {id(p) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None
            for p in m.parameters()}
    for p in model.parameters():
        if id(p) not in keep:
            p.data = p.data.to(torch.bfloat16)
    model.get_input_embeddings().register_forward_hook(lambda m, args, out: out.to(torch.bfloat16))
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(lambda m, args: tuple(a.float() if torch.is_tensor(a) else a for a in args))
    return model
