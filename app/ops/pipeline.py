"""The pipeline: stages as a DAG of `python -m jobs.<job>` processes, each output cached under a key.

    python -m jobs.pipeline jobs/configs/demo.yaml                  # what `make demo` runs
    python -m jobs.pipeline jobs/configs/demo.yaml --from sft       # re-run sft and what depends on it
    ray job submit --working-dir . -- python -m jobs.pipeline jobs/configs/demo.yaml   # stages join that cluster

Stages join the Ray cluster in RAY_ADDRESS, or else one local instance the pipeline starts for them all.
A stage names its inputs as `${stage}` in its overrides (`data.path=${data}`, `policy=${sft}/final`); those
references are the DAG's edges (`after: [stage]` adds one without reading it: the gate before shipping),
and `${output_dir}` is the pipeline's own folder. A stage's key hashes its job, its config file, its
overrides with every `${stage}` replaced by that stage's key, and the local files its config names
(contents; folders by name, size and mtime). Its output lives in `<output_dir>/<stage>-<key[:12]>`,
finished when `stage.json` is there: a re-run skips it, a changed config changes its key and its
dependents' keys only; `<output_dir>/<stage>` links to its latest output (runs/pipeline-demo/sft/final).
A stage's `after:` stages enter its key too: shipping re-runs when the gate before it did. With
`parallel: N`, up to N stages whose inputs are ready run at once (on a cluster
each lands where Ray has room). A failing stage stops the pipeline with its error; finished outputs stay
for the next run. Code changes do not change keys: `--from <stage>` forces a re-run.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import re
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from pydantic import Field

from app import PROJECT_ROOT
from app.cli import CONFIG_DIR
from app.cluster import shared_ray
from app.config import Config, ConfigError, JobConfig, UserError, load_config, parse_value, read_yaml, set_dotted
from app.runinfo import sha256_file

REF = re.compile(r"\$\{([A-Za-z_][\w-]*)\}")


class StageConfig(Config):
    job: str                     # jobs.<job>, e.g. data, sft, eval
    config: str | None = None    # the job's YAML; may be an upstream output (`${sweep}/best.yaml`)
    overrides: list[str] = []    # key=value, with ${stage} references to upstream outputs
    after: list[str] = []        # stages that must finish first without being read (a gate before shipping)


class PipelineConfig(JobConfig):
    stages: dict[str, StageConfig]
    start_from: str | None = None  # `--from <stage>`: force it and everything that depends on it
    timeout_s: float = 3600         # per stage
    parallel: int = Field(1, ge=1)   # stages run at once when their inputs are ready (each its own Ray driver)


def edges(stages: dict[str, StageConfig]) -> dict[str, list[str]]:
    """stage -> the stages it reads or comes after; unknown references fail at start."""
    deps = {}
    for name, stage in stages.items():
        refs = [r for o in [stage.config or "", *stage.overrides] for r in REF.findall(o) if r != "output_dir"]
        unknown = sorted(set(refs) - set(stages))
        if unknown:
            raise ConfigError(f"stages.{name}.overrides: ${{{unknown[0]}}} is not a stage "
                              f"(stages: {', '.join(stages)})")
        unknown = sorted(set(stage.after) - set(stages))
        if unknown:
            raise ConfigError(f"stages.{name}.after: {unknown[0]} is not a stage (stages: {', '.join(stages)})")
        deps[name] = list(dict.fromkeys(refs + stage.after))
    return deps


def order(deps: dict[str, list[str]]) -> list[str]:
    """Topological order, ties broken by the order stages are written in; cycles fail at start."""
    done: list[str] = []
    while len(done) < len(deps):
        ready = [s for s in deps if s not in done and all(d in done for d in deps[s])]
        if not ready:
            raise ConfigError(f"the stages' references form a cycle among: {', '.join(s for s in deps if s not in done)}")
        done.append(ready[0])
    return done


def dependents(deps: dict[str, list[str]], start: str) -> set[str]:
    """`start` and every stage that reads it, directly or not."""
    found = {start}
    for name in order(deps):
        if any(d in found for d in deps[name]):
            found.add(name)
    return found


def substitute(text: str, values: dict[str, str]) -> str:
    return REF.sub(lambda m: values[m.group(1)], text)


def fingerprint(path: Path) -> str:
    """Contents of a file; name, size and mtime of each file in a folder (model folders are large)."""
    if path.is_file():
        return sha256_file(path)
    listing = sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
                     for p in path.rglob("*") if p.is_file())
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def local_inputs(stage: StageConfig) -> dict[str, str]:
    """Fingerprints of the existing local paths in the stage's effective config (its YAML with its overrides
    applied; output_dir and `${stage}` references aside)."""
    data = read_yaml(stage.config) if stage.config and not REF.search(stage.config) else {}
    for item in stage.overrides:
        key, _, raw = item.partition("=")
        set_dotted(data, key.strip(), parse_value(raw))
    data.pop("output_dir", None)
    paths = {v: Path(v) for v in _strings(data) if "/" in v and "${" not in v and "://" not in v and len(v) < 1024}
    return {v: fingerprint(p) for v, p in sorted(paths.items()) if p.exists()}


def _strings(node) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def stage_key(stage: StageConfig, upstream: dict[str, str]) -> str:
    """sha256 of what determines the stage's output; upstream stages enter by their keys, not their paths."""
    config = stage.config and (substitute(stage.config, {**upstream, "output_dir": "${output_dir}"})
                               if REF.search(stage.config) else Path(stage.config).read_text(encoding="utf-8"))
    payload = {"job": stage.job, "config": config,
               "overrides": [substitute(o, {**upstream, "output_dir": "${output_dir}"}) for o in stage.overrides],
               "inputs": local_inputs(stage)}
    if stage.after:  # a gate that re-ran may have promoted something else: what ships after it runs again
        payload["after"] = {a: upstream.get(a) for a in stage.after}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def check(cfg: PipelineConfig) -> list[str]:
    """Everything that can be checked before the first stage runs; returns the run order."""
    deps = edges(cfg.stages)
    if cfg.start_from and cfg.start_from not in cfg.stages:
        raise ConfigError(f"--from {cfg.start_from}: not a stage (stages: {', '.join(cfg.stages)})")
    for name, stage in cfg.stages.items():
        if not (PROJECT_ROOT / "jobs" / f"{stage.job}.py").is_file():
            raise ConfigError(f"stages.{name}.job: no module jobs.{stage.job}")
        if stage.config and not REF.search(stage.config) and not Path(stage.config).is_file():
            raise ConfigError(f"stages.{name}.config: file not found: {stage.config}")
    return order(deps)


def check_stage(name: str, stage: StageConfig, dirs: dict[str, str]) -> None:
    """The stage's config as its process will load it (`${stage}` references read as those stages' folders).
    A config file that an upstream stage writes (a sweep's best.yaml) is checked when its stage runs."""
    job = getattr(importlib.import_module(f"jobs.{stage.job}"), "JOB", None)
    if job is None:
        return
    path = substitute(stage.config, dirs) if stage.config else \
        (CONFIG_DIR / job.default_config if job.default_config else None)
    if path is not None and not Path(path).is_file():
        return
    try:
        load_config(job.config, path, [substitute(o, dirs) for o in stage.overrides] + [f"output_dir={dirs[name]}"])
    except UserError as exc:
        raise ConfigError(f"stages.{name} (jobs.{stage.job}): {exc}") from None


def run(cfg: PipelineConfig) -> dict:
    """Run the stages, up to `parallel` at once as their inputs finish; returns {"stages": {stage: {"dir",
    "key", "cached", "seconds"}}, "seconds", "root"}. After a failure no new stage starts; the running ones
    finish and keep their outputs, then the first error is raised."""
    names = check(cfg)
    deps = edges(cfg.stages)
    root = cfg.out("pipeline")
    root.mkdir(parents=True, exist_ok=True)
    forced = dependents(deps, cfg.start_from) if cfg.start_from else set()
    keys: dict[str, str] = {}
    for name in names:  # keys depend on configs and upstream keys only, so all are known before anything runs
        keys[name] = stage_key(cfg.stages[name], {d: keys[d] for d in deps[name]})
    dirs = {"output_dir": str(root.resolve()), **{n: str((root / f"{n}-{keys[n][:12]}").resolve()) for n in names}}
    for name in names:  # every stage's config, a bad key in the last one fails before the first runs
        check_stage(name, cfg.stages[name], dirs)
    tag = {n: f"[{i}/{len(names)}] {n:<12}" for i, n in enumerate(names, 1)}
    results: dict[str, dict] = {}
    running: dict[Future, str] = {}
    errors: list[UserError] = []
    started = time.monotonic()
    ray_up = False
    with ExitStack() as stack, ThreadPoolExecutor(cfg.parallel) as pool:
        while True:
            ready = [n for n in names if n not in results and n not in running.values()
                     and all(d in results for d in deps[n])]
            cached = [n for n in ready if (Path(dirs[n]) / "stage.json").is_file() and n not in forced][:1]
            for name in cached:  # one at a time, so they are listed in run order
                print(f"{tag[name]} cached      {dirs[name]}", flush=True)
                results[name] = {"dir": Path(dirs[name]), "key": keys[name], "cached": True, "seconds": 0.0}
                link_latest(root, name, Path(dirs[name]))
            if cached:
                continue
            for name in ([] if errors else ready[:cfg.parallel - len(running)]):
                if not ray_up:  # the first stage that runs starts Ray for them all (stopped after the last)
                    stack.enter_context(shared_ray())
                    ray_up = True
                print(f"{tag[name]} running     jobs.{cfg.stages[name].job} -> {dirs[name]}", flush=True)
                running[pool.submit(_run, name, cfg.stages[name], dirs, deps[name], keys, cfg.timeout_s)] = name
            if not running:
                break
            for future in wait(running, return_when=FIRST_COMPLETED).done:
                name = running.pop(future)
                try:
                    results[name] = future.result()
                    link_latest(root, name, results[name]["dir"])
                    print(f"{tag[name]} done        in {results[name]['seconds']:.0f} s", flush=True)
                except UserError as e:
                    print(f"{tag[name]} FAILED", flush=True)
                    errors.append(e)
    if errors:
        raise errors[0]
    total = time.monotonic() - started
    results = {n: results[n] for n in names}
    (root / "last_run.json").write_text(json.dumps(
        {"seconds": round(total, 1), "stages": {n: {**r, "dir": str(r["dir"])} for n, r in results.items()}}, indent=2))
    return {"stages": results, "seconds": total, "root": root}


def link_latest(root: Path, name: str, target: Path) -> None:
    """<root>/<stage> -> <stage>-<key>: the stable name of the stage's latest output, so the step-by-step
    commands (python -m jobs.sft ..., serve run ...) find what the pipeline made."""
    link, tmp = root / name, root / f".{name}.link"
    if link.exists() and not link.is_symlink():
        print(f"pipeline: {link} is not a link; not replacing it", flush=True)
        return
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target.name)
    tmp.replace(link)


def _run(name: str, stage: StageConfig, dirs: dict[str, str], deps: list[str], keys: dict[str, str],
         timeout: float) -> dict:
    """One stage into its (emptied) folder; stage.json, written last, marks it finished."""
    out = Path(dirs[name])
    shutil.rmtree(out, ignore_errors=True)  # a half-written or forced output
    out.mkdir(parents=True)
    config = substitute(stage.config, dirs) if stage.config else None
    overrides = [substitute(o, dirs) for o in stage.overrides]
    began = time.time()
    seconds = run_stage(name, stage.job, config, overrides, out, timeout)
    (out / "stage.json").write_text(json.dumps(
        {"stage": name, "job": stage.job, "key": keys[name], "config": config, "overrides": overrides,
         "upstream": {d: keys[d] for d in deps}, "seconds": round(seconds, 1), "started_at": began,
         "finished_at": time.time()}, indent=2))
    return {"dir": out, "key": keys[name], "cached": False, "seconds": seconds}


def run_stage(name: str, job: str, config: str | None, overrides: list[str], out: Path, timeout: float) -> float:
    """One stage as its own process (its own Ray driver); output in out/stage.log. Raises UserError on failure."""
    argv = [sys.executable, "-m", f"jobs.{job}", *([config] if config else []), *overrides, f"output_dir={out}"]
    log = out / "stage.log"
    started = time.monotonic()
    with open(log, "w", encoding="utf-8") as f:
        f.write(" ".join(argv) + "\n")
        f.flush()
        try:
            code = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    if code != 0:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
        errors = [line for line in lines if line.startswith("error:") or "Error" in line]
        raise UserError(f"stage {name} (jobs.{job}) failed ({'timed out' if code == 'timeout' else f'exit {code}'})"
                        f": {(errors or lines or ['no output'])[-1]}\n  log: {log}\n  finished stages are kept; "
                        f"fix and re-run, they will be skipped")
    return time.monotonic() - started
