"""app.sampler, the one sampler: greedy equals HF generate, a forked group equals its rows sampled
independently, the returned log-probs are those of the distribution each token was drawn from."""
import pytest
import torch

from app.sampler import processed_logits, sample

PROMPTS = [[5, 9, 14, 3], [7, 8], [11, 12, 13, 20, 21, 22, 23]]  # different lengths: left padding matters


def _responses(out: dict) -> list[list[int]]:
    tokens = out["sequences"][:, out["prompt_width"]:]
    return [row[:int(n)].tolist() for row, n in zip(tokens, out["response_mask"].sum(1))]


def test_greedy_equals_generate(tiny):
    model, tok = tiny
    out = sample(model, PROMPTS, 12, {tok.eos_token_id}, pad_id=tok.pad_token_id)
    for prompt, got in zip(PROMPTS, _responses(out)):
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        assert got == ref[0, len(prompt):].tolist()


def test_finished_rows_leave_the_batch_without_changing_the_others(tiny):
    """End on a token the greedy rows do produce: those rows stop there (the end token kept and masked in),
    the rest go on exactly as without that end token."""
    model, tok = tiny
    free = _responses(sample(model, PROMPTS, 12, {-1}, pad_id=tok.pad_token_id))
    end = free[0][3]
    stopped = sample(model, PROMPTS, 12, {end}, pad_id=tok.pad_token_id)
    for row, got in zip(free, _responses(stopped)):
        cut = row.index(end) + 1 if end in row else len(row)
        assert got == row[:cut]
    assert stopped["response_mask"].sum() < 3 * 12
    assert stopped["sequences"].shape[1] == stopped["prompt_width"] + max(map(len, _responses(stopped)))


def test_forked_group_equals_independent_rows_with_the_same_seeds(tiny):
    model, tok = tiny
    kw = dict(temperature=1.0, top_p=0.9, seed=5, pad_id=tok.pad_token_id)
    forked = sample(model, PROMPTS, 10, {tok.eos_token_id}, n=4, **kw)
    alone = sample(model, [p for p in PROMPTS for _ in range(4)], 10, {tok.eos_token_id}, **kw)
    assert _responses(forked) == _responses(alone)
    assert torch.allclose(forked["rollout_logprobs"], alone["rollout_logprobs"], atol=1e-5)
    assert len({tuple(r) for r in _responses(forked)}) > 3  # the rows of a group differ
    other = sample(model, PROMPTS, 10, {tok.eos_token_id}, n=4, **{**kw, "seed": 6})
    assert _responses(other) != _responses(forked)


def test_logprobs_are_those_of_the_processed_distribution(tiny):
    """Re-score the sampled tokens with one forward: temperature- and top-p-processed log-probs match."""
    model, tok = tiny
    t, p = 0.7, 0.8
    out = sample(model, PROMPTS, 8, {tok.eos_token_id}, n=2, temperature=t, top_p=p, seed=1, pad_id=tok.pad_token_id)
    mask = out["attention_mask"]
    with torch.no_grad():
        logits = model(input_ids=out["sequences"], attention_mask=mask,
                       position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
    width = out["prompt_width"]
    step_logits = logits[:, width - 1:-1]
    lp = torch.stack([processed_logits(row, t, p).log_softmax(-1) for row in step_logits])
    tokens = out["sequences"][:, width:]
    expected = lp.gather(-1, tokens[..., None]).squeeze(-1) * out["response_mask"]
    assert torch.allclose(out["rollout_logprobs"], expected, atol=1e-4)
    assert (out["rollout_logprobs"][out["response_mask"].bool()] < 0).any()


@pytest.mark.parametrize("top_p", [1.0, 0.9, 0.3])
def test_processed_logits_match_transformers_warpers(top_p):
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    ref = TemperatureLogitsWarper(0.7)(None, logits.clone())
    if top_p < 1.0:
        ref = TopPLogitsWarper(top_p)(None, ref)
    ours = processed_logits(logits, 0.7, top_p)
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    assert torch.allclose(ours[~torch.isinf(ours)], ref[~torch.isinf(ref)])


def test_grouped_scoring_equals_the_full_forward_with_gradients(tiny):
    """app.rl.rollout runs a group's prompt once and forks its cache for the responses: the same log-probs
    and the same LoRA gradients as one forward of every full sequence."""
    import copy

    from peft import get_peft_model

    from app.rl.rollout import response_logprobs
    from app.train.model import peft_config
    model, tok = tiny
    policy = get_peft_model(copy.deepcopy(model), peft_config("lora", 4, 8, 0.0, ["q_proj", "v_proj"], 0))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    batch = sample(policy, PROMPTS, 6, {tok.eos_token_id}, n=3, temperature=1.0, seed=2, pad_id=tok.pad_token_id)
    assert batch["group_size"] == 3
    results = []
    for n in (3, 1):
        logprobs, _ = response_logprobs(policy, {**batch, "group_size": n})
        logprobs.sum().backward()
        results.append((logprobs.detach(), [p.grad.clone() for p in policy.parameters() if p.grad is not None]))
        policy.zero_grad()
    (grouped, g_grads), (full, f_grads) = results
    assert torch.allclose(grouped, full, atol=1e-5)
    assert len(g_grads) == len(f_grads) > 0
    assert all(torch.allclose(a, b, atol=1e-4, rtol=1e-3) for a, b in zip(g_grads, f_grads))
