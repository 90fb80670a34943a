"""Supervised fine-tuning on Ray Train + DeepSpeed (app/train/sft.py is the entrypoint)."""
