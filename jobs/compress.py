"""Prune a trained model, then distill the pruned one from it (app/compress/compress.py).

    python -m jobs.compress jobs/configs/compress_demo.yaml
    python -m jobs.compress jobs/configs/compress_demo.yaml drop_layers=6 mlp_keep=0.75
"""
from app.cli import Job
from app.compress.config import CompressConfig

JOB = Job(CompressConfig, "app.compress.compress:run", "compress_demo.yaml")

if __name__ == "__main__":
    JOB.main()
