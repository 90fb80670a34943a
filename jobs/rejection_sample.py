"""Best-of-k rejection sampling into SFT records (app/rl/rejection.py).

    python -m jobs.rejection_sample jobs/configs/rejection_sample_demo.yaml
    python -m jobs.rejection_sample jobs/configs/rejection_sample_demo.yaml k=8 limit=32
"""
from app.cli import Job
from app.rl.config import RejectionConfig

JOB = Job(RejectionConfig, "app.rl.rejection:run", "rejection_sample_demo.yaml")

if __name__ == "__main__":
    JOB.main()
