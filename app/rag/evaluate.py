"""`jobs.eval task=rag`: does retrieval help this model answer questions whose answer is in the documents?
Each question is answered twice, greedily, by the same model: alone, and with the index's top k chunks as
numbered sources (app/chat.py with_sources, as serving does). An answer is right when one of its numbers,
other than the question's own, is the fact's (the demo knowledge base's questions ask for a warranty, a weight or a price). With vs without is
paired on the same questions and compared by the release gate's statistics (app/stats.py: exact
McNemar for right/wrong), beside retrieval's recall@k.

    python -m jobs.eval jobs/configs/eval_rag_demo.yaml model=runs/pipeline-demo/sft/final

Writes rag.json (accuracy with and without, the paired row, recall@k), answers.jsonl and report.md.
"""
from __future__ import annotations

import json
import re

from app.chat import with_sources
from app.config import UserError
from app.stats import compare_metric
from app.generation import generate_chat
from app.models import load_policy
from app.rag.index import Index, recall_at_k

NUMBER = re.compile(r"\d+(?:\.\d+)?")


def right(answer: str, fact: str, question: str = "") -> float:
    """1 when a number in the answer equals the fact's (4.40 = 4.4), else 0; the question's own numbers
    (the item code's) do not count."""
    asked = {float(n) for n in NUMBER.findall(question)}
    return float(any(float(n) == float(fact) and float(n) not in asked
                     for n in NUMBER.findall(answer.replace(",", ""))))


def run(cfg) -> dict:
    out = cfg.out("eval")
    out.mkdir(parents=True, exist_ok=True)
    try:
        lines = open(cfg.rag.questions, encoding="utf-8").read().splitlines()
        index = Index(cfg.rag.index)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    questions = [json.loads(line) for line in lines if line.strip()][:cfg.max_samples]
    model, tokenizer = load_policy(cfg.model, cfg.dtype)
    sources = [index.search(q["question"], cfg.rag.k, cfg.rag.mode) for q in questions]
    plain = [[{"role": "user", "content": q["question"]}] for q in questions]
    answers = {}
    for name, conversations in (("without", plain), ("with", [with_sources(c, s) for c, s in zip(plain, sources)])):
        answers[name] = [a for i in range(0, len(conversations), cfg.batch_size)
                         for a in generate_chat(model, tokenizer, conversations[i:i + cfg.batch_size],
                                                cfg.max_new_tokens)]
    items = {name: [{"id": q["id"], "set": "test", "accuracy": right(a, q["answer"], q["question"])}
                    for q, a in zip(questions, got)]
             for name, got in answers.items()}
    row = compare_metric("accuracy", items["with"], items["without"], tolerance=0.0, alpha=cfg.gate.alpha)
    ks = sorted({1, cfg.rag.k})
    result = {"model": cfg.model, "index": cfg.rag.index, "mode": cfg.rag.mode, "k": cfg.rag.k, "n": len(questions),
              "accuracy_without": row["baseline"], "accuracy_with": row["new"], "comparison": row,
              "recall": recall_at_k(index, questions, ks, cfg.rag.mode)}
    (out / "rag.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
    with open(out / "answers.jsonl", "w", encoding="utf-8") as f:
        for q, s, a, b, x, y in zip(questions, sources, answers["without"], answers["with"], items["without"],
                                    items["with"]):
            f.write(json.dumps({**q, "sources": [c["doc"] for c in s], "answer_without": a, "answer_with": b,
                                "right_without": x["accuracy"], "right_with": y["accuracy"]}, ensure_ascii=False) + "\n")
    (out / "report.md").write_text(
        f"# Retrieval-augmented answers: {cfg.model}\n\n{len(questions)} questions, index `{cfg.rag.index}` "
        f"({cfg.rag.mode}, k={cfg.rag.k}); recall {result['recall']}\n\n| | accuracy |\n|---|---|\n"
        f"| without retrieval | {row['baseline']:.3f} |\n| with retrieval | {row['new']:.3f} |\n\n"
        f"Difference {row['diff']:+.3f}, 95% CI [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}], p {row['p_value']:.2g} "
        f"({row['test']}): {row['verdict']}\n", encoding="utf-8")
    print(f"eval rag: accuracy {row['baseline']:.3f} without -> {row['new']:.3f} with retrieval (n={len(questions)}, "
          f"diff {row['diff']:+.3f} [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}], p {row['p_value']:.2g}); "
          f"recall {result['recall']} -> {out}")
    return result
