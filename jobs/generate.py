"""Answer one prompt with a model, chat-rendered: the quickest check that a model loads and talks.

    python -m jobs.generate model=smollm2-135m-instruct prompt="What is the capital of France?"
    python -m jobs.generate jobs/configs/generate.yaml model=runs/sft-demo/final prompt="订单到哪了？"
"""
from __future__ import annotations

from transformers.utils import logging as hf_logging

from app.cli import run_job
from app.config import JobConfig
from app.generation import generate_chat
from app.models import load_policy


class GenerateConfig(JobConfig):
    model: str = "smollm2-135m-instruct"
    prompt: str
    system: str | None = None
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    dtype: str = "float32"
    trust_remote_code: bool = False


def run(cfg: GenerateConfig) -> str:
    hf_logging.disable_progress_bar()
    model, tokenizer = load_policy(cfg.model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    messages = ([{"role": "system", "content": cfg.system}] if cfg.system else []) + \
        [{"role": "user", "content": cfg.prompt}]
    [answer] = generate_chat(model, tokenizer, [messages], cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.seed)
    print(answer)
    return answer


if __name__ == "__main__":
    run_job(GenerateConfig, run, default_config="generate.yaml")
