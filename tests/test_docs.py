"""The README and docs/ as a user reads them: every `python -m jobs.<stage> ...` they show names a job that
exists and a config that parses with the keys written beside it (placeholders such as `<spec>` and
`[key=value ...]` left out), every relative link points at a file, and the README stays a page a newcomer
reads in five minutes."""
from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"python -m jobs\.(\w+)([^`\n|]*)")
ARGUMENT_JOBS = {"registry", "prepare"}  # entry points that take sub-commands, not a config


def commands() -> list[tuple[str, str, str]]:
    found = []
    for page in PAGES:
        for match in COMMAND.finditer(page.read_text(encoding="utf-8")):
            found.append((page.relative_to(ROOT).as_posix(), match.group(1), match.group(2).strip()))
    return found


PLACEHOLDER = ("<", ">", "...", "…", "${", "|")


def literal(token: str) -> str | None:
    """The argument as the job gets it: a `key=<placeholder>` the page asks the reader to fill in keeps its
    key (with a stand-in value); an optional `[key=value ...]` or a bare placeholder is left out."""
    if token.startswith("[") or token.endswith("]") or token in ("&&", "\\"):
        return None
    key, sep, value = token.partition("=")
    if sep and re.fullmatch(r"[\w.]+", key) and any(p in value for p in PLACEHOLDER):
        return f"{key}=placeholder"
    return None if any(p in token for p in PLACEHOLDER) else token


def test_the_pages_show_commands():
    found = commands()
    assert len(found) > 50 and {job for _, job, _ in found} >= {"data", "sft", "eval", "ppo", "grpo", "pipeline"}


@pytest.mark.parametrize("page,job,args", commands(), ids=lambda v: v if isinstance(v, str) and len(v) < 40 else None)
def test_every_command_parses(page, job, args):
    from app.config import load_config
    assert (ROOT / "jobs" / f"{job}.py").is_file(), f"{page}: python -m jobs.{job}: no such job"
    if job in ARGUMENT_JOBS:
        return
    try:
        tokens = shlex.split(args.split(" # ")[0].split(";")[0])
    except ValueError:  # an unbalanced quote in prose: the literal tokens before it
        tokens = args.split()
    tokens = [t for t in map(literal, tokens) if t and not t.startswith("-")]
    configs = [t for t in tokens if t.endswith(".yaml") and "=" not in t]
    for path in configs:
        assert (ROOT / path).is_file(), f"{page}: python -m jobs.{job}: {path} does not exist"
    overrides = [t for t in tokens if "=" in t and not t.endswith(".yaml")]
    if job == "pipeline":  # the DAG, as jobs.pipeline checks it before its first stage
        from app.ops.pipeline import PipelineConfig, check
        check(load_config(PipelineConfig, configs[0] if configs else ROOT / "jobs/configs/demo.yaml", overrides))
        return
    module = importlib.import_module(f"jobs.{job}")
    config = configs[0] if configs else (module.JOB.default_config and ROOT / "jobs" / "configs" / module.JOB.default_config)
    load_config(module.JOB.config, config, overrides)


def test_links_point_at_files():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name}: broken link {target}"


def test_the_readme_is_short():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 200
