"""Watch the served version's live signals (errors, safety-filter hits, feedback) and roll back on a breach.

    python -m jobs.monitor serve_config=serve_configs/demo.yaml [window_s=300 interval_s=30 max_error_rate=0.05]

See app/ops/monitor.py. Output: runs/monitor-<name>/events.jsonl, one line per rollback.
"""
from app.cli import Job
from app.ops.monitor import MonitorConfig

JOB = Job(MonitorConfig, "app.ops.monitor:run")

if __name__ == "__main__":
    JOB.main()
