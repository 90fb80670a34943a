"""Batch inference for evaluation on Ray: a pool of model actors answers every prompt (greedy: on a vLLM engine
where one runs the model, else app.sampler) and scores the reference answer's assistant tokens (perplexity,
always in transformers), batch by batch.

    python -m jobs.eval jobs/configs/eval_demo.yaml model=runs/sft-demo/final
"""
from __future__ import annotations

import resource
import time

import ray
import torch
from ray.util import ActorPool

from app.chat import render
from app.generation import generate_chat
from app.models import load_policy
from app.precision import fast_bf16
from app.vllm_engine import start_llm

NLL_ROWS = 8  # sequences per reference-NLL forward (sorted by length, so little is padding)


class AnswerActor:
    """Loads the model once per actor (and a vLLM engine of it with `engine="vllm"`); answer() answers a batch
    and scores its references."""

    def __init__(self, model_path: str, max_len: int, dtype: str = "float32", engine: str = "hf",
                 vllm: dict | None = None):
        torch.set_num_threads(max(1, torch.get_num_threads()))
        self.model, self.tokenizer = load_policy(model_path, dtype)
        self.max_len = max_len
        self.llm = None
        if engine == "vllm":
            limit = getattr(self.model.config, "max_position_embeddings", 2048)  # vllm.max_model_len None: this
            vllm = {**(vllm or {}), "max_model_len": min((vllm or {}).get("max_model_len") or limit, limit)}
            self.llm = start_llm(model_path, 0, knob="engine", **vllm,
                                 dtype="bfloat16" if dtype == "auto" and fast_bf16() else "float32")

    @torch.inference_mode()
    def reference_nll(self, prompts: list[list[dict]], references: list[str]) -> list[tuple[float, int]]:
        """(summed NLL, tokens) of each reference answer after its prompt; an empty reference gives (0.0, 0).
        Forwards of NLL_ROWS right-padded sequences of like length, the output head only where a reference
        token is predicted."""
        rows = [render(self.tokenizer, p + [{"role": "assistant", "content": r}], self.max_len) if r else ([], [])
                for p, r in zip(prompts, references)]
        out = [(0.0, 0)] * len(rows)
        order = sorted((k for k, (ids, _) in enumerate(rows) if ids), key=lambda k: len(rows[k][0]))
        head, pad = self.model.get_output_embeddings(), self.tokenizer.pad_token_id or 0
        for start in range(0, len(order), NLL_ROWS):
            chunk = order[start:start + NLL_ROWS]
            width = max(len(rows[k][0]) for k in chunk)
            ids = torch.tensor([rows[k][0] + [pad] * (width - len(rows[k][0])) for k in chunk])
            attention = torch.tensor([[1] * len(rows[k][0]) + [0] * (width - len(rows[k][0])) for k in chunk])
            hidden = self.model.get_decoder()(input_ids=ids, attention_mask=attention).last_hidden_state
            for row, k in enumerate(chunk):
                i, mask = rows[k]
                at = [t for t in range(len(i) - 1) if mask[t + 1]]
                if at:
                    logits = head(hidden[row, at]).double()
                    targets = torch.tensor([i[t + 1] for t in at])
                    out[k] = (float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum")), len(at))
        return out

    def answer(self, rows: list[dict]) -> list[dict]:
        """rows of one max_new_tokens: {id, prompt, reference, max_new_tokens} -> {id, answer, nll, n_tokens}."""
        prompts = [r["prompt"] for r in rows]
        answers = generate_chat(self.model, self.tokenizer, prompts, rows[0]["max_new_tokens"], llm=self.llm)
        scores = self.reference_nll(prompts, [r["reference"] for r in rows])
        return [{"id": r["id"], "answer": a, "nll": nll, "n_tokens": n}
                for r, a, (nll, n) in zip(rows, answers, scores)]


def batches_of(rows: list[dict], size: int) -> list[list[dict]]:
    """Batches of one max_new_tokens each (every record generates to its own limit) and of like prompt
    length (little is padding), the costliest first so the actors finish together. The same records give
    the same batches, so the same answers, however the pool schedules them."""
    rows = sorted(rows, key=lambda r: (r["max_new_tokens"], sum(len(m["content"]) for m in r["prompt"]), r["id"]))
    out = []
    for limit in sorted({r["max_new_tokens"] for r in rows}):
        same = [r for r in rows if r["max_new_tokens"] == limit]
        out += [same[k:k + size] for k in range(0, len(same), size)]
    return sorted(out, key=lambda b: -sum(r["max_new_tokens"] + (r["max_new_tokens"] if r["reference"] else 0)
                                          for r in b))


def answer_all(records: list[dict], model_path: str, batch_size: int, max_new_tokens: int, max_len: int,
               concurrency: int, dtype: str = "float32", engine: str = "hf", vllm: dict | None = None) -> list[dict]:
    """records: {id, prompt (messages), reference, max_new_tokens?} -> the same with answer, nll, n_tokens;
    sorted by id. On CPU a decode step costs nearly the same for 8 rows as for 32 (measured: 162 held-out
    prompts at batch 8 / 16 / 32 took 0.64 / 0.44 / 0.35 s each), so batches are large and of like length."""
    rows = [{"id": r["id"], "prompt": r["prompt"], "reference": r.get("reference") or "",
             "max_new_tokens": r.get("max_new_tokens", max_new_tokens)} for r in records]
    work = batches_of(rows, batch_size)
    if concurrency == 0:  # in this process: an actor's start (a process, imports, the model) is most of a small eval
        local = AnswerActor(model_path, max_len, dtype, engine, vllm)
        return _merged(records, [o for batch in work for o in local.answer(batch)])
    actor = ray.remote(num_cpus=1)(AnswerActor)
    actors = [actor.remote(model_path, max_len, dtype, engine, vllm) for _ in range(max(1, min(concurrency, len(work))))]
    try:
        out = [o for done in ActorPool(actors).map_unordered(lambda a, b: a.answer.remote(b), work) for o in done]
    finally:
        for a in actors:
            ray.kill(a)
    return _merged(records, out)


def _merged(records: list[dict], answered: list[dict]) -> list[dict]:
    by_id = {r["id"]: r for r in records}
    return sorted(({**by_id[o["id"]], **o} for o in answered), key=lambda r: r["id"])


@torch.inference_mode()
def efficiency(model_path: str, prompts: list[list[dict]], batch_size: int = 8, new_tokens: int = 32,
               dtype: str = "float32") -> dict:
    """Time to first token (ms) and decode tokens/s at batch 1 and at `batch_size`, in this process."""
    model, tokenizer = load_policy(model_path, dtype)

    def rate(convs, n):  # (seconds, generated tokens)
        start = time.perf_counter()
        answers = generate_chat(model, tokenizer, convs, n)
        return time.perf_counter() - start, sum(max(1, len(tokenizer(a)["input_ids"])) for a in answers)
    rate(prompts[:1], 1)  # warm-up
    ttft = min(rate(prompts[:1], 1)[0] for _ in range(3))
    one, batch = rate(prompts[:1], new_tokens), prompts[:batch_size]
    many = rate(batch, new_tokens)
    return {"ttft_ms": round(ttft * 1000, 1), "tokens_per_s_batch1": round(one[1] / one[0], 1),
            f"tokens_per_s_batch{len(batch)}": round(many[1] / many[0], 1),
            "peak_memory_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)}
