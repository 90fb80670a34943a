"""Best-of-k rejection sampling (jobs.rejection_sample) on the tiny policy: real Ray actors."""
import json

import pyarrow.parquet as pq
import pytest

from app.config import load_config
from app.rl.config import RejectionConfig
from app.rl.rejection import pick_best


def test_pick_best_takes_the_highest_safe_answer():
    from app.safety import rank
    assert rank([0.9, 0.5, 0.7, 0.7], [False, True, True, True]) == [2, 3, 1, 0]
    assert pick_best([0.9, 0.5, 0.7], [True, False, False], None) == (2, "")  # the unsafe 0.9 never wins
    assert pick_best([0.2, 0.2], [False, False], None) == (0, "")              # ties go to the first
    assert pick_best([0.9], [True], None) == (None, "all_unsafe")
    assert pick_best([0.1, 0.3], [False, False], 0.5) == (None, "below_min_reward")


def test_config_needs_a_reward():
    with pytest.raises(Exception, match="reward_model"):
        load_config(RejectionConfig, "jobs/configs/rejection_sample_demo.yaml", ["reward_model=null"])


def test_best_of_k_records_for_sft(ray_local, prompts_file, tmp_path):
    from app.rl.rejection import run
    cfg = load_config(RejectionConfig, "jobs/configs/rejection_sample_demo.yaml", [
        "policy=tiny", f"prompts={prompts_file}", "reward_model=null",
        "reward_function=tests.rl_plugins:text_length", "k=4", "max_new_tokens=12", "limit=null",
        "min_reward=0.85", "rollout_workers=2", "cpus_per_actor=0.2", f"output_dir={tmp_path}/rs"])
    summary = run(cfg)
    kept = pq.read_table(tmp_path / "rs" / "train").to_pylist()
    rejected = pq.read_table(tmp_path / "rs" / "rejected").to_pylist()
    assert summary["prompts"] == 16 and len(kept) + len(rejected) == 16 == summary["kept"] + \
        sum(summary["rejected"].values())
    assert {r["reason"] for r in rejected} <= {"below_min_reward"} and kept  # the tiny model says nothing unsafe
    for r in kept:
        assert r["messages"][-1]["role"] == "assistant" and r["id"].endswith("-rs")
        assert json.loads(r["flags"])["rejection_sampled"]["reward"] >= 0.85
    # best of 4 against the first sample of the same prompts, seeded: pinned
    assert summary["reward_best_of_k"] >= summary["reward_single"]
    assert (summary["kept"], round(summary["reward_single"], 4), round(summary["reward_best_of_k"], 4)) == (13, 0.7681, 0.9012)
