"""Entrypoints: `python -m jobs.<stage> [config.yaml] [key=value ...]`, also after `ray job submit --`."""
