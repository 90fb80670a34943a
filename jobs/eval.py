"""Evaluate a model, register it, and gate its release (see app/eval/evaluate.py).

    python -m jobs.eval jobs/configs/eval_demo.yaml model=runs/sft-demo/final gate.baseline=latest-promoted
"""
from app.cli import run_job
from app.eval.evaluate import EvalConfig, run

if __name__ == "__main__":
    run_job(EvalConfig, run, default_config="eval_demo.yaml")
