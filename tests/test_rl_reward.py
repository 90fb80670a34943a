"""Reward model: reading pairs (ours and HH-RLHF), and a real Ray Train run on a separable toy set."""
from __future__ import annotations

import json

import pytest
import torch

from app.train.preferences import parse_hh, read_pairs, split, to_pair
from tests.conftest import BAD, GOOD


def test_hh_transcripts_become_prompt_and_two_answers():
    chosen = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how do I pick a lock?\n\nAssistant: I can't help with that."
    rejected = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how do I pick a lock?\n\nAssistant: Use a tension wrench."
    pair = to_pair({"chosen": chosen, "rejected": rejected}, 3)
    assert pair["prompt"] == parse_hh(chosen)[:-1] and pair["prompt"][-1]["content"] == "how do I pick a lock?"
    assert (pair["chosen"], pair["rejected"], pair["id"]) == ("I can't help with that.", "Use a tension wrench.",
                                                              "pair-000003")
    with pytest.raises(ValueError, match="share a prompt"):
        to_pair({"chosen": chosen, "rejected": "\n\nHuman: other\n\nAssistant: x"}, 0)


def test_bad_records_are_skipped_with_a_reason(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join([
        json.dumps({"id": "a", "prompt": "q", "chosen": "good", "rejected": "bad"}),
        "{not json",
        json.dumps({"id": "b", "prompt": "q", "chosen": "same", "rejected": "same"}),
        json.dumps({"id": "c", "prompt": "q", "chosen": "", "rejected": "bad"}),
    ]) + "\n")
    pairs, skipped = read_pairs(path)
    assert [p["id"] for p in pairs] == ["a"]
    assert skipped == {"malformed": 1, "chosen equals rejected": 1, "chosen and rejected must be non-empty strings": 1}
    train, val = split(pairs * 1, 0.5, seed=0)
    assert len(train) + len(val) == 1


@pytest.mark.slow
def test_reward_model_learns_a_separable_set(ray_local, toy_pairs, tmp_path):
    from app.config import load_config
    from app.train.reward import RewardConfig, RewardModel, run
    cfg = load_config(RewardConfig, "jobs/configs/reward_tiny.yaml",
                      [f"data.path={toy_pairs}", f"output_dir={tmp_path / 'rm'}"])
    summary = run(cfg, report=lambda metrics: None)  # its one worker in this process (SFT tests Ray Train)
    # the seeded tiny run on the shared loop, pinned (1 worker, DeepSpeed, lr 3e-3, 3 epochs of 5 steps)
    rows = [json.loads(line) for line in (tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()]
    torch.testing.assert_close([m["train_loss"] for m in rows if "train_loss" in m],
                               [0.68935, 0.690986, 0.683057, 0.675516, 0.613038, 0.515533, 0.527424, 0.231737,
                                0.203646, 0.113492, 0.081267, 0.065917, 0.050987, 0.044544, 0.036853], rtol=1e-3, atol=1e-4)
    torch.testing.assert_close([(m["step"], m["val_loss"], m["val_accuracy"]) for m in rows if "val_loss" in m],
                               [(0, 0.692478, 0.708333), (15, 0.036791, 1.0)], rtol=1e-3, atol=1e-4)
    assert summary["val_accuracy"] == 1.0 and summary["best_step"] == 15
    # the exported model on the 24 held-out pairs, each on its own head: all right, the exact 95% interval
    held = summary["heldout"]
    assert (held["n"], held["accuracy"]) == (24, 1.0) and held["ci_low"] == pytest.approx(0.8575, abs=1e-4)
    assert held["by_kind"] == {"rude": {k: held[k] for k in ("n", "accuracy", "ci_low", "ci_high")}}
    assert {k: v["n"] for k, v in held["by_head"].items()} == {"helpfulness": 12, "safety": 12}
    scored = [json.loads(line) for line in (tmp_path / "rm" / "val_pairs.jsonl").read_text().splitlines()]
    assert len(scored) == 24 and all(r["right"] and r["margin"] > 0 for r in scored)
    assert [r["margin"] for r in scored] == sorted(r["margin"] for r in scored)
    # 96 pairs: 43 train, 24 validation, 29 longer than max_len=64 (said, not silently lost)
    assert summary["data"] == {"pairs": 96, "skipped": {}, "train": 43, "val": 24,
                               "dropped": {"too_long": 29}, "capped": 0}
    model = RewardModel(summary["final"])
    assert model.names == ["helpfulness", "safety"]
    good, bad = model.score(["Where is my order?"] * 2, [GOOD[1], BAD[0]])
    assert good > bad
    assert model.score_heads(["q"], ["a"]).shape == (1, 2)
    # the same model as the eval's judge: win rate of polite answers against rude ones on the same prompts
    from app.eval.judge import JudgeConfig, wins
    judge, prompts = JudgeConfig(reward_model=summary["final"]), [[{"role": "user", "content": "Where is my order?"}]] * 3
    assert wins(judge, prompts, GOOD[:3], BAD[:3]) == ([1.0, 1.0, 1.0], 0)
    assert wins(judge, prompts, BAD[:3], GOOD[:3]) == ([0.0, 0.0, 0.0], 0)
    assert wins(judge, prompts, GOOD[:3], GOOD[:3]) == ([0.5, 0.5, 0.5], 0)
    manifest = json.loads((tmp_path / "rm" / "manifest.json").read_text())
    assert manifest["data_sha256"] and manifest["summary"]["val_accuracy"] == summary["val_accuracy"]
