"""Evaluation: metrics (pure), and later batch inference, safety, registry and the release gate."""
