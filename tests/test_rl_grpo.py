"""GRPO on the PPO actors through a real local Ray, and the verifiable rewards."""
from __future__ import annotations

import json

import pytest


def test_verifiable_rewards():
    from app.rl.rewards import answer_format, exact_answer, gsm8k
    refs = ["6 + 20 = 26\n#### 26", "#### 1,200", "#### 7"]
    responses = ["6 plus 20 is 26.\n#### 26", "The total is 1200 dollars", "I think 8.\n#### 8"]
    assert exact_answer(None, responses, refs) == [1.0, 1.0, 0.0]
    assert answer_format(None, responses) == [1.0, 0.0, 1.0]
    assert gsm8k(None, responses, refs) == pytest.approx([1.1, 1.0, 0.1])
    assert exact_answer(None, ["no number here"], ["#### 3"]) == [0.0]


def test_grpo_configs_parse():
    from pathlib import Path
    from app.config import ConfigError, load_config
    from app.rl.grpo import GRPOConfig
    for path in sorted(Path("jobs/configs").glob("grpo_*.yaml")):
        load_config(GRPOConfig, path)
    with pytest.raises(ConfigError, match="group_size"):
        load_config(GRPOConfig, "jobs/configs/grpo_tiny.yaml", ["group_size=1"])
    with pytest.raises(ConfigError, match="critic_lr"):  # PPO's keys are not GRPO's
        load_config(GRPOConfig, "jobs/configs/grpo_tiny.yaml", ["critic_lr=1e-5"])


@pytest.mark.slow
def test_grpo_raises_toy_reward_with_versioned_sync(ray_local, prompts_file, tmp_path):
    from app.config import load_config
    from app.rl.grpo import GRPOConfig, run
    out = tmp_path / "grpo"
    summary = run(load_config(GRPOConfig, "jobs/configs/grpo_tiny.yaml",
                              [f"prompts={prompts_file}", f"output_dir={out}"]))
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s["policy_version"] for s in steps] == list(range(1, 9)) and len({s["checksum"] for s in steps}) == 8
    assert all(s["sampled_versions"] == [s["policy_version"] - 1] for s in steps)
    assert all(s["sync_logprob_gap"] < 1e-4 for s in steps) and "value_loss" not in steps[0]
    assert all(len(s["prompt_ids"]) == 4 for s in steps)  # 2 actors x 2 prompts, each sampled 4 times
    first = sum(s["reward_mean"] for s in steps[:2]) / 2
    last = sum(s["reward_mean"] for s in steps[-2:]) / 2
    assert last > first + 0.05, (first, last)
    assert (out / "grpo_curve.png").exists() and summary["policy_version"] == 8
