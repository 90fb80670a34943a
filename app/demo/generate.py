"""Seeded generator of the demo corpus: a fictional shop's customer-service export, in English and Chinese,
with the dirt a real export has. Thousands of records in about a second; the same seed gives the same bytes.

    python -m jobs.demo_data                     # writes data/demo/raw/*

Files:
  dialogs.jsonl      {id, messages, intent, lang, source}: 1-3 turns; skewed intents; dirt planted:
                     exact and near duplicates, HTML, full/half-width mixes, PII, sensitive words,
                     too short/too long answers, malformed lines
  tickets.csv        id, context, response, intent, lang: the seed's context+response format
  preferences.jsonl  {id, prompt, chosen, rejected, rejected_kind, dimension, intent, lang}: the shop's answer
                     vs a worse one: a wrong fact (honesty), off topic or a polite non-answer (helpfulness),
                     rude or unsafe (safety)
  prompts.jsonl      {id, prompt, reference, intent, lang}: prompt-only records for RL
  arithmetic.jsonl   {id, prompt, answer}: single-digit sums and differences, the GRPO demo's task
  documents.jsonl    {id, text, kind, lang}: the shop's own pages (product details, policies, FAQ) as raw
                     text, for continued pretraining
  kb/*.md            the knowledge base: one page per catalogue item, facts only it holds (app/demo/kb.py)
  kb_questions.jsonl {id, lang, question, answer, doc}: answerable from exactly one kb page (RAG)
"""
from __future__ import annotations

import csv
import json
import random
import shutil
from collections import Counter
from pathlib import Path

from app.demo.kb import knowledge_base

from app.demo.phrases import (BAD_ANSWERS, CARRIERS, CITIES, CLOSERS, COLOURS, DOC_SENTENCES, DOC_TITLES, GREETING,
                              MATERIALS, NON_ANSWERS, OPENERS, PRODUCTS, SENSITIVE, TOPICS)

INTENT_WEIGHTS = {"order_status": 34, "refund": 20, "shipping": 14, "product_info": 12, "account": 8,
                  "complaint": 7, "invoice": 5, "identity": 3}
LANG_WEIGHTS = {"en": 55, "zh": 45}
# Share of dialogs that get each kind of dirt (at most one kind each); the rest stay clean.
DIRT = {"exact_dup": 0.04, "near_dup": 0.05, "html": 0.05, "width_mix": 0.08, "pii": 0.06, "sensitive": 0.02,
        "too_short": 0.02, "too_long": 0.01}
MALFORMED = ['{"id": "cs-broken-1", "messages": [{"role": "user", "content": "where is my',
             'this line is not JSON at all', '{}', '{"id": "cs-broken-2", "messages": "just a string"}',
             '{"id": "cs-broken-3", "messages": [{"role": "user"}], "intent": "refund"}',
             '{"id": "cs-broken-4", "messages": [{"role": "robot", "content": "beep"}]}']
FULL_WIDTH = str.maketrans({",": "，", ".": "．", "!": "！", "?": "？", ":": "：", "0": "０", "1": "１", "2": "２",
                            "5": "５"})
HALF_WIDTH = str.maketrans({"，": ",", "。": ".", "？": "?", "！": "!", "：": ":"})


def cn_id(rng: random.Random) -> str:
    """A Chinese resident ID number with a valid ISO 7064 MOD 11-2 check character."""
    body = f"{rng.choice(['110101', '310104', '440305', '510107'])}{rng.randint(1960, 2004)}" \
           f"{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}{rng.randint(0, 999):03d}"
    weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
    return body + "10X98765432"[sum(int(d) * w for d, w in zip(body, weights)) % 11]


def card_number(rng: random.Random) -> str:
    """A 16-digit card number that passes the Luhn check."""
    digits = [4] + [rng.randint(0, 9) for _ in range(14)]
    total = sum(d if i % 2 else (d * 2 - 9 if d * 2 > 9 else d * 2) for i, d in enumerate(digits))
    return "".join(map(str, digits + [(10 - total % 10) % 10]))


def pii_value(rng: random.Random, lang: str) -> str:
    kind = rng.choice(["email", "phone", "id", "card", "ip"])
    if kind == "email":
        return f"{rng.choice(['amy.chen', 'wang.lei', 'j.smith', 'li_na88'])}@{rng.choice(['example.com', 'qq.com'])}"
    if kind == "phone":
        cn = f"1{rng.choice('3589')}{rng.randint(0, 9)}{rng.randint(10 ** 7, 10 ** 8 - 1)}"
        return rng.choice([cn, f"+86 {cn[:3]}-{cn[3:7]}-{cn[7:]}", f"+1 415 555 {rng.randint(1000, 9999)}",
                           f"+44 20 7946 {rng.randint(1000, 9999)}"])
    if kind == "id":
        return cn_id(rng)
    if kind == "card":
        c = card_number(rng)
        return rng.choice([c, " ".join(c[i:i + 4] for i in range(0, 16, 4))])
    return f"{rng.randint(11, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def slots(rng: random.Random, lang: str) -> dict:
    """One draw of every slot, shared by a dialog's question and answer."""
    return dict(order=f"LH{rng.randint(10 ** 7, 10 ** 8 - 1)}", product=rng.choice(PRODUCTS[lang]),
                date=f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}", days=rng.randint(2, 7),
                amount=f"${rng.randint(12, 240)}" if lang == "en" else f"{rng.randint(39, 1299)}元",
                carrier=rng.choice(CARRIERS[lang]), card=card_number(rng), cn_id=cn_id(rng))


def dialog(rng: random.Random, intent: str, lang: str) -> list[dict]:
    """1-3 turns ending with the shop's answer; a greeting exchange first in 30% of dialogs."""
    return _dialog(rng, intent, lang)[0]


def _dialog(rng: random.Random, intent: str, lang: str) -> tuple[list[dict], dict]:
    """dialog's messages and how its answer was made (the topic's answers, the slots, opener and closer)."""
    questions, answers = rng.choice(TOPICS[intent][lang])
    s = slots(rng, lang)
    made = {"answers": answers, "slots": s, "opener": rng.choice(OPENERS[lang])}
    made["answer"] = rng.choice(answers).format(**s)
    made["closer"] = rng.choice(CLOSERS[lang])
    messages = [{"role": "user", "content": rng.choice(questions).format(**s)},
                {"role": "assistant", "content": made["opener"] + made["answer"] + made["closer"]}]
    if rng.random() < 0.3:
        messages = [{"role": "user", "content": GREETING[lang][0]},
                    {"role": "assistant", "content": GREETING[lang][1]}] + messages
    return messages, made


def dirty(rng: random.Random, kind: str, rec: dict, earlier: list[dict]) -> dict:
    """Plant one kind of dirt in a record (a copy); duplicates copy an earlier clean record."""
    if kind in ("exact_dup", "near_dup") and earlier:
        src = rng.choice(earlier)
        rec = {**rec, "messages": [dict(m) for m in src["messages"]], "intent": src["intent"], "lang": src["lang"]}
    msgs = rec["messages"] = [dict(m) for m in rec["messages"]]
    last, lang = msgs[-1], rec["lang"]
    if kind == "near_dup":  # an emoticon, a changed mark or case: not byte-identical, same words
        text = last["content"].rstrip()
        last["content"] = rng.choice([text + " :)", text + "~", text + " 😊", text[:-1] + "!!", text.lower()])
    elif kind == "html":
        body = last["content"].replace(". ", ".<br/>").replace("。", "。<br>")
        last["content"] = f"<div class=\"reply\"><p>{body}</p>&nbsp;&amp; more</div>"
    elif kind == "width_mix":
        last["content"] = last["content"].translate(FULL_WIDTH if lang == "en" else HALF_WIDTH)
    elif kind == "pii":
        target = msgs[-2] if rng.random() < 0.5 else last
        sep = " My contact: " if lang == "en" else "，联系方式："
        target["content"] += sep + pii_value(rng, lang)
    elif kind == "sensitive":
        last["content"] += (" Honestly " if lang == "en" else "说实话") + rng.choice(SENSITIVE[lang])
    elif kind == "too_short":
        last["content"] = rng.choice(["ok", "Yes.", "好的", "嗯"])
    elif kind == "too_long":
        last["content"] = " ".join([last["content"]] * (12 if lang == "en" else 8))
    return rec


def pick(rng: random.Random, weights: dict) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def dialogs(rng: random.Random, n: int) -> tuple[list[str], Counter]:
    lines, clean, planted = [], [], Counter()
    for i in range(n):
        intent, lang = pick(rng, INTENT_WEIGHTS), pick(rng, LANG_WEIGHTS)
        rec = {"id": f"cs-{i:05d}", "messages": dialog(rng, intent, lang), "intent": intent, "lang": lang,
               "source": "shop-export"}
        r, kind = rng.random(), "clean"
        for name, share in DIRT.items():
            if r < share:
                kind = name
                break
            r -= share
        if kind == "clean":
            clean.append(rec)
        else:
            rec = dirty(rng, kind, rec, clean)
        planted[kind] += 1
        lines.append(json.dumps(rec, ensure_ascii=False))
    for bad in MALFORMED:
        lines.insert(rng.randrange(len(lines)), bad)
    planted["malformed"] = len(MALFORMED)
    return lines, planted


def tickets(rng: random.Random, n: int) -> list[list[str]]:
    rows = [["id", "context", "response", "intent", "lang"]]
    for i in range(n):
        intent, lang = pick(rng, INTENT_WEIGHTS), pick(rng, LANG_WEIGHTS)
        q, a = dialog(rng, intent, lang)[-2:]
        rows.append([f"tk-{i:05d}", q["content"], a["content"], intent, lang])
    return rows


REJECTED_KINDS = {"wrong_fact": 0.3, "off_topic": 0.25, "unhelpful": 0.25, "rude_or_unsafe": 0.2}
# the seeds' three reward dimensions (seed 000 §3.3): which one a pair of each kind teaches
DIMENSION = {"wrong_fact": "honesty", "off_topic": "helpfulness", "unhelpful": "helpfulness",
             "rude_or_unsafe": "safety"}


def rejected_answer(kind: str, rng: random.Random, intent: str, lang: str, question: str, made: dict) -> str:
    """A worse answer of `kind` to a question whose good answer is `made` (_dialog). wrong_fact: the same
    topic's answer about another order or product than the question names (or with other dates, amounts and
    delays where it names none); off_topic: a polite answer to another intent's question; unhelpful: the
    opener and closer around a polite non-answer; rude_or_unsafe: BAD_ANSWERS (rude, or leaking a customer's
    card or ID number)."""
    other = slots(rng, lang)
    if kind == "wrong_fact":
        named = [k for k in ("order", "product") if made["slots"][k] in question]
        wrong = {**made["slots"], **{k: other[k] for k in named or ("date", "days", "amount")}}
        answer = rng.choice(made["answers"]).format(**wrong)
    elif kind == "off_topic":
        elsewhere = sorted(set(TOPICS) - {intent, "identity"})
        answer = rng.choice(rng.choice(TOPICS[rng.choice(elsewhere)][lang])[1]).format(**made["slots"])
    elif kind == "unhelpful":
        answer = rng.choice(NON_ANSWERS[lang])
    else:
        return rng.choice(BAD_ANSWERS[lang]).format(**other)
    return made["opener"] + answer + made["closer"]


def pairs_and_prompts(rng: random.Random, n_pairs: int, n_prompts: int) -> tuple[list[str], list[str]]:
    """Preference pairs (the shop's answer chosen over a worse one of a REJECTED_KINDS kind, drawn from a
    per-pair generator so that `rng` draws what it always drew) and RL prompts."""
    pairs, prompts = [], []
    for i in range(n_pairs + n_prompts):
        intent, lang = pick(rng, INTENT_WEIGHTS), pick(rng, LANG_WEIGHTS)
        messages, made = _dialog(rng, intent, lang)
        *history, good = messages
        if i < n_pairs:
            bad = rng.choice(BAD_ANSWERS[lang]).format(**slots(rng, lang))
            own = random.Random(f"{i}:{good['content']}")
            kind = pick(own, REJECTED_KINDS)
            if kind != "rude_or_unsafe":
                bad = rejected_answer(kind, own, intent, lang, history[-1]["content"], made)
            if bad == good["content"]:  # a rephrasing can coincide with the good answer: then the classic kind
                kind, bad = "rude_or_unsafe", own.choice(BAD_ANSWERS[lang]).format(**slots(own, lang))
            rec = {"id": f"pref-{i:05d}", "prompt": history, "chosen": good["content"], "rejected": bad,
                   "rejected_kind": kind, "dimension": DIMENSION[kind]}
            pairs.append(json.dumps({**rec, "intent": intent, "lang": lang}, ensure_ascii=False))
        else:
            rec = {"id": f"rl-{i - n_pairs:05d}", "prompt": history, "reference": good["content"]}
            prompts.append(json.dumps({**rec, "intent": intent, "lang": lang}, ensure_ascii=False))
    return pairs, prompts


def arithmetic(rng: random.Random, n: int) -> list[str]:
    """Single-digit sums and differences ({id, prompt, answer '#### n'}), English and Chinese: the GRPO
    demo's verifiable task, easy enough that SmolLM2-135M is right about a third of the time."""
    out = []
    for i in range(n):
        a, b, op = rng.randint(1, 9), rng.randint(1, 9), rng.choice("+-")
        a, b = (a, b) if op == "+" or a >= b else (b, a)
        value = a + b if op == "+" else a - b
        prompt = rng.choice([f"Calculate {a} {op} {b}. Reply with the result only.", f"计算 {a} {op} {b}，只回答结果。"])
        out.append(json.dumps({"id": f"math-{i:05d}", "prompt": prompt, "answer": f"{a} {op} {b} = {value}\n"
                               f"#### {value}"}, ensure_ascii=False))
    return out


def documents(rng: random.Random, n: int) -> list[str]:
    """Product pages, policy pages and FAQ pages of the shop in EN and ZH: a title and 4-7 sentences drawn
    from the page kind's bank, slots filled per page."""
    out = []
    for i in range(n):
        lang, kind = pick(rng, LANG_WEIGHTS), rng.choice(["product", "product", "policy", "faq"])
        s = {**slots(rng, lang), "material": rng.choice(MATERIALS[lang]), "colour": rng.choice(COLOURS[lang]),
             "size": f"{rng.randint(20, 180)} x {rng.randint(10, 90)}", "weight": round(rng.uniform(0.3, 25), 1),
             "city": rng.choice(CITIES[lang]), "years": rng.choice([1, 2, 3, 5]), "other": rng.choice(PRODUCTS[lang]),
             "days_return": rng.choice([14, 30, 60]), "threshold": rng.choice([50, 99, 199])}
        if kind == "faq":
            faq = sorted(set(TOPICS) - {"identity"})  # the shop's questions; who answers is not a page
            topics = [rng.choice(TOPICS[intent][lang]) for intent in rng.sample(faq, 3)]
            q, a = ("Q: ", "A: ") if lang == "en" else ("问：", "答：")
            body = [f"{q}{rng.choice(qs).format(**s)}\n{a}{rng.choice(ans).format(**s)}" for qs, ans in topics]
        else:
            bank = DOC_SENTENCES[kind][lang]
            body = [" ".join(t.format(**s) for t in rng.sample(bank, rng.randint(4, 7)))]
        text = "\n\n".join([DOC_TITLES[kind][lang].format(**s)] + body)
        out.append(json.dumps({"id": f"doc-{i:05d}", "text": text.replace(" ", "") if lang == "zh" and kind != "faq"
                               else text, "kind": kind, "lang": lang}, ensure_ascii=False))
    return out


def generate(out_dir: str | Path, n_dialogs: int = 4000, n_tickets: int = 1000, n_preferences: int = 1500,
             n_prompts: int = 500, seed: int = 0, n_arithmetic: int = 300, n_documents: int = 800,
             n_kb: int = 60) -> dict:
    """Write the files under out_dir (and the knowledge base's pages under kb/); return counts (what was
    planted, per kind)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lines, planted = dialogs(rng, n_dialogs)
    (out / "dialogs.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with open(out / "tickets.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(tickets(rng, n_tickets))
    pairs, prompts = pairs_and_prompts(rng, n_preferences, n_prompts)
    (out / "preferences.jsonl").write_text("\n".join(pairs) + "\n", encoding="utf-8")
    (out / "prompts.jsonl").write_text("\n".join(prompts) + "\n", encoding="utf-8")
    (out / "arithmetic.jsonl").write_text("\n".join(arithmetic(random.Random(seed + 1), n_arithmetic)) + "\n",
                                          encoding="utf-8")
    (out / "documents.jsonl").write_text("\n".join(documents(random.Random(seed + 2), n_documents)) + "\n",
                                         encoding="utf-8")
    pages, questions = knowledge_base(random.Random(seed + 3), n_kb)
    shutil.rmtree(out / "kb", ignore_errors=True)
    (out / "kb").mkdir()
    for page in pages:
        (out / "kb" / f"{page['id']}.md").write_text(page["text"], encoding="utf-8")
    (out / "kb_questions.jsonl").write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in questions),
                                            encoding="utf-8")
    return {"dialogs": dict(planted), "tickets": n_tickets, "preferences": n_preferences, "prompts": n_prompts,
            "arithmetic": n_arithmetic, "documents": n_documents, "kb_pages": n_kb}
