"""Stratified train/val/test split with a cap on any one class's share, and the contamination check. Pure.

Every decision is a function of (seed, id, label): ids are ordered by sha256(seed:id) within each class,
so the same records always land in the same split, whatever order they arrive in.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict

import numpy as np

from app.data.dedup import shingles


def capped_counts(counts: dict[str, int], max_share: float | None) -> dict[str, int]:
    """Largest counts <= the given ones in which no class exceeds max_share of the total.
    None, or a cap no set of these classes can meet (max_share * classes < 1), leaves counts unchanged."""
    if not max_share or max_share >= 1 or max_share * len(counts) < 1:
        return dict(counts)
    kept = dict(counts)
    while True:
        total = sum(kept.values())
        over = {c: n for c, n in kept.items() if n > max_share * total}
        if not over:
            return kept
        c = max(over, key=lambda k: (over[k], k))
        rest = total - kept[c]
        kept[c] = int(max_share * rest / (1 - max_share))


def order_key(seed: int, rid: str) -> str:
    return hashlib.sha256(f"{seed}:{rid}".encode("utf-8")).hexdigest()


def assign(ids: list[str], labels: list[str], ratios: tuple[float, float, float], seed: int = 0) -> dict[str, str]:
    """id -> 'train' | 'val' | 'test', each class cut by the ratios on its own (stratified)."""
    total = sum(ratios)
    out = {}
    for members in _by_class(ids, labels, seed).values():
        n_val, n_test = round(len(members) * ratios[1] / total), round(len(members) * ratios[2] / total)
        for i, rid in enumerate(members):
            out[rid] = "val" if i < n_val else "test" if i < n_val + n_test else "train"
    return out


def over_cap(ids: list[str], labels: list[str], max_share: float | None, seed: int = 0) -> set[str]:
    """The ids to drop so that no class exceeds max_share of what is left (the same ids on every run)."""
    by_class = _by_class(ids, labels, seed)
    limit = capped_counts({c: len(v) for c, v in by_class.items()}, max_share)
    return {rid for c, members in by_class.items() for rid in members[limit[c]:]}


def _by_class(ids: list[str], labels: list[str], seed: int) -> dict[str, list[str]]:
    by_class: dict[str, list[str]] = defaultdict(list)
    for rid, label in zip(ids, labels):
        by_class[label].append(rid)
    for members in by_class.values():
        members.sort(key=lambda rid: order_key(seed, rid))
    return by_class


def ngram_hashes(text: str, n: int) -> np.ndarray:
    """Sorted unique uint64 hashes of the text's token n-grams (words, or CJK characters); a text shorter
    than n tokens is one n-gram of all its tokens."""
    return np.unique(shingles([text], n, n, min_k=n)[0])


def overlap(text: str, reference: np.ndarray, n: int) -> float:
    """Share of the text's n-grams found in `reference` (a sorted uint64 array)."""
    grams = ngram_hashes(text, n)
    return float(np.isin(grams, reference, assume_unique=True).mean()) if len(grams) else 0.0
