"""Batched chat answers from app.sampler, or from a vLLM engine where one is given: what jobs.generate and the
eval stage (app/eval/runner.py) answer with.

    python -m jobs.generate model=smollm2-135m-instruct prompt="What is the capital of France?"
"""
from __future__ import annotations

from transformers.utils import logging as hf_logging

from app.chat import render_prompt
from app.models import load_policy
from app.sampler import sample
from app.vllm_engine import sample as sample_vllm


def generate_chat(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int = 128,
                  temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, llm=None) -> list[str]:
    """Answer each conversation with app.sampler (or `llm`, a vLLM engine of the same model: the same layout
    from app.vllm_engine.sample); temperature 0 is greedy, otherwise sampling seeded by `seed`."""
    context = llm.llm_engine.model_config.max_model_len if llm else getattr(model.config,
                                                                            "max_position_embeddings", 2048)
    prompts = [render_prompt(tokenizer, c, max_len=context - max_new_tokens) for c in conversations]
    if llm:
        out = sample_vllm(llm, prompts, tokenizer.pad_token_id, [tokenizer.eos_token_id], max_new_tokens,
                          temperature=temperature, top_p=top_p, seed=seed)
    else:
        out = sample(model, prompts, max_new_tokens, {tokenizer.eos_token_id}, temperature=temperature,
                     top_p=top_p, seed=seed, pad_id=tokenizer.pad_token_id)
    responses = out["sequences"][:, out["prompt_width"]:]  # padded with pad_id, a special token like the end
    return [text.strip() for text in tokenizer.batch_decode(responses, skip_special_tokens=True)]


def run(cfg) -> str:
    """jobs.generate: one chat-rendered answer to cfg.prompt (and cfg.system), printed."""
    hf_logging.disable_progress_bar()
    model, tokenizer = load_policy(cfg.model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    messages = ([{"role": "system", "content": cfg.system}] if cfg.system else []) + \
        [{"role": "user", "content": cfg.prompt}]
    [answer] = generate_chat(model, tokenizer, [messages], cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.seed)
    print(answer)
    return answer
