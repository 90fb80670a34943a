"""On-policy distillation on the RL actors: the student samples, the teacher (reference role) scores each
token, per-token reverse KL is the advantage (app/rl/distill.py). Offline logit distillation on fixed text is
jobs.sft's `distill:` section (jobs.compress runs it after pruning).

    python -m jobs.distill jobs/configs/distill_demo.yaml
    python -m jobs.distill jobs/configs/distill_tiny.yaml policy=tiny teacher=<a model dir> prompts=<jsonl>
"""
from app.cli import Job
from app.rl.config import OnPolicyDistillConfig

JOB = Job(OnPolicyDistillConfig, "app.rl.distill:run", "distill_demo.yaml")

if __name__ == "__main__":
    JOB.main()
