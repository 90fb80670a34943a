"""Evaluation: per-item and corpus metrics, batch answering, safety, paired comparison and the release gate
(app/eval/evaluate.py is the stage)."""
