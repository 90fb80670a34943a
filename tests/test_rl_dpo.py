"""DPO on Ray Train workers (DeepSpeed ZeRO-2) with the tiny model on a separable toy set."""
from __future__ import annotations

import json

import pytest


def test_only_the_final_answer_is_scored():
    from app.models import load_tokenizer
    from app.rl.preferences import last_run, tokenize
    assert last_run([0, 1, 1, 0, 0, 1, 1, 1, 0]) == [0, 0, 0, 0, 0, 1, 1, 1, 0]
    tok = load_tokenizer("tiny")
    pair = {"id": "a", "prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                                  {"role": "user", "content": "where is it?"}], "chosen": "Shipped.", "rejected": "No."}
    [row], dropped = tokenize(tok, [pair], ["preference"], 128)
    answer = tok.decode([t for t, m in zip(row["chosen"], row["chosen_mask"]) if m])
    assert "Shipped." in answer and "hello" not in answer and dropped == 0


@pytest.mark.slow
def test_dpo_loss_falls_and_margin_grows(ray_local, toy_pairs, tmp_path):
    from app.config import load_config
    from app.rl.dpo import DPOConfig, run
    out = tmp_path / "dpo"
    summary = run(load_config(DPOConfig, "jobs/configs/dpo_tiny.yaml",
                              [f"data.path={toy_pairs}", f"output_dir={out}"]))
    before, after = summary["val_before"], summary["val_after"]
    assert before["val_loss"] == pytest.approx(0.6931, abs=1e-3)   # policy == reference at step 0: log 2
    assert after["val_loss"] < before["val_loss"] - 0.05 and after["val_margin"] > before["val_margin"] + 0.05
    assert after["val_accuracy"] >= 0.8
    train = [m for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "train_loss" in m]
    assert train[-1]["train_loss"] < train[0]["train_loss"]
    from app.models import load_policy
    assert load_policy(summary["final"])[0].config.num_hidden_layers == 2
