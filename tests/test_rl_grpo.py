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


def test_unsafe_samples_are_dropped_from_the_update_only_when_rejecting():
    import torch

    from app.config import load_config
    from app.rl.controller import drop_unsafe
    from app.rl.grpo import GRPOConfig
    batches = [{"sequences": torch.ones(2, 5), "response_mask": torch.tensor([[0, 1, 1, 1, 0], [0, 1, 1, 0, 0]])},
               {"sequences": torch.ones(1, 5), "response_mask": torch.tensor([[0, 1, 1, 1, 1]])}]
    reject = load_config(GRPOConfig, "jobs/configs/grpo_tiny.yaml", ["safety.unsafe=reject"])
    kept = drop_unsafe(reject, batches, [False, True, False])
    assert kept[0]["response_mask"].tolist() == [[0, 1, 1, 1, 0], [0, 0, 0, 0, 0]] and kept[1] is batches[1]
    assert batches[0]["response_mask"][1].sum() == 2  # the sampled batch itself is left as it was
    assert drop_unsafe(load_config(GRPOConfig, "jobs/configs/grpo_tiny.yaml"), batches, [True] * 3) is batches


def test_unsafe_answers_are_sampled_again_in_place(tiny):
    """The rollout actor's resampling (app/rl/actors.py resample_unsafe) on the real sampler: unsafe rows are
    drawn again up to `rounds` times, safe rows and the group layout stay, and each new row carries the
    log-probs its own tokens were sampled with."""
    import torch

    from app.chat import render_prompt
    from app.rl.actors import resample_unsafe
    from app.rl.rollout import response_logprobs
    from app.safety import SafetyCheck
    from app.sampler import rows_of, sample
    model, tok = tiny
    prompts = [render_prompt(tok, [{"role": "user", "content": q}]) for q in ("Where is my parcel?", "发票怎么开？")]
    eos = [tok.eos_token_id]

    def draw(rows, n, seed):
        return sample(model, rows, 12, eos, n, 1.0, 1.0, seed, tok.pad_token_id)
    check = SafetyCheck({"scorer": "tests.rl_plugins:odd_length_is_toxic"})
    batch = draw(prompts, 4, 0)
    before = check.unsafe(tok.batch_decode(rows_of(batch)[0], skip_special_tokens=True))
    out = resample_unsafe(batch, prompts, draw, check, tok, 3, 0)
    after = check.unsafe(tok.batch_decode(rows_of(out)[0], skip_special_tokens=True))
    assert sum(before) >= 2 and out["resampled"] >= sum(before) and out["unsafe_left"] == sum(after) < sum(before)
    assert out["group_size"] == 4 and out["prompt_width"] == batch["prompt_width"] and len(out["sequences"]) == 8
    old_rows, new_rows = rows_of(batch)[0], rows_of(out)[0]
    assert all(new_rows[i] == old_rows[i] for i in range(8) if not before[i])
    with torch.inference_mode():
        logprobs, _ = response_logprobs(model, out)
    assert torch.allclose(logprobs, out["rollout_logprobs"], atol=1e-4)
    untouched = resample_unsafe(batch, prompts, draw, check, tok, 0, 0)
    assert untouched["sequences"] is batch["sequences"] and untouched["unsafe_left"] == sum(before)
    assert check.unsafe(["\n" * 2]) == [False] and check.unsafe(["abc"]) == [True]


HELD_OUT = ["Do you ship to Canada?", "包裹丢了怎么办？", "Can I pay with PayPal?", "可以开发票吗？", "What sizes exist?",
            "周末发货吗？"]


def test_heldout_prompts_must_be_unseen(prompts_file, tmp_path):
    from app.config import UserError
    from app.models import load_tokenizer
    from app.rl.controller import _prompts
    from app.rl.heldout import check_disjoint
    tok = load_tokenizer("tiny")
    train, _ = _prompts(str(prompts_file), tok)
    (tmp_path / "h.jsonl").write_text(json.dumps({"id": "h0", "prompt": "Where is my parcel?"}) + "\n")
    with pytest.raises(UserError, match="shares 1 prompts with the training prompts"):
        check_disjoint(_prompts(str(tmp_path / "h.jsonl"), tok)[0], train)


def test_unusable_prompts_are_counted_by_reason(tmp_path):
    from app.config import UserError
    from app.models import load_tokenizer
    from app.rl.controller import _prompts
    lines = [json.dumps({"id": "ok", "prompt": "Where is my parcel?"}), '{"id": "cut',
             json.dumps({"id": "none", "answer": "7"}), json.dumps({"id": "odd", "prompt": [{"role": "robot"}]}),
             json.dumps({"id": "long", "prompt": "word " * 600}), json.dumps({"question": "1+1?", "answer": "2"}),
             json.dumps({"id": "ans", "prompt": [{"role": "user", "content": "hi"},
                                                  {"role": "assistant", "content": "hello"}]})]
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
    rows, skipped = _prompts(str(tmp_path / "p.jsonl"), load_tokenizer("tiny"))
    assert [r.id for r in rows] == ["ok", "5"] and rows[1].reference == "2"
    assert skipped == {"ends_with_assistant": 1, "malformed": 1, "no_prompt": 1, "not_a_conversation": 1,
                       "too_long": 1}
    (tmp_path / "bad.jsonl").write_text("\n".join(lines[1:3]) + "\n")
    with pytest.raises(UserError, match=r"no usable prompts in .*bad.jsonl: 2 skipped \(malformed 1, no_prompt 1\)"):
        _prompts(str(tmp_path / "bad.jsonl"), load_tokenizer("tiny"))


@pytest.mark.slow
def test_grpo_raises_toy_reward_with_versioned_sync(ray_local, prompts_file, tmp_path):
    from app.config import load_config
    from app.rl.grpo import GRPOConfig, run
    out = tmp_path / "grpo"
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("\n".join(json.dumps({"id": f"h{i}", "prompt": q}, ensure_ascii=False)
                                 for i, q in enumerate(HELD_OUT)) + "\n")
    summary = run(load_config(GRPOConfig, "jobs/configs/grpo_tiny.yaml",
                              [f"prompts={prompts_file}", f"output_dir={out}", f"heldout.prompts={heldout}",
                               "heldout.every=4", "checkpoint_every=0", "safety.max_resamples=2", "safety.penalty=0",
                               "safety.scorer=tests.rl_plugins:odd_length_is_toxic"]))
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s["policy_version"] for s in steps] == list(range(1, 9)) and len({s["checksum"] for s in steps}) == 8
    assert all(s["sampled_versions"] == [s["policy_version"] - 1] for s in steps)
    assert all(s["sync_logprob_gap"] < 1e-4 for s in steps) and "value_loss" not in steps[0]
    assert all(len(s["prompt_ids"]) == 4 for s in steps)  # 1 actor x 4 prompts, each sampled 4 times
    # seed 000's rejection sampling: the rollout actors drew unsafe answers again (up to 2 times) before returning
    assert sum(s["resampled"] for s in steps) > sum(s["unsafe"] for s in steps), steps
    first = sum(s["reward_mean"] for s in steps[:2]) / 2
    last = sum(s["reward_mean"] for s in steps[-2:]) / 2
    assert last > first + 0.05, (first, last)
    assert (out / "grpo_curve.png").exists() and summary["policy_version"] == 8
    # the first batch is sampled and scored by the reference's own weights; then the policy moves away from it
    assert steps[0]["kl"] < 1e-6 < steps[-1]["kl"]
    assert summary["kl_per_token_last"] == steps[-1]["kl_loss"] and 0 < steps[-1]["kl_loss"] < steps[-1]["kl"]
    measured = [json.loads(line) for line in (out / "heldout.jsonl").read_text().splitlines()]
    assert [(m["step"], m["version"], m["n"]) for m in measured] == [(0, 0, 6), (4, 4, 6), (8, 8, 6)]
    assert [s["step"] for s in steps if "heldout_reward" in s] == [4, 8]
    assert [i["id"] for i in measured[0]["items"]] == [f"h{i}" for i in range(6)]
    assert summary["heldout_first"] == measured[0]["mean"] and summary["heldout_last"] == measured[-1]["mean"]
    assert summary["heldout_ci_low"] <= summary["heldout_diff"] <= summary["heldout_ci_high"]
    # pinned: greedy answers of the tiny policy are all line breaks from the start (sampled ones are not: 0.016)
    assert [m["mean"] for m in measured] == [1.0, 1.0, 1.0] and summary["heldout_verdict"] == "no significant change"
