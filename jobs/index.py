"""Build a retrieval index from a folder of documents (app/rag/index.py): chunks, BM25, dense embeddings.

    python -m jobs.index docs=data/demo/raw/kb                      # -> runs/index-demo/
    python -m jobs.index docs=<folder> chunk_tokens=256 overlap=48 dense=false output_dir=runs/index-x

Markdown and text files are documents; JSONL lines {text[, id]} are documents; anything else is named as
skipped. With `questions` (JSONL {question, doc}) it also measures retrieval: recall@k per mode.
"""
from __future__ import annotations

import json

from pydantic import Field

from app.cli import Job
from app.config import JobConfig, UserError


class IndexConfig(JobConfig):
    docs: str = "data/demo/raw/kb"
    questions: str | None = "data/demo/raw/kb_questions.jsonl"  # recall@k of their `doc`; null: not measured
    tokenizer: str = "smollm2-135m-instruct"   # chunks are counted in the served model's tokens
    chunk_tokens: int = Field(200, ge=16)
    overlap: int = Field(40, ge=0)
    dense: bool = True
    k: list[int] = [1, 4]


def run(cfg: IndexConfig) -> dict:
    from app.models import load_tokenizer
    from app.rag.index import Index, build, read_documents, recall_at_k
    try:
        docs, skipped = read_documents(cfg.docs)
    except (FileNotFoundError, json.JSONDecodeError) as exc:
        raise UserError(str(exc)) from None
    if not docs:
        raise UserError(f"no documents in {cfg.docs} (Markdown, text or JSONL with a text field)")
    out = cfg.out("index")
    manifest = build(docs, out, load_tokenizer(cfg.tokenizer), cfg.chunk_tokens, cfg.overlap, cfg.dense)
    manifest.update(docs=cfg.docs, skipped=skipped)
    if cfg.questions:
        questions = [json.loads(line) for line in open(cfg.questions, encoding="utf-8") if line.strip()]
        index = Index(out)
        manifest["recall"] = {mode: recall_at_k(index, questions, cfg.k, mode)
                              for mode in ("bm25", "dense", "hybrid") if cfg.dense or mode == "bm25"}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False))
    print(f"index: {manifest['documents']} documents ({len(skipped)} files skipped) -> {manifest['chunks']} chunks "
          f"-> {out}" + (f"; recall {manifest['recall']}" if cfg.questions else ""))
    return manifest


JOB = Job(IndexConfig, run, None)

if __name__ == "__main__":
    JOB.main()
