"""The data stage: raw JSONL/CSV/Parquet -> cleaned, deduplicated, split SFT records (see app/data/).

    python -m jobs.data jobs/configs/data_demo.yaml
    python -m jobs.data jobs/configs/data_demo.yaml input.path=data/demo/raw/tickets.csv output_dir=runs/data-tk
    ray job submit --working-dir . -- python -m jobs.data jobs/configs/data_demo.yaml
"""
from app.cli import Job
from app.data.config import DataConfig
from app.data.stage import run

JOB = Job(DataConfig, run, "data_demo.yaml")

if __name__ == "__main__":
    JOB.main()
