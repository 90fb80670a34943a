"""Chat rendering: the only place chat text is formatted. SFT, reward, RL, eval and serving all use it.

  render(tokenizer, messages, max_len)        -> (input_ids, loss_mask): 1 on assistant tokens only
  render_prompt(tokenizer, messages, max_len) -> input_ids ending with the assistant header
  with_sources(messages, chunks)              -> messages with retrieved chunks as numbered sources (RAG)
  with_system_prompt(template, prompt)        -> a chat template that opens every conversation with `prompt`

Both use the tokenizer's own chat template. A conversation longer than `max_len` tokens loses its oldest
turns first (system prompt kept); if even the last exchange does not fit, ChatTooLong is raised: the final
answer is never cut silently. Pure: no ray import.
"""
from __future__ import annotations

import json
import re

ROLES = ("system", "user", "assistant")


class ChatTooLong(ValueError):
    """The last exchange alone exceeds max_len: callers reject the record with reason 'too_long'."""


SOURCES = ("Answer the user's question from these sources when they hold the answer, and cite them as [n]. "
           "请依据以下资料回答，并以 [n] 注明出处。")


def with_sources(messages: list[dict], chunks: list[dict]) -> list[dict]:
    """The conversation with retrieved chunks ({text}) as numbered sources in its system turn (added, or
    appended to the one it has): how serving and the RAG eval put retrieval into a prompt."""
    note = SOURCES + "\n\n" + "\n\n".join(f"[{i}] {c['text'].strip()}" for i, c in enumerate(chunks, 1))
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": messages[0]["content"] + "\n\n" + note}] + list(messages[1:])
    return [{"role": "system", "content": note}] + list(messages)


_SYSTEM_PROMPT = re.compile(r"\{#- raypost system_prompt -#\}.*?\{#- /raypost system_prompt -#\}", re.S)


def with_system_prompt(template: str, prompt: str | None) -> str:
    """The chat template with `prompt` as the system turn of every conversation that brings none (None: the
    template's own default again). How SFT's `system_prompt` reaches RL, evaluation and serving: the SFT
    export saves the tokenizer with this template, and every later stage renders with the model's tokenizer.
    A prompt set by an earlier SFT (two-stage training) is replaced, not stacked."""
    template = _SYSTEM_PROMPT.sub("", template)
    if prompt is None:
        return template
    system = json.dumps({"role": "system", "content": prompt})  # a Jinja dict literal, quotes escaped
    return ("{#- raypost system_prompt -#}{%- if not messages or messages[0]['role'] != 'system' %}"
            f"{{%- set messages = [{system}] + messages %}}{{%- endif %}}{{#- /raypost system_prompt -#}}" + template)


def check_messages(messages) -> list[dict]:
    """Validate the `[{role, content}]` shape; ValueError names what is wrong."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"message {i} must be {{role: {'|'.join(ROLES)}, content: str}}, got {m!r:.80}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _template(tokenizer, messages, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _encode(tokenizer, text: str, offsets: bool = False):
    # The template already holds every special token it wants; add none.
    return tokenizer(text, add_special_tokens=False, return_offsets_mapping=offsets)


def _drop_oldest_turn(messages: list[dict]) -> list[dict] | None:
    """Remove the oldest non-system message and everything up to the next user message."""
    n_system = next((i for i, m in enumerate(messages) if m["role"] != "system"), len(messages))
    rest = messages[n_system + 1:]
    while rest and rest[0]["role"] != "user":
        rest = rest[1:]
    return messages[:n_system] + rest if rest else None


def fit(tokenizer, messages: list[dict], max_len: int | None, generation_prompt: bool) -> list[dict]:
    """Drop the oldest turns until the rendering fits in max_len tokens."""
    if max_len is None:
        return messages
    kept = messages
    while True:
        n = len(_encode(tokenizer, _template(tokenizer, kept, generation_prompt))["input_ids"])
        if n <= max_len:
            return kept
        shorter = _drop_oldest_turn(kept)
        if shorter is None or (not generation_prompt and shorter[-1]["role"] != "assistant"):
            raise ChatTooLong(f"the last exchange is {n} tokens, over max_len={max_len}")
        kept = shorter


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The full text and the character spans of each assistant reply (its content and end-of-turn token),
    found by rendering each prefix: the template must render a conversation's prefixes as text prefixes."""
    text = _template(tokenizer, messages, False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        head = _template(tokenizer, messages[:i], True) if i else ""
        upto = _template(tokenizer, messages[:i + 1], False).rstrip()
        if not (text.startswith(upto) and upto.startswith(head)):
            raise ValueError("the chat template does not render prefixes as prefixes; cannot locate replies")
        spans.append((len(head), len(upto)))
    return text, spans


def render(tokenizer, messages, max_len: int | None = None) -> tuple[list[int], list[int]]:
    """(input_ids, loss_mask) for a conversation ending with an assistant reply; the mask is 1 exactly on
    the tokens of assistant replies (every kept turn, not only the last)."""
    messages = check_messages(messages)
    if messages[-1]["role"] != "assistant":
        raise ValueError("a training conversation must end with an assistant message")
    messages = fit(tokenizer, messages, max_len, generation_prompt=False)
    text, spans = assistant_spans(tokenizer, messages)
    enc = _encode(tokenizer, text, offsets=True)
    mask = [int(any(s <= start < e for s, e in spans)) for start, _ in enc["offset_mapping"]]
    return list(enc["input_ids"]), mask


def render_prompt(tokenizer, messages, max_len: int | None = None) -> list[int]:
    """input_ids of a conversation followed by the assistant header, ready for generation."""
    messages = check_messages(messages)
    if messages[-1]["role"] == "assistant":
        raise ValueError("a prompt must not end with an assistant message")
    messages = fit(tokenizer, messages, max_len, generation_prompt=True)
    return list(_encode(tokenizer, _template(tokenizer, messages, True))["input_ids"])
