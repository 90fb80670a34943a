"""DPO on Ray Train workers (DeepSpeed ZeRO-2) with the tiny model on a separable toy set."""
from __future__ import annotations

import json

import pytest
import torch


def test_only_the_final_answer_is_scored():
    from app.models import load_tokenizer
    from app.train.preferences import last_run, tokenize
    assert last_run([0, 1, 1, 0, 0, 1, 1, 1, 0]) == [0, 0, 0, 0, 0, 1, 1, 1, 0]
    tok = load_tokenizer("tiny")
    pair = {"id": "a", "prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                                  {"role": "user", "content": "where is it?"}], "chosen": "Shipped.", "rejected": "No."}
    [row], dropped = tokenize(tok, [pair], ["preference"], 128)
    answer = tok.decode([t for t, m in zip(row["chosen"], row["chosen_mask"]) if m])
    assert "Shipped." in answer and "hello" not in answer and not dropped
    rows, dropped = tokenize(tok, [pair, {**pair, "id": "b", "dimension": "tone"}], ["preference"], 16)
    assert rows == [] and dropped == {"too_long": 1, "unknown_head": 1}


@pytest.mark.slow
def test_missing_pairs_fail_before_any_model_loads(tmp_path):
    from app.config import UserError, load_config
    from app.train import dpo, reward
    missing = tmp_path / "nowhere"
    for job, config in ((dpo, "jobs/configs/dpo_demo.yaml"), (reward, "jobs/configs/reward_demo.yaml")):
        cfg = load_config(job.DPOConfig if job is dpo else job.RewardConfig, config,
                          [f"data.path={missing}", "model=no-such-model", f"output_dir={tmp_path}/out"])
        with pytest.raises(UserError, match=f"preference data {missing} not found"):
            job.run(cfg)
    assert not (tmp_path / "out").exists()


def test_dpo_loss_falls_and_margin_grows(ray_local, toy_pairs, tmp_path):
    from app.config import load_config
    from app.train.dpo import DPOConfig, run
    out = tmp_path / "dpo"
    # one worker of 8 pairs a step, in this process (the 2-worker ZeRO path: tests/test_sft*.py)
    cfg = load_config(DPOConfig, "jobs/configs/dpo_tiny.yaml", [f"data.path={toy_pairs}", f"output_dir={out}",
                                                              "scaling.num_workers=1", "train.micro_batch_size=8"])
    summary = run(cfg, report=lambda metrics: None)
    before, after = summary["val_before"], summary["val_after"]
    assert before["val_loss"] == pytest.approx(0.6931, abs=1e-3)   # policy == reference at step 0: log 2
    assert after["val_margin"] > before["val_margin"] + 0.05 and after["val_accuracy"] >= 0.8
    rows = list(map(json.loads, (out / "metrics.jsonl").read_text().splitlines()))
    # the seeded tiny run, pinned (1 worker, ZeRO stage 0, full fine-tuning, lr 1e-3, 12 steps)
    torch.testing.assert_close([m["train_loss"] for m in rows if "train_loss" in m],
                               [0.693147, 0.520791, 0.472019, 0.437346, 0.339587, 0.272135, 0.223124, 0.179896,
                                0.153782, 0.134823, 0.110441, 0.091806], rtol=1e-3, atol=1e-4)
    torch.testing.assert_close([(m["step"], m["val_loss"]) for m in rows if "val_loss" in m],
                               [(0, 0.693147), (6, 0.217842), (12, 0.080063)], rtol=1e-3, atol=1e-4)
    from app.models import load_policy
    assert load_policy(summary["final"])[0].config.num_hidden_layers == 2


def test_pairs_too_long_for_max_len_are_counted_in_the_error(toy_pairs):
    from app.config import UserError
    from app.models import load_tokenizer
    from app.train import preferences
    data = preferences.PairData(path=str(toy_pairs), val_share=0.25, max_len=16)
    with pytest.raises(UserError, match=r"0 usable training pairs .* of 69 training pairs read, 69 longer than "
                                        r"data.max_len=16 tokens"):
        preferences.load(data, load_tokenizer("tiny"), None, 0, 8)
    train, val, counts = preferences.load(data.model_copy(update={"max_len": 512}), load_tokenizer("tiny"), None, 0, 8)
    assert counts == {"pairs": 96, "skipped": {}, "train": len(train), "val": len(val), "dropped": {},
                      "capped": 0}
    assert len(train) + len(val) == 96
