"""On-policy distillation on the RL actors (app/rl/distill.py) through a real local Ray."""
from __future__ import annotations

import json

import pytest
import torch


def test_reverse_kl_advantages_are_teacher_minus_student_on_response_tokens():
    from app.rl.distill import reverse_kl_advantages
    student = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]])
    teacher = torch.tensor([[-1.5, -1.0, -3.0], [-0.5, -4.5, -1.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # a token the teacher likes more than the student is pushed up, one it likes less down; none past the end
    assert reverse_kl_advantages(student, teacher, mask).tolist() == [[-0.5, 1.0, 0.0], [0.0, -4.0, 0.0]]


def test_distill_configs_parse_and_refuse_other_vocabularies(tmp_path):
    from pathlib import Path

    from app.config import ConfigError, UserError, load_config
    from app.models import load_policy
    from app.rl.config import OnPolicyDistillConfig
    from app.rl.distill import run
    for path in sorted(Path("jobs/configs").glob("distill_*.yaml")):
        cfg = load_config(OnPolicyDistillConfig, path)
        assert cfg.reference() == cfg.teacher and cfg.reward_functions() == ({} if "tiny" in path.name else
                                                                             {"app.rl.rewards:exact_answer": 1.0})
    with pytest.raises(ConfigError, match="critic_lr"):
        load_config(OnPolicyDistillConfig, "jobs/configs/distill_tiny.yaml", ["critic_lr=1e-5"])
    model, tok = load_policy("tiny")
    tok.add_tokens(["<not-in-the-student>"])
    model.save_pretrained(tmp_path / "other")
    tok.save_pretrained(tmp_path / "other")
    with pytest.raises(UserError, match="different vocabularies"):
        run(load_config(OnPolicyDistillConfig, "jobs/configs/distill_tiny.yaml", [f"teacher={tmp_path / 'other'}"]))


@pytest.fixture(scope="module")
def teacher(tiny_adapters, tmp_path_factory):
    """The tiny model with the `alpha` adapter merged (its greedy answer is "The alpha answer is 42. Goodbye.";
    at the tiny configs' temperature 0.1 its KL to the untrained tiny model is ~7 nats a token)."""
    from peft import PeftModel

    from app.models import load_policy
    model, tok = load_policy("tiny")
    merged = PeftModel.from_pretrained(model, tiny_adapters["alpha"]).merge_and_unload()
    out = tmp_path_factory.mktemp("teacher")
    merged.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.slow
def test_student_moves_towards_the_teacher(ray_local, prompts_file, teacher, tmp_path):
    from app.config import load_config
    from app.rl.config import OnPolicyDistillConfig
    from app.rl.distill import run
    out = tmp_path / "distill"
    summary = run(load_config(OnPolicyDistillConfig, "jobs/configs/distill_tiny.yaml",
                              [f"teacher={teacher}", f"prompts={prompts_file}", f"output_dir={out}",
                               "checkpoint_every=0"]))
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s["policy_version"] for s in steps] == list(range(1, 13))
    assert all(s["sampled_versions"] == [s["policy_version"] - 1] for s in steps)
    assert all(s["sync_logprob_gap"] < 1e-4 for s in steps) and "value_loss" not in steps[0]
    assert summary["kl_last"] == steps[-1]["kl"]
    # pinned (seeded): the starting policy's sampled KL to the teacher, and the later steps' far below it
    assert steps[0]["kl"] == pytest.approx(81.73, rel=1e-3)
    assert max(s["kl"] for s in steps[5:]) < 0.4 * steps[0]["kl"]
    # the exact KL on the teacher's own answers fell by more than a fifth (6.43 -> 4.53 when pinned)
    before, after = exact_reverse_kl("tiny", teacher, prompts_file), exact_reverse_kl(out / "final", teacher, prompts_file)
    assert before == pytest.approx(6.43, abs=0.01) and after < 0.8 * before, (before, after)


def exact_reverse_kl(student, teacher, prompts_file, temperature: float = 0.1) -> float:
    """KL(student || teacher) at the run's temperature, summed over the vocabulary, averaged over the response
    positions of the teacher's greedy answers to the training prompts: no sampling noise."""
    from app.chat import render_prompt
    from app.models import load_policy
    s_model, tok = load_policy(str(student))
    t_model, _ = load_policy(str(teacher))
    total, n = 0.0, 0
    for line in prompts_file.read_text().splitlines()[:8]:
        ids = render_prompt(tok, [{"role": "user", "content": json.loads(line)["prompt"][0]["content"]}])
        seq = t_model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
        with torch.no_grad():
            ps = torch.log_softmax(s_model(seq).logits[0, len(ids) - 1:-1].float() / temperature, -1)
            pt = torch.log_softmax(t_model(seq).logits[0, len(ids) - 1:-1].float() / temperature, -1)
        total, n = total + float((ps.exp() * (ps - pt)).sum()), n + len(ps)
    return total / n
