"""What every `python -m jobs.<stage>` shares: argument parsing and one-line errors.

    python -m jobs.<stage> [config.yaml] [key=value ...]
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from app import storage
from app.config import Config, UserError, load_config

CONFIG_DIR = Path(__file__).resolve().parent.parent / "jobs" / "configs"


def run_job(config_cls: type[Config], run: Callable[[Config], object] | str, default_config: str | None = None,
            argv: list[str] | None = None) -> object:
    """Parse `[config.yaml] [key=value ...]`, build the typed config, call `run(cfg)`. URIs in the config
    are fetched first and a URI output_dir is published after (app/storage.py). `run` may be named as
    "module:function": it is imported only once the config is valid, so a bad key fails before torch loads.

    A UserError (bad key, bad YAML, missing model...) prints one line and exits with status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    path = argv.pop(0) if argv and "=" not in argv[0] else None
    if path is None and default_config:
        path = CONFIG_DIR / default_config
    try:
        cfg, target = storage.localize(load_config(config_cls, path, argv))
        if isinstance(run, str):
            module, _, name = run.partition(":")
            run = getattr(importlib.import_module(module), name)
        result = run(cfg)
        if target:
            storage.publish(Path(cfg.output_dir), target)
            print(f"published {cfg.output_dir} -> {target}")
        return result
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


@dataclass(frozen=True)
class Job:
    """A stage's entry point, `JOB` in jobs/<stage>.py: its config class, its run (a callable, or
    "module:function", imported only once the config is valid) and its default config in jobs/configs/.
    `python -m jobs.<stage>` calls main(); the pipeline checks every stage's config with it before the
    first stage runs."""
    config: type[Config]
    run: Callable[[Config], object] | str
    default_config: str | None = None

    def main(self, argv: list[str] | None = None) -> object:
        return run_job(self.config, self.run, self.default_config, argv)
