"""Preference pairs for DPO and the reward model: reading them (a data stage output, our JSONL, or Anthropic
HH-RLHF transcripts), splitting, tokenizing, batching. Pure (no Ray).

A pair is {id, prompt: [messages], chosen: str, rejected: str, dimension?, margin?, rejected_kind?}. HH-RLHF
records hold two whole transcripts ("\\n\\nHuman: ... \\n\\nAssistant: ..."); their shared turns become the prompt and
the last assistant turns the two answers. A record that cannot be read is skipped with a reason.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import random
import re
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import torch

from app.chat import ChatTooLong, render
from app.config import UserError
from app.runinfo import dropped_line
from app.train.config import PairData

TURN = re.compile(r"\n\n(Human|Assistant): ")


def parse_hh(transcript: str) -> list[dict]:
    parts = TURN.split("\n\n" + transcript.lstrip("\n"))
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[r], "content": c.strip()} for r, c in zip(parts[1::2], parts[2::2])]


def to_pair(record: dict, index: int) -> dict:
    """One raw record -> a pair; ValueError says why it cannot be one."""
    if "prompt" in record:
        prompt = record["prompt"]
        prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        chosen, rejected = record.get("chosen"), record.get("rejected")
    else:  # HH-RLHF: two transcripts sharing all but the last assistant turn
        a, b = parse_hh(record.get("chosen", "")), parse_hh(record.get("rejected", ""))
        if not a or not b or a[-1]["role"] != "assistant" or b[-1]["role"] != "assistant" or a[:-1] != b[:-1]:
            raise ValueError("transcripts do not share a prompt ending before the last assistant turn")
        prompt, chosen, rejected = a[:-1], a[-1]["content"], b[-1]["content"]
    if not isinstance(chosen, str) or not isinstance(rejected, str) or not chosen.strip() or not rejected.strip():
        raise ValueError("chosen and rejected must be non-empty strings")
    if chosen == rejected:
        raise ValueError("chosen equals rejected")
    if not prompt or prompt[-1].get("role") != "user":
        raise ValueError("the prompt must end with a user turn")
    pair = {"id": str(record.get("id", f"pair-{index:06d}")), "prompt": prompt, "chosen": chosen,
            "rejected": rejected}
    for key in ("dimension", "margin", "rejected_kind"):
        if key in record:
            pair[key] = record[key]
    return pair


def read_pairs(path: str | Path) -> tuple[list[dict], dict[str, int]]:
    """(pairs, skipped count by reason) from a .jsonl or .jsonl.gz file, or a data stage output folder
    (`python -m jobs.data ... input.kind=preference`: Parquet preference records, e.g. its train/)."""
    if Path(path).is_dir():
        records = pq.read_table(path).to_pylist()
        records = [{k: v for k, v in r.items() if v is not None and v != ""} for r in records]  # unset labels
        return [to_pair(r, i) for i, r in enumerate(records)], {}
    opener = gzip.open if str(path).endswith(".gz") else open
    pairs, skipped = [], {}
    with opener(path, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            try:
                pairs.append(to_pair(json.loads(line), i))
            except (ValueError, AttributeError, TypeError) as exc:
                reason = "malformed" if isinstance(exc, json.JSONDecodeError) else str(exc)
                skipped[reason] = skipped.get(reason, 0) + 1
    return pairs, skipped


def split(pairs: list[dict], val_share: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A stable split by a hash of (seed, id): the same pair lands on the same side every run."""
    def bucket(p):
        return int(hashlib.sha256(f"{seed}:{p['id']}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return [p for p in pairs if bucket(p) >= val_share], [p for p in pairs if bucket(p) < val_share]


def last_run(mask: list[int]) -> list[int]:
    """Only the last run of 1s: the final answer's tokens, not earlier assistant turns of the prompt."""
    end = max((i for i, m in enumerate(mask) if m), default=-1) + 1
    start = end
    while start > 0 and mask[start - 1]:
        start -= 1
    return [int(start <= i < end) for i in range(len(mask))]


def tokenize(tokenizer, pairs: list[dict], heads: list[str], max_len: int) -> tuple[list[dict], Counter]:
    """(rows {id, chosen ids, rejected ids, their answer-token masks, head index, margin}, pairs dropped by
    reason: too_long (over max_len tokens), unknown_head (a dimension not in `heads`))."""
    rows, dropped = [], Counter()
    for p in pairs:
        head = p.get("dimension", heads[0])
        if head not in heads:
            dropped["unknown_head"] += 1
            continue
        try:
            chosen, chosen_mask = render(tokenizer, p["prompt"] + [{"role": "assistant", "content": p["chosen"]}],
                                         max_len)
            rejected, rejected_mask = render(
                tokenizer, p["prompt"] + [{"role": "assistant", "content": p["rejected"]}], max_len)
        except ChatTooLong:
            dropped["too_long"] += 1
            continue
        rows.append({"id": p["id"], "chosen": chosen, "rejected": rejected, "chosen_mask": last_run(chosen_mask),
                     "rejected_mask": last_run(rejected_mask), "head": heads.index(head),
                     "margin": float(p.get("margin", 0.0))})
    return rows, dropped


def require(data: PairData) -> None:
    """The one-line error for missing pairs: DPO and the reward job call it before any model is resolved."""
    if not Path(data.path).exists():
        raise UserError(f"preference data {data.path} not found (python -m jobs.demo_data writes the demo's)")


def train_val(data: PairData, seed: int) -> tuple[list[dict], list[dict], dict[str, int]]:
    """(train pairs, validation pairs, skipped count by reason). A data stage output's train/ validates on
    its sibling val/ (the stage's own split: the same hash of the ids that `split` uses would leave the
    train/ folder next to nothing below val_share); any other source is split here by `data.val_share`."""
    root = Path(data.path)
    if root.is_dir() and root.name == "train" and (root.parent / "val").is_dir():
        return read_pairs(root)[0], read_pairs(root.parent / "val")[0], {}
    pairs, skipped = read_pairs(root)
    return *split(pairs, data.val_share, seed), skipped


def load(data: PairData, tokenizer, heads: list[str] | None, seed: int, min_train: int) -> tuple[list, list, dict]:
    """(train rows, val rows, counts) of tokenized pairs; `heads` None: every dimension the pairs name.
    Fewer than `min_train` usable training pairs is an error that says where the others went."""
    require(data)
    train_pairs, val_pairs, skipped = train_val(data, seed)
    pairs = train_pairs + val_pairs
    heads = heads or sorted({p.get("dimension", "preference") for p in pairs})
    train_read, val_read = train_pairs[:data.max_train_pairs], val_pairs[:data.max_val_pairs]
    train, dropped = tokenize(tokenizer, train_read, heads, data.max_len)
    val, dropped_val = tokenize(tokenizer, val_read, heads, data.max_len)
    capped = len(train_pairs) + len(val_pairs) - len(train_read) - len(val_read)
    counts = {"pairs": len(pairs), "skipped": skipped, "train": len(train), "val": len(val),
              "dropped": dict(sorted((dropped + dropped_val).items())), "capped": capped}
    why = {"too_long": f"longer than data.max_len={data.max_len} tokens", "unknown_head": f"of a head not in {heads}"}
    lost = dropped_line(counts["dropped"], why)
    unread = f"; {sum(skipped.values())} lines unreadable ({skipped})" if skipped else ""
    cap = f", {capped} beyond data.max_train_pairs / data.max_val_pairs" if capped else ""
    print(f"preference data: {len(pairs)} pairs read{unread}; {len(train)} train, {len(val)} val ({lost}{cap})",
          flush=True)
    if len(train) < min_train:
        raise UserError(f"{len(train)} usable training pairs in {data.path}, fewer than {min_train} (one micro-batch "
                        f"per worker): of {len(train_read)} training pairs read, "
                        f"{dropped_line(dropped, why)}{unread}")
    return train, val, counts


def micro_batches(rows: list[dict], size: int, seed: int, epoch: int, shuffle: bool = True) -> list[list[dict]]:
    """One epoch of tokenized pairs in groups of `size`: sorted by id, shuffled by (seed, epoch) for training
    (a short last group dropped), in order and complete for validation."""
    rows = sorted(rows, key=lambda r: r["id"])
    if shuffle:
        random.Random(seed * 1000 + epoch).shuffle(rows)
    return [rows[i:i + size] for i in range(0, len(rows) - (size - 1 if shuffle else 0), size)]


def _pad(seqs: list[list[int]], pad: int) -> torch.Tensor:
    width = max(map(len, seqs))
    return torch.tensor([list(s) + [pad] * (width - len(s)) for s in seqs])


def collate(rows: list[dict], pad_id: int) -> dict:
    """Chosen sequences then rejected ones, right-padded: input ids, attention and answer-token masks."""
    ids = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    masks = [r["chosen_mask"] for r in rows] + [r["rejected_mask"] for r in rows]
    return {"input_ids": _pad(ids, pad_id), "attention_mask": _pad([[1] * len(s) for s in ids], 0),
            "answer_mask": _pad(masks, 0)}
