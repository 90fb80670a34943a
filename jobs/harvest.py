"""Turn the serving request log and its feedback into training records (app/ops/harvest.py).

    python -m jobs.harvest logs=runs/request-log [min_score=0.5 max_rejected_score=-0.5]

Output: runs/harvest-<name>/ dialogs.jsonl and preferences.jsonl (inputs of jobs.data), manifest.json.
"""
from app.cli import Job
from app.ops.harvest import HarvestConfig

JOB = Job(HarvestConfig, "app.ops.harvest:run")

if __name__ == "__main__":
    JOB.main()
