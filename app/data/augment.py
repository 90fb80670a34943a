"""Augmented copies of SFT training records (seeds 000-002: synonym replacement, random deletion of 5%,
random swap, back-translation, model-written paraphrases); app/data/stage.py runs them through the same
cleaning, filters and contamination check as the input and adds what passes to train/ only.

    python -m jobs.data jobs/configs/data_demo.yaml augment.enabled=true augment.ops=[synonym,delete,swap]

By default the user turns change and the assistant's reply stays as written: the model learns to answer
more ways of asking, never a corrupted answer (`augment.target: assistant | both` changes replies too).
Text is cut into words by jieba (Chinese words; Latin words, spaces and punctuation as their own pieces), so
joining the pieces gives the text back. The rule-based operations are pure and seeded per record; the
model-based ones (`back_translate`, `paraphrase`) are `module:function` plugins, texts and languages ->
texts, with the bundled model prompted to translate or rephrase as the defaults.
"""
from __future__ import annotations

import random
import re
from functools import lru_cache
from pathlib import Path

from app.text import CJK_CHAR

SYNONYMS_FILE = Path(__file__).with_name("synonyms.txt")
WORD = re.compile(r"\w", re.UNICODE)


@lru_cache(maxsize=4)
def load_synonyms(path: str | None = None) -> dict[str, tuple[str, ...]]:
    """word -> the other words of its group (lower-case keys), from comma-separated groups, one per line."""
    table: dict[str, tuple[str, ...]] = {}
    for line in Path(path or SYNONYMS_FILE).read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            group = [w.strip() for w in line.split(",") if w.strip()]
            for w in group:
                table[w.lower()] = tuple(x for x in group if x != w)
    return table


def pieces(text: str) -> list[str]:
    """The text cut into words, spaces and punctuation; "".join(pieces(t)) == t. Chinese by jieba."""
    if not CJK_CHAR.search(text):
        return re.findall(r"\w+|\s+|[^\w\s]+", text)
    import jieba
    jieba.setLogLevel(60)
    return list(jieba.cut(text, HMM=False))


def _words(ps: list[str]) -> list[int]:
    return [i for i, p in enumerate(ps) if WORD.search(p)]


def synonym(ps: list[str], rng: random.Random, p: float, table: dict) -> list[str]:
    out = list(ps)
    for i in _words(ps):
        options = table.get(ps[i].lower())
        if options and rng.random() < p:
            word = rng.choice(options)
            out[i] = word[:1].upper() + word[1:] if ps[i][:1].isupper() else word
    return out


def delete(ps: list[str], rng: random.Random, p: float) -> list[str]:
    """Each word dropped with probability p (at least one word stays); the space after it goes too."""
    words = _words(ps)
    gone = {i for i in words if rng.random() < p}
    if len(gone) == len(words):
        gone.discard(words[0])
    out = []
    for i, piece in enumerate(ps):
        if i in gone:
            continue
        if i - 1 in gone and piece.isspace() and (not out or out[-1].isspace()):
            continue
        out.append(piece)
    return out


def swap(ps: list[str], rng: random.Random, n: int) -> list[str]:
    out, words = list(ps), _words(ps)
    for _ in range(n if len(words) > 1 else 0):
        a, b = rng.sample(words, 2)
        out[a], out[b] = out[b], out[a]
    return out


def augment_text(text: str, ops: list[str], rng: random.Random, cfg) -> str:
    """The rule-based operations of `ops` (synonym, delete, swap), in that order, on one text."""
    ps = pieces(text)
    if "synonym" in ops:
        ps = synonym(ps, rng, cfg.synonym_p, load_synonyms(cfg.synonyms_file))
    if "delete" in ops:
        ps = delete(ps, rng, cfg.delete_p)
    if "swap" in ops:
        ps = swap(ps, rng, cfg.swap_n)
    return "".join(ps).strip()


def augmented_records(records: list[dict], cfg, seed: int) -> list[dict]:
    """`cfg.copies` augmented copies of each record ({id, messages, intent, lang}) as raw records for the
    cleaning stage: id `<id>~aug<k>`, `augmented_from` the source id. Model-based operations run once per
    batch over every text they change."""
    from app.config import load_callable
    roles = {"user": {"user"}, "assistant": {"assistant"}, "both": {"user", "assistant"}}[cfg.target]
    out = []
    for r in records:
        for k in range(1, cfg.copies + 1):
            rng = random.Random(f"{seed}:{r['id']}:{k}")
            messages = [{**m, "content": augment_text(m["content"], cfg.ops, rng, cfg)} if m["role"] in roles
                        else dict(m) for m in r["messages"]]
            out.append({"id": f"{r['id']}~aug{k}", "messages": messages, "intent": r["intent"], "lang": r["lang"],
                        "augmented_from": r["id"]})
    for op, plugin in (("back_translate", cfg.back_translate), ("paraphrase", cfg.paraphrase)):
        if op not in cfg.ops:
            continue
        spots = [(i, j) for i, rec in enumerate(out) for j, m in enumerate(rec["messages"]) if m["role"] in roles]
        texts = load_callable(plugin)([out[i]["messages"][j]["content"] for i, j in spots],
                                      [out[i]["lang"] for i, _ in spots])
        for (i, j), text in zip(spots, texts):
            out[i]["messages"][j]["content"] = text.strip()
    return out


TRANSLATE = {"en": "Translate into Chinese. Answer with the translation only.\n\n{}",
             "zh": "Translate into English. Answer with the translation only.\n\n{}"}
BACK = {"en": "Translate into English. Answer with the translation only.\n\n{}",
        "zh": "翻译成中文，只回答译文。\n\n{}"}
PARAPHRASE = {"en": "Rewrite this in other words, keeping its meaning. Answer with the rewrite only.\n\n{}",
              "zh": "换一种说法改写这句话，意思不变，只回答改写后的句子。\n\n{}"}


@lru_cache(maxsize=1)
def _bundled():
    from app.models import load_policy
    return load_policy("smollm2-135m-instruct")


def _ask(template: dict, texts: list[str], langs: list[str]) -> list[str]:
    from app.generation import generate_chat
    model, tok = _bundled()
    chats = [[{"role": "user", "content": template.get(lang, template["en"]).format(t)}] for t, lang in zip(texts, langs)]
    return [a or t for a, t in zip(generate_chat(model, tok, chats, max_new_tokens=96), texts)]


def model_back_translate(texts: list[str], langs: list[str]) -> list[str]:
    """The default back-translation: the bundled model translates EN<->ZH and back (greedy)."""
    there = _ask(TRANSLATE, texts, langs)
    return _ask(BACK, there, langs)


def model_paraphrase(texts: list[str], langs: list[str]) -> list[str]:
    """The default paraphrase: the bundled model asked to say the text in other words (greedy)."""
    return _ask(PARAPHRASE, texts, langs)
