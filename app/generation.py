"""Batched chat generation with HF `generate`: what jobs.generate and the eval stage (app/eval/runner.py) answer with.

    python -m jobs.generate model=smollm2-135m-instruct prompt="What is the capital of France?"
"""
from __future__ import annotations

import torch
from transformers.utils import logging as hf_logging

from app.chat import render_prompt
from app.models import load_policy


@torch.inference_mode()
def generate_chat(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int = 128,
                  temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> list[str]:
    """Answer each conversation; temperature 0 is greedy, otherwise sampling seeded by `seed`."""
    context = getattr(model.config, "max_position_embeddings", 2048)
    prompts = [render_prompt(tokenizer, c, max_len=context - max_new_tokens) for c in conversations]
    width = max(map(len, prompts))
    pad = tokenizer.pad_token_id
    # Left padding so every prompt ends where generation starts.
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else \
        dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    torch.manual_seed(seed)
    out = model.generate(input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device),
                         max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id,
                         **sampling)
    return [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]


def run(cfg) -> str:
    """jobs.generate: one chat-rendered answer to cfg.prompt (and cfg.system), printed."""
    hf_logging.disable_progress_bar()
    model, tokenizer = load_policy(cfg.model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    messages = ([{"role": "system", "content": cfg.system}] if cfg.system else []) + \
        [{"role": "user", "content": cfg.prompt}]
    [answer] = generate_chat(model, tokenizer, [messages], cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.seed)
    print(answer)
    return answer
