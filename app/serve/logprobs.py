"""Log-probs as OpenAI's API and vLLM's server return them, for evaluation clients (lm-evaluation-harness's
`local-completions` loglikelihood, `echo` + `logprobs`) and for users.

An engine reports one entry per token, {"id", "logprob", "top": [[id, logprob], ...]}, of the model's own
distribution (temperature 1, before top_p: vLLM's default "raw" log-probs); `echo`'s first prompt entry
has logprob and top None (nothing predicts the first token). The two wire formats are built here:

    completions:  {"tokens", "token_logprobs", "top_logprobs", "text_offset"}     (logprobs: k, echo)
    chat:         {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}   (logprobs, top_logprobs)
"""
from __future__ import annotations

from typing import Callable

import torch

def entries(logits: torch.Tensor, tokens: list[int], ks: list[int | None]) -> list[dict | None]:
    """Per row of `logits` [B, V]: the chosen token's log-prob and the row's top-k, or None where k is None."""
    rows = [i for i, k in enumerate(ks) if k is not None]
    out: list[dict | None] = [None] * len(ks)
    if not rows:
        return out
    logp = torch.log_softmax(logits[rows].float(), dim=-1)
    top = logp.topk(max(1, max(ks[i] for i in rows)), dim=-1)
    for j, i in enumerate(rows):
        out[i] = {"id": tokens[i], "logprob": float(logp[j, tokens[i]]),
                  "top": [[int(t), float(v)] for t, v in zip(top.indices[j, :ks[i]], top.values[j, :ks[i]])]}
    return out


def prompt_entries(logits: torch.Tensor, prompt: list[int], k: int) -> list[dict]:
    """`echo`: each prompt token's log-prob given the tokens before it (logits [T, V] of the prompt's own
    forward); the first token's logprob and top are None."""
    return [first(prompt)] + entries(logits[:-1], prompt[1:], [k] * (len(prompt) - 1))


def first(prompt: list[int]) -> dict:
    return {"id": prompt[0], "logprob": None, "top": None}


def completion_format(items: list[dict], token_text: Callable[[int], str]) -> dict:
    """The legacy completions object; text_offset indexes the returned text (the prompt's, with echo)."""
    tokens, offsets, position = [], [], 0
    for e in items:
        tokens.append(token_text(e["id"]))
        offsets.append(position)
        position += len(tokens[-1])
    return {"tokens": tokens, "token_logprobs": [e["logprob"] for e in items],
            "top_logprobs": [None if e["top"] is None else {token_text(t): v for t, v in e["top"]} for e in items],
            "text_offset": offsets}


def chat_format(items: list[dict], token_text: Callable[[int], str]) -> dict:
    def one(token: int, logprob: float) -> dict:
        text = token_text(token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}
    return {"content": [{**one(e["id"], e["logprob"]), "top_logprobs": [one(t, v) for t, v in e["top"]]}
                        for e in items]}
