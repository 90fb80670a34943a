"""Ray Tune sweeps of SFT trials on a real two-node Ray cluster (tests/two_nodes.py): bad keys fail at
start; an interrupted sweep resumes without re-running finished trials, ASHA stops the weak trial early
against the rungs of a trial that finished before the interruption (Tune itself does not save them),
best.yaml is a config for jobs.sft with the winner's values."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from app.config import ConfigError, load_config
from app.train.config import SFTConfig
from app.train.sweep import SweepConfig, check


def terminated(out) -> set[str]:
    """Trials Tune's latest experiment state records as TERMINATED (a half-written file: none yet)."""
    states = sorted((out / "tune" / "sweep").glob("experiment_state-*.json"))
    try:
        trials = [json.loads(t[0]) for t in json.loads(states[-1].read_text())["trial_data"]] if states else []
    except json.JSONDecodeError:
        return set()
    return {t["trial_id"] for t in trials if t["status"] == "TERMINATED"}


def test_bad_search_space_fails_at_start_naming_the_key():
    with pytest.raises(ConfigError, match="'lora.rank'"):
        check(load_config(SweepConfig, "jobs/configs/sweep_tiny.yaml", ["space={lora.rank: [4, 8]}"]))
    with pytest.raises(ConfigError, match="space.optim.lr"):
        check(load_config(SweepConfig, "jobs/configs/sweep_tiny.yaml", ["space={optim.lr: 'loguniform(1e-4)'}"]))
    with pytest.raises(ConfigError, match="lora"):
        check(load_config(SweepConfig, "jobs/configs/sweep_tiny.yaml", ["space={lora.r: [four]}"]))
    with pytest.raises(ConfigError, match="search"):
        load_config(SweepConfig, "jobs/configs/sweep_tiny.yaml", ["search=bayes"])
    with pytest.raises(ConfigError, match="grace_period"):
        check(load_config(SweepConfig, "jobs/configs/sweep_tiny.yaml", ["scheduler.grace_period=20"]))
    check(load_config(SweepConfig, "jobs/configs/sweep_demo.yaml"))
    with pytest.raises(ConfigError, match="'lora.r'"):
        check(load_config(SweepConfig, "jobs/configs/sweep_tiny.yaml", ["space={lora.r: [0]}"]))


@pytest.mark.slow
@pytest.mark.timeout(900)  # 2 trials and a resume: ~2 min alone on 2 cores
def test_interrupted_sweep_resumes_and_writes_best_yaml(cluster, sft_data, tmp_path):
    out = tmp_path / "sweep"
    args = [f"output_dir={out}", f"overrides=[data.path={sft_data}, scaling.num_workers=1, train.max_steps=4, "
            "eval.every=2, eval.patience=null, checkpoint.every=4, tensorboard=false]"]
    # both drivers join the two-node cluster (a killed driver's trials and workers die with its job);
    # Tune saves its state every second
    env = {**cluster["env"], "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    first = subprocess.Popen([sys.executable, "-m", "jobs.sweep", "jobs/configs/sweep_tiny.yaml", *args], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 400
    while time.time() < deadline and not terminated(out):  # Tune has recorded a finished trial
        time.sleep(0.5)
    finished = sorted(t for t in terminated(out) if (out / "trials" / t / "final" / "config.json").is_file())
    # what a finished trial wrote: a trial that ran again would append to its metrics and re-export final/
    written = {t: ((out / "trials" / t / "metrics.jsonl").read_bytes(),
                   (out / "trials" / t / "final" / "config.json").stat().st_mtime_ns) for t in finished}
    os.killpg(first.pid, signal.SIGKILL)  # an interruption the sweep did not see coming
    first.wait()
    assert finished, "no trial finished before the interruption"
    again = subprocess.run([sys.executable, "-m", "jobs.sweep", "jobs/configs/sweep_tiny.yaml", *args], env=env,
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming" in again.stdout
    for trial in finished:  # finished trials were not run again
        assert ((out / "trials" / trial / "metrics.jsonl").read_bytes(),
                (out / "trials" / trial / "final" / "config.json").stat().st_mtime_ns) == written[trial]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 2 and all(r["status"] == "OK" for r in rows)
    stopped = {r["optim.lr"]: r["stopped_early"] for r in rows}
    # ASHA cut the worse trial, which started after the resume, at step 2 against the finished trial's record
    assert stopped["0.01"] == "False" and stopped["0.0001"] == "True"
    assert (out / "sweep.png").exists()
    # one-worker trials trained in their Tune actor (app/train/fit.py in_process), not on Ray Train: the
    # checkpoint the finished trial exported from is the in-process one, named by its step, and complete
    from app.train import checkpoints
    kept = checkpoints.complete_checkpoints(out / "trials" / finished[0] / "ray" / "train")
    assert [c.name for c in kept] == ["checkpoint_00000004"]
    best = out / "best.yaml"
    assert best.read_text().startswith("# python -m jobs.sft")
    cfg = load_config(SFTConfig, best)
    assert cfg.optim.lr == 0.01 and cfg.lora.r == 8 and cfg.data.path == str(sft_data)
