"""Sampling responses and scoring their tokens with HF models: the CPU engine of the rollout actors, and the
log-prob / value passes every PPO role shares. No ray import.

A batch is a dict of tensors: sequences [B, P+R] (prompts left-padded to P, responses right-padded to R),
attention_mask, response_mask [B, R] (1 up to and including the first end-of-turn token), and the prompt
width P. Log-probs and values are per response token, [B, R].
"""
from __future__ import annotations

import hashlib

import torch


def weights_checksum(state: dict[str, torch.Tensor]) -> str:
    """sha256 over names and raw bytes in name order: what the learner sent is what the actor loaded."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.cumsum(1) - 1).clamp(min=0)


@torch.inference_mode()
def sample(model, prompts: list[list[int]], pad_id: int, eos_ids: list[int], max_new_tokens: int,
           temperature: float = 1.0, top_p: float = 1.0, seed: int = 0) -> dict:
    """Generate one response per prompt; returns the batch plus the sampler's own log-probs."""
    width = max(map(len, prompts))
    device = next(model.parameters()).device
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    torch.manual_seed(seed)
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=None) if temperature > 0 else \
        dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                         eos_token_id=eos_ids, output_scores=True, return_dict_in_generate=True, **sampling)
    response = out.sequences[:, width:]
    ended = torch.isin(response, torch.tensor(eos_ids, device=device))
    after_end = (ended.cumsum(1) - ended.long()) > 0  # strictly after the first end token
    response_mask = (~after_end).long()
    scores = torch.stack(out.scores, 1).float()  # the processed distribution tokens were drawn from
    logprobs = torch.log_softmax(scores, -1).gather(-1, response[..., None]).squeeze(-1) * response_mask
    return {"sequences": out.sequences, "attention_mask": torch.cat([mask, response_mask], 1),
            "response_mask": response_mask, "prompt_width": width, "rollout_logprobs": logprobs}


def response_logits(model, batch: dict) -> torch.Tensor:
    """Logits that predict each response token: [B, R, V]."""
    width = batch["prompt_width"]  # the vocabulary projection only where a response token is predicted
    out = model(input_ids=batch["sequences"], attention_mask=batch["attention_mask"],
                position_ids=_positions(batch["attention_mask"]),
                logits_to_keep=batch["sequences"].shape[1] - width + 1)
    return out.logits[:, :-1].float()


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
                  position_ids=_positions(batch["attention_mask"])).last_hidden_state
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


def sample_vllm(llm, prompts: list[list[int]], pad_id: int, eos_ids: list[int], max_new_tokens: int,
                temperature: float = 1.0, top_p: float = 1.0, seed: int = 0) -> dict:
    """`sample` on a vLLM engine: the same batch layout, the sampler's log-probs from vLLM."""
    from vllm import SamplingParams, TokensPrompt
    params = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed, logprobs=0,
                            stop_token_ids=list(eos_ids))
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    width = max(map(len, prompts))
    completions = [o.outputs[0] for o in outs]
    length = max(1, max(len(c.token_ids) for c in completions))
    sequences, prompt_mask, response_mask, logprobs = [], [], [], []
    for p, c in zip(prompts, completions):
        tokens, pad = list(c.token_ids), length - len(c.token_ids)
        sequences.append([pad_id] * (width - len(p)) + p + tokens + [pad_id] * pad)
        prompt_mask.append([0] * (width - len(p)) + [1] * len(p))
        response_mask.append([1] * len(tokens) + [0] * pad)
        logprobs.append([lp[t].logprob for lp, t in zip(c.logprobs, tokens)] + [0.0] * pad)
    response = torch.tensor(response_mask)
    return {"sequences": torch.tensor(sequences), "attention_mask": torch.cat([torch.tensor(prompt_mask), response], 1),
            "response_mask": response, "prompt_width": width, "rollout_logprobs": torch.tensor(logprobs)}


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
