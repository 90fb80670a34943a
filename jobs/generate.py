"""Answer one prompt with a model, chat-rendered: the quickest check that a model loads and talks.

    python -m jobs.generate model=smollm2-135m-instruct prompt="What is the capital of France?"
    python -m jobs.generate jobs/configs/generate.yaml model=runs/sft-demo/final prompt="订单到哪了？"
"""
from __future__ import annotations

from app.cli import Job
from app.config import JobConfig


class GenerateConfig(JobConfig):
    model: str = "smollm2-135m-instruct"
    prompt: str
    system: str | None = None
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    dtype: str = "float32"
    trust_remote_code: bool = False


JOB = Job(GenerateConfig, "app.generation:run", "generate.yaml")

if __name__ == "__main__":
    JOB.main()
