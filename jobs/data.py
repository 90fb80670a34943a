"""The data stage: raw JSONL/CSV/Parquet -> cleaned, deduplicated, split SFT records (see app/data/).

    python -m jobs.data jobs/configs/data_demo.yaml
    python -m jobs.data jobs/configs/data_demo.yaml input.path=data/demo/raw/tickets.csv output_dir=runs/data-tk
    ray job submit --working-dir . -- python -m jobs.data jobs/configs/data_demo.yaml
"""
from app.cli import run_job
from app.data.config import DataConfig
from app.data.stage import run

if __name__ == "__main__":
    run_job(DataConfig, run, default_config="data_demo.yaml")
