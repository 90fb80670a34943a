import csv
import json
import random
import re
from collections import Counter

from app.demo.generate import card_number, cn_id, generate
from app.demo.phrases import NON_ANSWERS


def read_jsonl(path):
    good, bad = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        good.append(rec)
    return good, bad


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a, b, c = (generate(tmp_path / n, n_dialogs=500, n_tickets=50, n_preferences=50, n_prompts=20, seed=s)
               for n, s in (("a", 0), ("b", 0), ("c", 1)))
    assert a == b
    for name in ("dialogs.jsonl", "tickets.csv", "preferences.jsonl", "prompts.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "dialogs.jsonl").read_bytes() != (tmp_path / "c" / "dialogs.jsonl").read_bytes()


def test_corpus_has_languages_skew_and_dirt(tmp_path):
    counts = generate(tmp_path, seed=0)
    recs, bad_json = read_jsonl(tmp_path / "dialogs.jsonl")
    assert bad_json >= 2 and counts["dialogs"]["malformed"] == 6
    ok = [r for r in recs if isinstance(r.get("messages"), list) and r.get("lang")]
    assert len(ok) >= 3900
    langs = Counter(r["lang"] for r in ok)
    assert langs["en"] > 1500 and langs["zh"] > 1500
    intents = Counter(r["intent"] for r in ok).most_common()
    assert intents[0][0] == "order_status" and intents[0][1] > 0.3 * len(ok)  # skewed, as real exports are
    assert intents[-1][1] < 0.08 * len(ok)
    answers = [r["messages"][-1]["content"] for r in ok]
    texts = Counter(json.dumps(r["messages"], ensure_ascii=False) for r in ok)
    assert sum(n - 1 for n in texts.values()) >= 100  # exact duplicates planted
    assert sum("<p>" in a for a in answers) > 100 and sum("&nbsp;" in a for a in answers) > 100
    assert sum("．" in a or "？" in a and any(ch.isascii() and ch.isalpha() for ch in a) for a in answers) > 50
    assert sum(len(a) <= 4 for a in answers) > 20  # too short
    assert sum(any(len(m["content"]) > 1000 for m in r["messages"]) for r in ok) > 10  # too long
    assert sum(any(w in a for w in ("诈骗", "赌博", "违法", "scam", "fraud", "gambling")) for a in answers) > 20
    assert any(len(r["messages"]) == 4 for r in ok)  # multi-turn


def test_tickets_preferences_prompts(tmp_path):
    generate(tmp_path, n_dialogs=100, n_tickets=200, n_preferences=300, n_prompts=50)
    rows = list(csv.DictReader(open(tmp_path / "tickets.csv", encoding="utf-8")))
    assert len(rows) == 200 and set(rows[0]) == {"id", "context", "response", "intent", "lang"}
    prefs, _ = read_jsonl(tmp_path / "preferences.jsonl")
    assert len(prefs) == 300 and all(p["chosen"] != p["rejected"] and p["prompt"][-1]["role"] == "user"
                                     for p in prefs)
    # rejected answers that are plausible but worse, each kind recorded: most keep the shop's polite frame
    kinds = Counter(p["rejected_kind"] for p in prefs)
    assert set(kinds) == {"wrong_fact", "off_topic", "unhelpful", "rude_or_unsafe"} and min(kinds.values()) > 40
    for p in prefs:
        if p["rejected_kind"] == "wrong_fact" and (order := re.search(r"LH\d{8}", p["prompt"][-1]["content"])):
            assert order.group(0) not in p["rejected"]  # about another order than the one asked about
        if p["rejected_kind"] == "unhelpful":
            assert any(text in p["rejected"] for text in NON_ANSWERS[p["lang"]])
    prompts, _ = read_jsonl(tmp_path / "prompts.jsonl")
    assert len(prompts) == 50 and all(p["reference"] for p in prompts)
    assert len({p["id"] for p in prefs} | {p["id"] for p in prompts}) == 350


def test_planted_pii_is_valid():
    rng = random.Random(3)
    for _ in range(200):
        ident = cn_id(rng)
        weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
        assert ident[-1] == "10X98765432"[sum(int(d) * w for d, w in zip(ident, weights)) % 11]
        digits = [int(d) for d in card_number(rng)][::-1]
        assert sum(d if i % 2 == 0 else (d * 2 - 9 if d * 2 > 9 else d * 2) for i, d in enumerate(digits)) % 10 == 0
