"""The shop's knowledge base for retrieval-augmented answers: one Markdown page per catalogue item, each
with facts only that page holds (an item code such as LM-1042, its warranty, weight and price), EN and ZH,
and questions whose answer is on exactly one page. Retrieval is measured on them (recall@k: is the page in
the top k) and so is answering with and without it (the fact's number in the answer).

    from app.demo.kb import knowledge_base
    pages, questions = knowledge_base(random.Random(3), n_items=60)
"""
from __future__ import annotations

import random

from app.demo.phrases import COLOURS, MATERIALS, PRODUCTS

PAGE = {
    "en": ("# {name} ({code})\n\nItem {code} is our {colour} {name} made of {material}. It weighs {weight} kg and "
           "costs {price} yuan. Every {code} comes with a {years}-year warranty covering materials and "
           "workmanship. Orders placed before 3 pm ship the same day.\n"),
    "zh": ("# {name}（{code}）\n\n商品{code}是我们的{colour}{name}，采用{material}制作。重量{weight}公斤，售价{price}元。"
           "每件{code}享受{years}年质保，材料和做工问题均可免费维修。下午3点前下单当天发货。\n"),
}
QUESTIONS = {
    "en": [("How many years of warranty does item {code} have?", "years"),
           ("How much does item {code} weigh, in kg?", "weight"), ("What is the price of item {code} in yuan?", "price")],
    "zh": [("商品{code}的质保是几年？", "years"), ("商品{code}重多少公斤？", "weight"), ("商品{code}的售价是多少元？", "price")],
}


def knowledge_base(rng: random.Random, n_items: int = 60) -> tuple[list[dict], list[dict]]:
    """(pages {id, lang, text}, questions {id, lang, question, answer, doc}); one question per page."""
    pages, questions = [], []
    codes = rng.sample(range(1000, 10000), n_items)
    for i, number in enumerate(codes):
        lang = "zh" if i % 3 == 2 else "en"
        facts = {"code": f"LM-{number}", "name": rng.choice(PRODUCTS[lang]), "colour": rng.choice(COLOURS[lang]),
                 "material": rng.choice(MATERIALS[lang]), "weight": round(rng.uniform(0.5, 25), 1),
                 "price": rng.randrange(59, 2999, 10), "years": rng.choice([1, 2, 3, 5, 7])}
        doc = f"kb-{i:03d}"
        pages.append({"id": doc, "lang": lang, "text": PAGE[lang].format(**facts)})
        question, key = rng.choice(QUESTIONS[lang])
        questions.append({"id": f"q-{i:03d}", "lang": lang, "question": question.format(**facts),
                          "answer": str(facts[key]), "doc": doc})
    return pages, questions
