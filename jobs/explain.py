"""Explain one answer: integrated gradients (captum) and attention rollout of each answer token over the
prompt's tokens, as explanation.json and a heatmap PNG (app/eval/explain.py).

    python -m jobs.explain model=runs/pipeline-demo/sft/final prompt="我的订单到哪了？"
    python -m jobs.explain model=<spec> prompt="..." answer="..." output_dir=runs/explain-x
"""
from __future__ import annotations

from pydantic import Field

from app.cli import Job
from app.config import JobConfig


class ExplainConfig(JobConfig):
    model: str = "smollm2-135m-instruct"
    prompt: str
    answer: str | None = None            # explain this answer; default: the model's greedy one
    max_new_tokens: int = Field(24, ge=1)
    steps: int = Field(16, ge=2)         # integrated gradients' interpolation steps


def run(cfg: ExplainConfig) -> dict:
    from app.eval.explain import explain
    out = cfg.out("explain")
    result = explain(cfg.model, cfg.prompt, cfg.answer, cfg.max_new_tokens, cfg.steps, out)
    top = sorted(zip(result["prompt_token_totals"], result["prompt_tokens"]), reverse=True)[:5]
    print(f"explain: {result['answer']!r}; most attributed prompt tokens {[t for _, t in top]} -> "
          f"{out}/explanation.png, {out}/explanation.json")
    return result


JOB = Job(ExplainConfig, run)

if __name__ == "__main__":
    JOB.main()
