"""Scoring sampled tokens with HF models: the log-prob / value passes every PPO role shares, the weight
checksum of a sync, and the vLLM engine of GPU rollout actors (on CPU they sample with app.sampler). No ray
import.

A batch is a dict of tensors: sequences [B, P+R] (prompts left-padded to P, responses right-padded to R),
attention_mask, response_mask [B, R] (1 up to and including the first end-of-turn token), the prompt
width P and group_size (rows of one prompt together): app.sampler's layout. Log-probs and values are per
response token, [B, R].
"""
from __future__ import annotations

import hashlib

import torch
from transformers import DynamicCache

from app.sampler import batch_of, positions


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


class VLLMWeightLoader:
    """vLLM worker extension (`worker_extension_cls`): loads published weights into the running engine."""

    def load_policy_state(self, state: dict) -> None:
        self.model_runner.model.load_weights(weights=list(state.items()))


def vllm_engine(model_path: str, seed: int, gpu_memory_utilization: float = 0.85):
    """A vLLM engine whose returned log-probs are those of the processed (temperature/top-p) distribution,
    like `sample`'s, and whose weights `load_policy_state` can replace."""
    from vllm import LLM
    return LLM(model_path, seed=seed, gpu_memory_utilization=gpu_memory_utilization, enforce_eager=True,
               logprobs_mode="processed_logprobs", worker_extension_cls="app.rl.rollout.VLLMWeightLoader")


def sample_vllm(llm, prompts: list[list[int]], pad_id: int, eos_ids: list[int], max_new_tokens: int, n: int = 1,
                temperature: float = 1.0, top_p: float = 1.0, seed: int = 0) -> dict:
    """app.sampler.sample on a vLLM engine: the same batch layout (n rows per prompt, together), the
    sampler's log-probs from vLLM."""
    from vllm import SamplingParams, TokensPrompt
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed,
                            logprobs=0, stop_token_ids=list(eos_ids))
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    completions = [c for o in outs for c in o.outputs]
    responses = [list(c.token_ids) for c in completions]
    logprobs = [[lp[t].logprob for lp, t in zip(c.logprobs, tokens)] for c, tokens in zip(completions, responses)]
    return batch_of(prompts, n, responses, logprobs, pad_id)


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
