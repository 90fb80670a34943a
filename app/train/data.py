"""SFT data: records -> token ids and labels (Ray Data), packing and batching (pure, on each worker).

Labels are the input ids where app/chat.py's loss mask is 1 and -100 elsewhere: assistant tokens only. With
`objective: causal_lm` (continued pretraining) a record is a raw document instead: its text and an EOS, every
token a label, cut into max_len pieces rather than dropped when long.
Packing puts samples into rows of at most max_len (best-fit decreasing); position ids restart at 0 for
every sample, and attention stays within each sample (app/train/model.py packed_attention).
"""
from __future__ import annotations

import json
import random
from bisect import bisect_left, insort
from collections import defaultdict
from functools import lru_cache

import numpy as np
import torch

from app.chat import ChatTooLong, check_messages, render, with_system_prompt
from app.models import load_tokenizer

IGNORE = -100


@lru_cache(maxsize=2)
def _tokenizer(path: str, system_prompt: str | None = None):
    tok = load_tokenizer(path)
    if system_prompt is not None:
        tok.chat_template = with_system_prompt(tok.chat_template, system_prompt)
    return tok


def tokenize_batch(batch: dict, model_path: str, max_len: int, objective: str = "chat",
                   system_prompt: str | None = None) -> dict:
    """Ray Data map_batches: {id, messages} -> {id, input_ids, labels, drop}. `drop` is "" for a row that
    trains, else why it cannot: malformed (not a conversation), no_answer (no assistant reply to learn),
    too_long (even its last exchange exceeds max_len). Such rows carry no tokens; the caller counts them.
    causal_lm: one row per max_len piece of the document (ids `<id>#<k>` from the second piece on).
    system_prompt: the system turn of each conversation that has none (SFTConfig.system_prompt)."""
    tok = _tokenizer(model_path, system_prompt)
    out = {"id": [], "input_ids": [], "labels": [], "drop": []}
    for rid, messages in zip(batch["id"], batch["messages"]):
        pieces = _document(tok, messages, max_len) if objective == "causal_lm" else [_row(tok, messages, max_len)]
        for k, (ids, labels, drop) in enumerate(pieces):
            out["id"].append(rid if k == 0 else f"{rid}#{k}")
            out["input_ids"].append(np.array(ids, np.int32))
            out["labels"].append(np.array(labels, np.int32))
            out["drop"].append(drop)
    return out


def _document(tok, messages, max_len: int) -> list[tuple[list[int], list[int], str]]:
    """A raw-text record (the data stage's `text` field: one assistant message) as pretraining pieces."""
    try:
        messages = check_messages(json.loads(messages) if isinstance(messages, str) else [dict(m) for m in messages])
    except (ValueError, TypeError):
        return [([], [], "malformed")]
    text = "\n\n".join(m["content"] for m in messages)
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    if len(ids) < 2:
        return [([], [], "no_answer")]
    pieces = [ids[i:i + max_len] for i in range(0, len(ids), max_len)]
    return [(p, p, "") for p in pieces if len(p) > 1]  # a lone last token predicts nothing


def _row(tok, messages, max_len: int) -> tuple[list[int], list[int], str]:
    try:
        messages = check_messages(json.loads(messages) if isinstance(messages, str) else [dict(m) for m in messages])
    except (ValueError, TypeError):
        return [], [], "malformed"
    if messages[-1]["role"] != "assistant":
        return [], [], "no_answer"
    try:
        ids, mask = render(tok, messages, max_len)
    except ChatTooLong:
        return [], [], "too_long"
    if not any(mask):
        return [], [], "no_answer"
    return ids, [t if m else IGNORE for t, m in zip(ids, mask)], ""


def pack(samples: list[dict], max_len: int) -> list[dict]:
    """Best-fit decreasing: longest sample first, each into the row with the least room that still takes it
    (a new row when none does). Rows hold whole samples, total <= max_len; position ids restart per sample.
    On the demo chats mixed with GSM8K solutions (67-570 tokens, rows of 512) 97% of the batches' slots are
    real tokens, against 89% filling rows in arrival order and 71% padded (benchmarks/train_throughput.py)."""
    order = sorted(range(len(samples)), key=lambda i: -len(samples[i]["input_ids"]))
    members: list[list[int]] = []
    with_room: dict[int, list[int]] = defaultdict(list)  # room left -> rows with that much room
    rooms: list[int] = []                                # the room values with_room holds, sorted
    for i in order:
        n = len(samples[i]["input_ids"])
        j = bisect_left(rooms, n)
        if j < len(rooms):
            room = rooms[j]
            row = with_room[room].pop()
            if not with_room[room]:
                rooms.pop(j)
        else:
            room, row = max_len, len(members)
            members.append([])
        members[row].append(i)
        left = max(room - n, 0)
        if not with_room[left]:
            insort(rooms, left)
        with_room[left].append(row)
    rows = []
    for row in members:
        rows.append({"input_ids": [t for i in row for t in samples[i]["input_ids"]],
                     "labels": [t for i in row for t in samples[i]["labels"]],
                     "position_ids": [p for i in row for p in range(len(samples[i]["input_ids"]))]})
    return rows


def collate(rows: list[dict], pad_id: int) -> dict:
    """Pad a micro-batch to its longest row. Unpacked rows get an attention mask; packed rows get
    position ids instead (padding continues as its own segment and carries no loss). `_real_tokens`
    (not a model input) counts the tokens that are not padding."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r["input_ids"])] = torch.as_tensor(np.asarray(r["input_ids"], np.int64))
        labels[i, :len(r["labels"])] = torch.as_tensor(np.asarray(r["labels"], np.int64))
    batch = {"input_ids": ids, "labels": labels, "_real_tokens": sum(len(r["input_ids"]) for r in rows)}
    if "position_ids" in rows[0]:
        pos = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["position_ids"])
            pos[i, :n] = torch.as_tensor(r["position_ids"])
            pos[i, n:] = torch.arange(width - n)
        batch["position_ids"] = pos
    else:
        batch["attention_mask"] = (torch.arange(width)[None, :] < torch.tensor(
            [len(r["input_ids"]) for r in rows])[:, None]).long()
    return batch


def micro_batches(samples: list[dict], micro_batch_size: int, max_len: int, packing: bool, seed: int,
                  epoch: int, pad_id: int, drop_last: bool = True) -> list[dict]:
    """One epoch of a worker's samples: sorted by id (a stable order whatever the shard's arrival order),
    shuffled by (seed, epoch), optionally packed (the packed rows shuffled again: packing orders them by
    length), cut into padded micro-batches (a short last one kept only when drop_last is False, as for
    validation)."""
    samples = sorted(samples, key=lambda s: s["id"])
    rng = random.Random(seed * 1000 + epoch)
    rng.shuffle(samples)
    rows = samples
    if packing:
        rows = pack(samples, max_len)
        rng.shuffle(rows)
    stop = len(rows) - micro_batch_size + 1 if drop_last else len(rows)
    return [collate(rows[i:i + micro_batch_size], pad_id) for i in range(0, max(stop, 0), micro_batch_size)]

