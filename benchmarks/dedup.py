"""MinHash near-dedup: ours (vectorized numpy on Ray Data) against datasketch (MinHash + MinHashLSH,
sequential), on the same documents, num_perm and threshold. Prints one JSON line.

    .venv/bin/python benchmarks/dedup.py                 # 100k documents, ours on 1 and 2 CPUs
    .venv/bin/python benchmarks/dedup.py --docs 20000

Ray's start and its workers' first imports are not timed (a warm-up map runs first); everything from
the in-memory documents to the duplicate clusters is. The corpus: 80-word documents drawn from a Zipf vocabulary; 10% are planted near-duplicates of an
earlier document (1 word changed, Jaccard ~0.88), 5% harder ones (3 words changed, ~0.7) and 5% exact
copies with punctuation changes. Recall is measured on planted pairs whose exact 5-shingle Jaccard
reaches the threshold; precision on a sample of reported pairs, against exact Jaccard.

`short` in the JSON line: 20,000 replies of 15-64 words (the chat replies the data stage sees), 10% of them
an earlier reply with one word replaced away from its ends. Every planted pair is a true near-duplicate;
a reported pair is right when its two replies descend from the same one. Shingles sized by length (the
data stage's default, app/data/dedup.py:shingle_size) against fixed 5-word shingles, in-process.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from app.data import dedup  # noqa: E402
from app.text import tokens  # noqa: E402


def corpus(n: int, seed: int = 0) -> tuple[list[str], list[tuple[int, int]]]:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(5000)]
    weights = [1 / (i + 1) for i in range(5000)]
    docs, planted = [], []
    for i in range(n):
        r = rng.random()
        if i > 100 and r < 0.2:
            src = rng.randrange(i)
            words = docs[src].rstrip(".!").split()
            if r < 0.1:
                words[rng.randrange(len(words))] = rng.choice(vocab)
            elif r < 0.15:
                for j in rng.sample(range(len(words)), 3):
                    words[j] = rng.choice(vocab)
            docs.append(" ".join(words) + ("!" if r >= 0.15 else "."))
            planted.append((src, i))
        else:
            docs.append(" ".join(rng.choices(vocab, weights, k=80)) + ".")
    return docs, planted


def short_corpus(n: int, seed: int = 2) -> tuple[list[str], list[tuple[int, int]]]:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(5000)]
    weights = [1 / (i + 1) for i in range(5000)]
    docs, planted = [], []
    for i in range(n):
        if i > 100 and rng.random() < 0.1:
            src = rng.randrange(i)
            words = docs[src].split()
            words[rng.randrange(2, len(words) - 2)] = rng.choice(vocab)
            docs.append(" ".join(words))
            planted.append((src, i))
        else:
            docs.append(" ".join(rng.choices(vocab, weights, k=rng.randrange(15, 65))))
    return docs, planted


def short_replies(num_perm: int, bands: int, threshold: float) -> dict:
    docs, planted = short_corpus(20_000)
    family = dedup.components(len(docs), np.array(planted))
    out = {"docs": len(docs), "planted_pairs": len(planted)}
    for name, min_k in (("by_length", 2), ("fixed_5", 5)):
        sig = dedup.signatures(*dedup.shingles(docs, min_k=min_k), *dedup.permutations(num_perm))
        label, edges = dedup.near_duplicate_groups(sig, bands, threshold)
        out[name] = {"recall": round(float(np.mean([label[a] == label[b] for a, b in planted])), 4),
                     "precision": round(float(np.mean(family[edges[:, 0]] == family[edges[:, 1]])), 4)
                     if len(edges) else 1.0, "pairs_reported": len(edges)}
    return out


def shingle_set(doc: str, k: int = 5) -> set:
    t = tokens(doc)
    return {tuple(t[i:i + k]) for i in range(len(t) - k + 1)}


def jaccard(a: str, b: str) -> float:
    x, y = shingle_set(a), shingle_set(b)
    return len(x & y) / len(x | y)


def sig_batch(batch: dict, num_perm: int) -> dict:
    hashes, counts = dedup.shingles(list(batch["text"]))
    return {"i": batch["i"], "sig": dedup.signatures(hashes, counts, *dedup.permutations(num_perm))}


def ours(docs: list[str], cpus: int, num_perm: int, bands: int, threshold: float):
    import ray
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:  # warm the worker pool (process start, imports) so both sides are timed warm
        ray.data.range(cpus * 2, override_num_blocks=cpus * 2).map_batches(
            lambda b: {"id": b["id"] + len(dedup.permutations(8)[0])}).materialize()
        start = time.perf_counter()
        table = pa.table({"i": np.arange(len(docs)), "text": docs})
        ds = ray.data.from_arrow([table.slice(k, len(docs) // (cpus * 4) + 1) for k in
                                  range(0, len(docs), len(docs) // (cpus * 4) + 1)])
        ds = ds.map_batches(sig_batch, batch_size=4096, batch_format="numpy", fn_kwargs={"num_perm": num_perm})
        batches = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
        order = np.argsort(np.concatenate([b["i"] for b in batches]))  # blocks finish in any order
        sig = np.concatenate([b["sig"] for b in batches])[order]
        label, edges = dedup.near_duplicate_groups(sig, bands, threshold)
        seconds = time.perf_counter() - start
    finally:
        ray.shutdown()
    return seconds, label, edges


def datasketch_run(docs: list[str], num_perm: int, threshold: float):
    from datasketch import MinHash, MinHashLSH
    start = time.perf_counter()
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    pairs = []
    for i, doc in enumerate(docs):
        t = tokens(doc)
        m = MinHash(num_perm=num_perm)
        m.update_batch([" ".join(t[j:j + 5]).encode("utf-8") for j in range(len(t) - 4)])
        pairs += [(j, i) for j in lsh.query(m)]
        lsh.insert(i, m)
    return time.perf_counter() - start, pairs


def precision(docs, pairs, threshold, rng, sample=2000) -> float:
    pairs = rng.sample(list(pairs), min(sample, len(pairs)))
    return float(np.mean([jaccard(docs[a], docs[b]) >= threshold for a, b in pairs])) if pairs else 1.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--cpus", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--bands", type=int, default=16)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--skip-datasketch", action="store_true", help="only time ours (for quick checks)")
    args = parser.parse_args()
    docs, planted = corpus(args.docs)
    truth = [(a, b) for a, b in planted if jaccard(docs[a], docs[b]) >= args.threshold]
    rng = random.Random(1)
    result = {"docs": len(docs), "planted_pairs": len(planted), "true_pairs": len(truth),
              "num_perm": args.num_perm, "threshold": args.threshold, "bands": args.bands}

    ds_seconds, ds_pairs = (1.0, []) if args.skip_datasketch else datasketch_run(docs, args.num_perm, args.threshold)
    found = {(min(a, b), max(a, b)) for a, b in ds_pairs}
    result["datasketch"] = {"docs_per_s": round(len(docs) / ds_seconds), "seconds": round(ds_seconds, 2),
                            "recall": round(np.mean([p in found for p in truth]), 4),
                            "precision": round(precision(docs, found, args.threshold, rng), 4)}
    for cpus in args.cpus:
        seconds, label, edges = ours(docs, cpus, args.num_perm, args.bands, args.threshold)
        result[f"ours_{cpus}cpu"] = {
            "docs_per_s": round(len(docs) / seconds), "seconds": round(seconds, 2),
            "recall": round(np.mean([label[a] == label[b] for a, b in truth]), 4),
            "precision": round(precision(docs, [tuple(e) for e in edges.tolist()], args.threshold, rng), 4),
            "per_core_vs_datasketch": round(len(docs) / seconds / cpus / (len(docs) / ds_seconds), 2)}
    result["short"] = short_replies(args.num_perm, args.bands, args.threshold)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
