"""Scoring sampled tokens with HF models: the log-prob / value passes every PPO role shares, the weight
checksum of a sync and its log-prob probe. No ray import (vLLM rollouts: app/vllm_engine.py).

A batch is a dict of tensors: sequences [B, P+R] (prompts left-padded to P, responses right-padded to R),
attention_mask, response_mask [B, R] (1 up to and including the first end-of-turn token), the prompt
width P and group_size (rows of one prompt together): app.sampler's layout. Log-probs and values are per
response token, [B, R].
"""
from __future__ import annotations

import hashlib

import torch
from transformers import DynamicCache

from app.sampler import positions


def weights_checksum(state: dict[str, torch.Tensor]) -> str:
    """sha256 over names and raw bytes in name order: what the learner sent is what the actor loaded."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def merge_lora(base: dict[str, torch.Tensor], adapter: dict[str, torch.Tensor], scaling: float) -> dict:
    """The LoRA targets' weights with an adapter (peft's state-dict names) merged in, W + scaling * B @ A as
    peft's merge computes it, keyed like the plain model's state dict: what a rollout actor samples with."""
    merged = {}
    for key, a in adapter.items():
        if key.endswith(".lora_A.weight"):
            module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            b = adapter[key.replace(".lora_A.", ".lora_B.")]
            merged[f"{module}.weight"] = base[f"{module}.weight"] + scaling * (b.to(a.dtype) @ a)
    return merged


def response_logits(model, batch: dict) -> torch.Tensor:
    """Logits that predict each response token: [B, R, V]. Rows that come in groups sharing a prompt
    (`group_size` n > 1, as app.sampler returns them) run each prompt once and fork its KV cache for the
    group's responses: the prompt's share of the forward (and of the learner's backward) is paid once per
    group instead of n times. Otherwise one forward of the whole sequences."""
    seq, mask, width, n = batch["sequences"], batch["attention_mask"], batch["prompt_width"], batch.get("group_size", 1)
    if n == 1:  # the vocabulary projection only where a response token is predicted
        out = model(input_ids=seq, attention_mask=mask, position_ids=positions(mask),
                    logits_to_keep=seq.shape[1] - width + 1)
        return out.logits[:, :-1].float()
    cache = DynamicCache()
    prompt_mask = mask[::n, :width]
    first = model(input_ids=seq[::n, :width], attention_mask=prompt_mask, position_ids=positions(prompt_mask),
                  cache=cache, use_cache=True, logits_to_keep=1).logits.repeat_interleave(n, 0)
    if seq.shape[1] == width + 1:
        return first.float()
    cache.batch_repeat_interleave(n)
    rest = model(input_ids=seq[:, width:-1], attention_mask=mask[:, :-1], position_ids=positions(mask)[:, width:-1],
                 cache=cache, use_cache=True).logits
    return torch.cat([first, rest], 1).float()


def response_logprobs(model, batch: dict, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs of the response tokens [B, R], the logits they came from)."""
    logits = response_logits(model, batch) / max(temperature, 1e-6)
    tokens = batch["sequences"][:, batch["prompt_width"]:]
    logprobs = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    return logprobs * batch["response_mask"], logits


def token_values(value_model, batch: dict) -> torch.Tensor:
    """Per-token values [B, R] from a sequence-classification model's head applied at every position
    (the critic starts as the reward model)."""
    base = getattr(value_model, value_model.base_model_prefix)
    hidden = base(input_ids=batch["sequences"], attention_mask=batch["attention_mask"],
                  position_ids=positions(batch["attention_mask"])).last_hidden_state
    width = batch["prompt_width"]
    values = value_model.score(hidden[:, width - 1:-1]).float().sum(-1)
    return values * batch["response_mask"]


def probe_logprobs(model, ids: list[int]) -> list[float]:
    """log p(ids[i] | ids[:i]) for i >= 1 at temperature 1: what a rollout engine reports for the same ids after
    a weight sync (app.rl.sync checks the gap)."""
    device, training = next(model.parameters()).device, model.training
    model.eval()  # no dropout in the probe
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids], device=device)).logits[0, :-1].float()
    model.train(training)
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:], device=device)[:, None]).squeeze(-1).tolist()


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
