"""Exact and near-duplicate detection, pure numpy; app/data/stage.py runs the hashing on Ray Data.

MinHash: each text becomes a set of shingles (up to 5 consecutive words for Latin text, up to 5 consecutive
characters for CJK text, by app/text.py's tokens; shorter for short texts, see `shingle_size`), each
shingle a 64-bit hash, and `num_perm` hash functions
(multiply-shift: (a*x + b) >> 32, one vectorized matrix op per batch) give the signature's minima. LSH
bands the signature into `bands` rows of `num_perm // bands`; texts sharing any band key are candidates;
a candidate pair becomes an edge when its estimated Jaccard (share of equal minima) reaches the
threshold, and connected components of the edges are the clusters. The representative of a cluster is
its smallest id, so the choice does not depend on the order rows arrive in.
"""
from __future__ import annotations

import zlib
from itertools import chain

import numpy as np

from app.text import cjk_count, tokens

MASK32 = np.uint64(0xFFFFFFFF)
GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def permutations(num_perm: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2 ** 63, num_perm, dtype=np.uint64) | np.uint64(1)  # odd multipliers
    b = rng.integers(0, 2 ** 63, num_perm, dtype=np.uint64)
    return a, b


def shingle_size(n: np.ndarray, k_max: np.ndarray, k_min: int = 2) -> np.ndarray:
    """Shingle length for texts of n tokens: n // 13, between k_min and k_max (and at most n).

    One changed token breaks k of a text's n-k+1 shingles, so the pair's Jaccard is (m-k)/(m+k) with
    m = n-k+1: with 5-word shingles a 35-word reply that says "Thank you" for "Thanks" scores 0.68 and
    passes a 0.8 threshold as a different text. n // 13 keeps one change at Jaccard >= ~0.85 down to
    26 tokens (2-shingles) and leaves texts of 65+ tokens at the configured 5. A near-duplicate pair
    that straddles a step (say 38 and 39 tokens) is shingled at two sizes and not found."""
    return np.maximum(np.minimum(np.minimum(k_max, np.maximum(n // 13, k_min)), n), 1)


def shingles(texts: list[str], word_k: int = 5, char_k: int = 5, cache: dict | None = None, min_k: int = 2
             ) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 shingle hashes of all texts concatenated, count per text), vectorized over the batch.
    Shingles are `shingle_size` tokens long (word_k/char_k at most); an empty text has none."""
    cache = {} if cache is None else cache
    toks = [tokens(t) for t in texts]
    n = np.array([len(t) for t in toks], np.int64)
    k = np.array([char_k if cjk_count(t) >= 0.3 * max(1, len(tk)) else word_k
                  for t, tk in zip(texts, toks)], np.int64)
    k = shingle_size(n, k, min_k)
    flat = list(chain.from_iterable(toks))
    for w in set(flat).difference(cache):
        cache[w] = zlib.crc32(w.encode("utf-8"))
    th = np.fromiter(map(cache.__getitem__, flat), np.uint64, len(flat))
    offsets = np.concatenate([[0], np.cumsum(n)[:-1]])
    counts = np.where(n > 0, n - k + 1, 0)
    out = np.zeros(int(counts.sum()), np.uint64)
    pos = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for kk in np.unique(k[counts > 0]):  # one rolling hash over the whole batch per shingle size
        docs = np.flatnonzero((k == kk) & (counts > 0))
        acc = np.zeros(max(len(th) - kk + 1, 0), np.uint64)
        with np.errstate(over="ignore"):
            for j in range(kk):
                acc = acc * GOLDEN + th[j:len(th) - kk + 1 + j]
        c = counts[docs]
        within = np.arange(c.sum()) - np.repeat(np.cumsum(c) - c, c)
        out[np.repeat(pos[docs], c) + within] = acc[np.repeat(offsets[docs], c) + within]
    return out ^ (out >> np.uint64(29)), counts


def shingle_hashes(text: str, word_k: int = 5, char_k: int = 5, min_k: int = 2) -> np.ndarray:
    """The unique shingle hashes of one text."""
    return np.unique(shingles([text], word_k, char_k, min_k=min_k)[0])


def signatures(hashes: np.ndarray, counts: np.ndarray, a: np.ndarray, b: np.ndarray, chunk: int = 1024
               ) -> np.ndarray:
    """(n, num_perm) uint32 MinHash signatures of texts given as concatenated shingle hashes and counts;
    a text with no shingles gets all 0xFFFFFFFF. Works in cache-sized chunks of whole texts."""
    n, num_perm = len(counts), len(a)
    sig = np.full((n, num_perm), 0xFFFFFFFF, np.uint64)
    ends = np.cumsum(counts)
    x = (hashes & MASK32)[:, None]
    buf = np.empty((chunk, num_perm), np.uint64)
    start_doc = 0
    while start_doc < n:
        lo = ends[start_doc] - counts[start_doc]
        stop_doc = max(int(np.searchsorted(ends, lo + chunk, side="right")), start_doc + 1)
        hi = ends[stop_doc - 1]
        docs = np.arange(start_doc, stop_doc)
        docs = docs[counts[docs] > 0]
        if len(docs):
            h = buf[:hi - lo] if hi - lo <= chunk else np.empty((hi - lo, num_perm), np.uint64)
            with np.errstate(over="ignore"):
                np.multiply(x[lo:hi], a, out=h)
                np.add(h, b, out=h)
            np.right_shift(h, np.uint64(32), out=h)
            sig[docs] = np.minimum.reduceat(h, ends[docs] - counts[docs] - lo, axis=0)
        start_doc = stop_doc
    return sig.astype(np.uint32)


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
