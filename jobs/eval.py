"""Evaluate a model, register it, and gate its release (see app/eval/evaluate.py).

    python -m jobs.eval jobs/configs/eval_demo.yaml model=runs/sft-demo/final gate.baseline=latest-promoted
"""
from app.cli import Job
from app.eval.config import EvalConfig

JOB = Job(EvalConfig, "app.eval.evaluate:run", "eval_demo.yaml")

if __name__ == "__main__":
    JOB.main()
