"""Retrieval (app/rag): chunking and terms for English and Chinese, the documents a folder yields, the
index's recall on the demo knowledge base, and jobs.index's errors."""
from __future__ import annotations

import json
import random

import pytest


def test_chunks_cut_at_sentences_with_overlap_and_terms_segment_chinese():
    from app.rag.chunks import chunk_text, terms
    text = ("Item LM-1042 is our oak lamp. It weighs 4.4 kg and costs 599 yuan. Every LM-1042 has a 3-year "
            "warranty. Orders ship the same day.")
    words = lambda s: len(s.split())  # noqa: E731
    chunks = chunk_text(text, words, size=14, overlap=8)
    assert chunks == ["Item LM-1042 is our oak lamp. It weighs 4.4 kg and costs 599 yuan.",
                      "It weighs 4.4 kg and costs 599 yuan. Every LM-1042 has a 3-year warranty.",
                      "Every LM-1042 has a 3-year warranty. Orders ship the same day."]
    assert chunk_text("商品LM-1042是橡木台灯。重量4.4公斤。每件享受3年质保。", len, size=17, overlap=0) == [
        "商品LM-1042是橡木台灯。", "重量4.4公斤。每件享受3年质保。"]
    assert terms("商品LM-1042的质保是几年？") == ["商品", "lm-1042", "质保", "几年"]
    assert terms("How long is the warranty of item LM-1042?") == ["long", "warranty", "item", "lm-1042"]
    assert max(map(words, chunk_text("word " * 50, words, size=10, overlap=0))) <= 10  # a long sentence is cut


def test_folder_documents_and_recall_on_the_demo_knowledge_base(tmp_path):
    from app.demo.kb import knowledge_base
    from app.models import load_tokenizer
    from app.rag.index import Index, build, read_documents, recall_at_k
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "a.md").write_text("# A\n\nalpha")
    (tmp_path / "docs" / "sub" / "b.txt").write_text("beta")
    (tmp_path / "docs" / "c.jsonl").write_text('{"id": "c1", "text": "gamma"}\n{"text": "delta"}\n{"no": 1}\n')
    (tmp_path / "docs" / "d.pdf").write_bytes(b"%PDF")
    docs, skipped = read_documents(tmp_path / "docs")
    assert [d["id"] for d in docs] == ["a", "c1", "c.jsonl:2", "sub/b"] and skipped == ["c.jsonl:3", "d.pdf"]
    with pytest.raises(FileNotFoundError, match="document folder not found"):
        read_documents(tmp_path / "absent")
    pages, questions = knowledge_base(random.Random(3), 60)
    build(pages, tmp_path / "index", load_tokenizer("tiny"))
    index = Index(tmp_path / "index")
    recall = {mode: recall_at_k(index, questions, [1, 4], mode) for mode in ("bm25", "dense", "hybrid")}
    # pinned: item codes are a lexical match (BM25 finds every page first); the English MiniLM embeds codes and
    # Chinese poorly, and reciprocal rank fusion with it costs BM25's first place
    assert recall["bm25"] == {"n": 60, "@1": 1.0, "@4": 1.0}
    assert recall["dense"]["@4"] == pytest.approx(0.483, abs=0.02) and recall["hybrid"]["@4"] == pytest.approx(0.95, abs=0.02)
    top = index.search(questions[0]["question"], k=2)
    assert top[0]["doc"] == questions[0]["doc"] and set(top[0]) == {"id", "doc", "text", "score"}


def test_index_job_errors_name_the_folder(tmp_path, capsys):
    from jobs.index import JOB
    with pytest.raises(SystemExit):
        JOB.main([f"docs={tmp_path / 'absent'}", "questions=null"])
    assert "document folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        JOB.main([f"docs={tmp_path / 'empty'}", "questions=null"])
    assert "no documents in" in capsys.readouterr().err
    (tmp_path / "kb").mkdir()
    (tmp_path / "kb" / "p.md").write_text("Item LM-1 has a 2-year warranty.")
    (tmp_path / "q.jsonl").write_text(json.dumps({"question": "Warranty of LM-1?", "doc": "p"}) + "\n")
    manifest = JOB.main([f"docs={tmp_path / 'kb'}", f"questions={tmp_path / 'q.jsonl'}", "dense=false",
                         f"output_dir={tmp_path / 'out'}", "tokenizer=tiny"])
    assert manifest["chunks"] == 1 and manifest["recall"] == {"bm25": {"n": 1, "@1": 1.0, "@4": 1.0}}


def test_rag_eval_answers_each_question_with_and_without_sources(tmp_path):
    """jobs.eval task=rag on the tiny model: every question answered twice, the sources the index gave
    recorded, the paired comparison and recall written; a right answer is the fact's number, not the
    question's own; task and section go together."""
    from app.config import ConfigError, load_config
    from app.demo.kb import knowledge_base
    from app.eval.evaluate import EvalConfig, run
    from app.models import load_tokenizer
    from app.rag.evaluate import right
    from app.rag.index import build
    assert right("LM-4898 has a 5-year warranty.", "5", "Warranty of LM-4898?") == 1.0
    assert right("It is LM-1749.", "1749", "Price of LM-1749?") == 0.0 and right("1,749 yuan", "1749") == 1.0
    pages, questions = knowledge_base(random.Random(3), 6)
    build(pages, tmp_path / "index", load_tokenizer("tiny"), dense=False)
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in questions))
    overrides = ["model=tiny", f"rag.index={tmp_path / 'index'}", f"rag.questions={tmp_path / 'q.jsonl'}", "rag.k=2",
                 "max_new_tokens=4", f"output_dir={tmp_path / 'out'}"]
    result = run(load_config(EvalConfig, "jobs/configs/eval_rag_demo.yaml", overrides))
    assert result["n"] == 6 and result["recall"] == {"n": 6, "@1": 1.0, "@2": 1.0}
    assert result["comparison"]["test"].startswith("McNemar") and (tmp_path / "out" / "report.md").is_file()
    rows = [json.loads(line) for line in (tmp_path / "out" / "answers.jsonl").read_text().splitlines()]
    assert [r["sources"][0] for r in rows] == [q["doc"] for q in questions] and all(len(r["sources"]) == 2 for r in rows)
    with pytest.raises(ConfigError, match="task: rag and the rag section"):
        load_config(EvalConfig, "jobs/configs/eval_rag_demo.yaml", ["rag=null"])
