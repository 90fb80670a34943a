"""Why a model answered what it did: each answer token's attribution over the prompt's tokens, two ways.

    python -m jobs.explain model=runs/pipeline-demo/sft/final prompt="我的订单到哪了？"
    python -m jobs.explain model=<spec> prompt="..." answer="..."     # a given answer (its first max_new_tokens)
    python -m jobs.eval ... explain.steps=8   # the eval report explains its worst red-team answer

- Integrated gradients (captum's LLMGradientAttribution over LayerIntegratedGradients on the input
  embeddings): how much each prompt token moved the log-prob of each answer token, integrated from
  captum's default baseline, token 0 (<|endoftext|> in SmolLM2) at every prompt position. Signed; a row
  sums to the log-prob gain over that baseline (completeness, tested).
- Attention rollout (Abnar & Zuidema 2020): per layer the head-averaged attention plus the residual
  (0.5 A + 0.5 I), multiplied through the layers; the answer tokens' rows over the prompt's columns.

The prompt is the chat the model sees (app/chat.py's render_prompt, system turn included); the answer is the
model's greedy one unless given. Writes explanation.json (tokens, both matrices, each prompt token's total
attribution) and explanation.png (the two heatmaps; CJK text in Noto Sans CJK, app/fonts.py).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from app.chat import render_prompt
from app.models import load_policy


def greedy_answer(model, tokenizer, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    from app.sampler import sample
    eos = sorted({tokenizer.eos_token_id})
    batch = sample(model, [prompt_ids], max_new_tokens, eos, pad_id=tokenizer.pad_token_id)
    return batch["sequences"][0, batch["prompt_width"]:][batch["response_mask"][0].bool()].tolist()


def token_labels(tokenizer, ids: list[int]) -> list[str]:
    """What each token adds to the decoded text. A CJK character is often two or three byte-level tokens,
    none of which decodes alone (U+FFFD): the token that completes it carries the character, the ones
    before it "…"."""
    labels, done = [], ""
    for i in range(len(ids)):
        text = tokenizer.decode(ids[:i + 1]).rstrip("\ufffd")
        labels.append(text[len(done):] if len(text) > len(done) else "…")
        done = text if len(text) > len(done) else done
    return labels


def integrated_gradients(model, tokenizer, prompt_ids: list[int], answer_ids: list[int], steps: int) -> torch.Tensor:
    """[answer tokens, prompt tokens]: captum's integrated gradients of each answer token's log-prob."""
    from captum.attr import LayerIntegratedGradients, LLMGradientAttribution, TextTokenInput
    attr = LLMGradientAttribution(LayerIntegratedGradients(model, model.get_input_embeddings()), tokenizer)
    inp = TextTokenInput(tokenizer.decode(prompt_ids), tokenizer)
    if inp.inp_tensor[0].tolist() != prompt_ids:  # the decoded chat must re-tokenize to the same ids
        inp.inp_tensor = torch.tensor([prompt_ids])
        inp.values = tokenizer.convert_ids_to_tokens(prompt_ids)
        inp.n_itp_features = len(prompt_ids)
    with warnings.catch_warnings():  # captum re-decodes the target for its own labels (unused here)
        warnings.filterwarnings("ignore", module="captum")
        result = attr.attribute(inp, target=torch.tensor(answer_ids), n_steps=steps)
    return result.token_attr.detach().float()


@torch.no_grad()
def attention_rollout(model, prompt_ids: list[int], answer_ids: list[int]) -> torch.Tensor:
    """[answer tokens, prompt tokens]: attention rollout, the row of the position that predicts each answer
    token (position p predicts token p + 1), over the prompt's positions."""
    ids = torch.tensor([prompt_ids + answer_ids])
    attentions = model(input_ids=ids, output_attentions=True).attentions   # per layer [1, heads, T, T]
    rollout = torch.eye(ids.shape[1])
    for layer in attentions:
        a = 0.5 * layer[0].float().mean(0) + 0.5 * torch.eye(ids.shape[1])
        rollout = (a / a.sum(-1, keepdim=True)) @ rollout
    p = len(prompt_ids)
    return rollout[p - 1:p - 1 + len(answer_ids), :p]


def explain(model_spec: str, prompt: str, answer: str | None = None, max_new_tokens: int = 24, steps: int = 16,
            out: Path | None = None) -> dict:
    model, tokenizer = load_policy(model_spec)
    model.set_attn_implementation("eager")  # attention weights for the rollout
    prompt_ids = render_prompt(tokenizer, [{"role": "user", "content": prompt}])
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"][:max_new_tokens] if answer else \
        greedy_answer(model, tokenizer, prompt_ids, max_new_tokens)
    answer_ids = [t for t in answer_ids if t != tokenizer.eos_token_id] or answer_ids
    ig = integrated_gradients(model, tokenizer, prompt_ids, answer_ids, steps)
    rollout = attention_rollout(model, prompt_ids, answer_ids)
    result = {"model": model_spec, "prompt": prompt, "answer": tokenizer.decode(answer_ids),
              "prompt_tokens": token_labels(tokenizer, prompt_ids), "answer_tokens": token_labels(tokenizer, answer_ids),
              "integrated_gradients": ig.tolist(), "attention_rollout": rollout.tolist(),
              "prompt_token_totals": ig.sum(0).tolist(), "ig_steps": steps}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "explanation.json").write_text(json.dumps(result, ensure_ascii=False, indent=1))
        result["font"] = heatmaps(result, out / "explanation.png")
    return result


def heatmaps(result: dict, path: Path, max_prompt_tokens: int = 48) -> str:
    """The two matrices side by side (the last `max_prompt_tokens` prompt tokens: the user's turn); returns
    the font family the labels were drawn in."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from app.fonts import cjk_font
    family = cjk_font()
    cols = slice(-max_prompt_tokens, None)
    labels = [t.replace("\n", "\\n") for t in result["prompt_tokens"][cols]]
    rows = [t.replace("\n", "\\n") for t in result["answer_tokens"]]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 0.32 * len(labels) * 2), max(3, 0.3 * len(rows) + 2)))
    for ax, key, cmap in ((axes[0], "integrated_gradients", "RdBu_r"), (axes[1], "attention_rollout", "viridis")):
        m = torch.tensor(result[key])[:, cols].numpy()
        bound = float(abs(m).max()) or 1.0
        ax.imshow(m, cmap=cmap, aspect="auto", **({"vmin": -bound, "vmax": bound} if cmap == "RdBu_r" else {}))
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7, family=family)
        ax.set_yticks(range(len(rows)), rows, fontsize=7, family=family)
        ax.set_title(key.replace("_", " "), fontsize=9)
    fig.suptitle(f"{result['prompt'][:60]} -> {result['answer'][:60]}", fontsize=9, family=family)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return family
