"""Exact and near-duplicate detection, pure numpy; app/data/pipeline.py runs the hashing on Ray Data.

MinHash: each text becomes a set of shingles (5 consecutive words for Latin text, 5 consecutive characters
for CJK text, by app/data/text.py's tokens), each shingle a 64-bit hash, and `num_perm` hash functions
(multiply-shift: (a*x + b) >> 32, one vectorized matrix op per batch) give the signature's minima. LSH
bands the signature into `bands` rows of `num_perm // bands`; texts sharing any band key are candidates;
a candidate pair becomes an edge when its estimated Jaccard (share of equal minima) reaches the
threshold, and connected components of the edges are the clusters. The representative of a cluster is
its smallest id, so the choice does not depend on the order rows arrive in.
"""
from __future__ import annotations

import zlib

import numpy as np

from app.data.text import cjk_share, tokens

MASK32 = np.uint64(0xFFFFFFFF)
GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def permutations(num_perm: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2 ** 63, num_perm, dtype=np.uint64) | np.uint64(1)  # odd multipliers
    b = rng.integers(0, 2 ** 63, num_perm, dtype=np.uint64)
    return a, b


def shingle_hashes(text: str, word_k: int = 5, char_k: int = 5, cache: dict | None = None) -> np.ndarray:
    """uint64 hashes of the text's shingles (one shingle of all tokens when the text is shorter than k)."""
    toks = tokens(text)
    if not toks:
        return np.zeros(0, np.uint64)
    cache = {} if cache is None else cache
    th = np.fromiter((cache[t] if t in cache else cache.setdefault(t, zlib.crc32(t.encode("utf-8")))
                      for t in toks), np.uint64, len(toks))
    k = min(char_k if cjk_share(text) >= 0.3 else word_k, len(toks))
    acc = np.zeros(len(toks) - k + 1, np.uint64)
    with np.errstate(over="ignore"):
        for j in range(k):  # polynomial rolling hash over k token hashes, mod 2**64
            acc = acc * GOLDEN + th[j:len(toks) - k + 1 + j]
    return np.unique(acc ^ (acc >> np.uint64(29)))


def signatures(shingle_sets: list[np.ndarray], a: np.ndarray, b: np.ndarray, chunk: int = 16384) -> np.ndarray:
    """(n, num_perm) uint32 MinHash signatures; an empty set gets all 0xFFFFFFFF."""
    n, num_perm = len(shingle_sets), len(a)
    sig = np.full((n, num_perm), 0xFFFFFFFF, np.uint32)
    start = 0
    while start < n:  # whole documents per chunk, about `chunk` shingles each
        stop, size = start, 0
        while stop < n and (size == 0 or size + len(shingle_sets[stop]) <= chunk):
            size += len(shingle_sets[stop])
            stop += 1
        lengths = np.array([len(s) for s in shingle_sets[start:stop]])
        nonempty = lengths > 0
        if nonempty.any():
            x = np.concatenate(shingle_sets[start:stop]) & MASK32
            with np.errstate(over="ignore"):
                h = ((x[:, None] * a[None, :] + b[None, :]) >> np.uint64(32)).astype(np.uint32)
            offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])[nonempty]
            sig[start:stop][nonempty] = np.minimum.reduceat(h, offsets, axis=0)
        start = stop
    return sig


def band_keys(sig: np.ndarray, bands: int) -> np.ndarray:
    """(n, bands) uint64 keys: a hash of each band's rows."""
    rows = sig.shape[1] // bands
    parts = sig[:, :bands * rows].reshape(len(sig), bands, rows).astype(np.uint64)
    key = np.zeros((len(sig), bands), np.uint64)
    with np.errstate(over="ignore"):
        for r in range(rows):
            key = key * GOLDEN + parts[:, :, r]
    return key


def components(n: int, edges: np.ndarray) -> np.ndarray:
    """Connected-component label (smallest member index) for each of n nodes, edges as (m, 2) ints."""
    parent = np.arange(n)

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i
    for u, v in edges:
        ru, rv = find(u), find(v)
        if ru != rv:
            parent[max(ru, rv)] = min(ru, rv)
    return np.array([find(i) for i in range(n)])


def candidate_pairs(keys: np.ndarray) -> np.ndarray:
    """Unique (i, j), i < j, pairs of rows sharing a band key; each group links to its first member."""
    pairs = []
    n = len(keys)
    for band in range(keys.shape[1]):
        order = np.argsort(keys[:, band], kind="stable")
        sorted_keys = keys[order, band]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        group_first = np.repeat(order[starts], np.diff(np.r_[starts, n]))
        linked = group_first != order
        pairs.append(np.stack([group_first[linked], order[linked]], axis=1))
    if not pairs:
        return np.zeros((0, 2), np.int64)
    allp = np.concatenate(pairs)
    allp.sort(axis=1)
    return np.unique(allp, axis=0)


def near_duplicate_groups(sig: np.ndarray, bands: int, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(component label per row, verified edges). Rows must be sorted by id so label = representative."""
    pairs = candidate_pairs(band_keys(sig, bands))
    if len(pairs):
        est = (sig[pairs[:, 0]] == sig[pairs[:, 1]]).mean(axis=1)
        pairs = pairs[est >= threshold]
    return components(len(sig), pairs), pairs


def exact_groups(hashes: list[str]) -> np.ndarray:
    """Label per row: index of the first row with the same hash (rows sorted by id)."""
    first: dict[str, int] = {}
    return np.array([first.setdefault(h, i) for i, h in enumerate(hashes)])
