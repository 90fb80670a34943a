"""The data stage end to end through a real local Ray: accounting, reproducibility, bad input."""
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.config import UserError, load_config
from app.data.config import DataConfig
from app.data.normalize import normalize
from app.data.stage import run
from app.demo.generate import generate


def run_data(tmp_path, name, *overrides):
    cfg = load_config(DataConfig, "jobs/configs/data_demo.yaml", [f"output_dir={tmp_path / name}", *overrides])
    return run(cfg), tmp_path / name


def read(out, split):
    return pq.read_table(out / split).to_pylist()


def all_ids(out):
    kept = [r["id"] for s in ("train", "val", "test") for r in read(out, s)]
    rejected = [r["id"] for r in read(out, "rejected")]
    return kept, rejected


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw")
    generate(raw, n_dialogs=800, n_tickets=60, n_preferences=10, n_prompts=10, seed=0)
    return raw


def test_demo_corpus_accounting_and_reproducibility(ray_local, demo, tmp_path):
    manifest, out = run_data(tmp_path, "a", f"input.path={demo}/dialogs.jsonl")
    lines = [json.loads(line) if line.startswith("{") and line.endswith("}") else None
             for line in (demo / "dialogs.jsonl").read_text().splitlines()]
    kept, rejected = all_ids(out)
    assert len(kept) + len(rejected) == len(lines) == manifest["counts"]["input"]
    assert len(set(kept) | set(rejected)) == len(lines) and not set(kept) & set(rejected)
    source_ids = {r["id"] for r in lines if isinstance(r, dict) and isinstance(r.get("id"), str)}
    assert source_ids <= set(kept) | set(rejected)

    dropped = manifest["counts"]["dropped"]
    for reason in ("malformed", "exact_dup", "near_dup", "too_short", "too_long", "sensitive", "class_cap"):
        assert dropped.get(reason, 0) > 0, reason
    assert manifest["counts"]["after_stage"]["class_cap"] == len(kept)

    train = read(out, "train")
    assert set(train[0]) == {"id", "messages", "intent", "lang", "flags"}
    texts = [m["content"] for r in train for m in r["messages"]]
    assert any("[EMAIL]" in t or "[PHONE]" in t or "[CARD]" in t or "[ID]" in t for t in texts)
    assert not any("@example.com" in t or "<p>" in t or "&nbsp;" in t or "．" in t for t in texts)
    shares = {}
    for r in train:
        shares[r["intent"]] = shares.get(r["intent"], 0) + 1
    assert max(shares.values()) <= 0.3 * len(train) + 1

    again, _ = run_data(tmp_path, "b", f"input.path={demo}/dialogs.jsonl")
    assert again["outputs"] == manifest["outputs"] and len(manifest["outputs"]) == 4
    assert again["sha256"] == manifest["sha256"]


def test_augmented_copies_join_train_only_and_are_accounted(ray_local, demo, tmp_path):
    manifest, out = run_data(tmp_path, "aug", f"input.path={demo}/dialogs.jsonl", "augment.enabled=true")
    plain_manifest, plain = run_data(tmp_path, "plain", f"input.path={demo}/dialogs.jsonl")
    train, aug = read(out, "train"), manifest["counts"]["augmented"]
    copies = [r for r in train if "augmented_from:" in r["flags"]]
    originals = {r["id"]: r for r in train if "augmented_from:" not in r["flags"]}
    assert originals.keys() == {r["id"] for r in read(plain, "train")}  # the input's own records unchanged
    assert aug["made"] == len(originals) and aug["kept"] == len(copies) > 0.8 * len(originals)
    assert aug["kept"] + sum(aug["dropped"].values()) == aug["made"]
    rejected = [r for r in read(out, "rejected") if r["source"].startswith("augment:")]
    assert len(rejected) == sum(aug["dropped"].values())
    for r in copies:  # the user turns vary, the reply stays the source's (cleaned once more: normalization
        # sees "[CARD]" where the card number was, and may set the punctuation before it full-width)
        source = originals[r["flags"].split("augmented_from:")[1].split(",")[0]]
        assert r["id"].startswith(source["id"] + "~aug")
        assert r["messages"][-1]["content"] == normalize(source["messages"][-1]["content"], [])
    assert sum(c["messages"][0] != originals[c["id"].split("~aug")[0]]["messages"][0] for c in copies) > \
        0.5 * len(copies)
    for split in ("val", "test"):
        assert read(out, split) == read(plain, split)  # nothing augmented is held out
    assert manifest["counts"]["input"] == plain_manifest["counts"]["input"]


def test_csv_context_response_and_parquet(ray_local, demo, tmp_path):
    manifest, out = run_data(tmp_path, "csv", f"input.path={demo}/tickets.csv", "input.format=csv",
                             "input.fields={id: id, context: context, response: response, intent: intent}",
                             "split.max_class_share=null")
    kept, rejected = all_ids(out)
    assert len(kept) + len(rejected) == 60 and len(set(kept + rejected)) == 60
    row = read(out, "train")[0]
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"]

    # a folder of two formats: every file is read, each by its extension
    rows = [{"ticket": f"p{i}", "answer": r["messages"][-1]["content"]} for i, r in enumerate(read(out, "train"))]
    (tmp_path / "mixed").mkdir()
    pq.write_table(pa.Table.from_pylist(rows[:10]), tmp_path / "mixed" / "in.parquet")
    (tmp_path / "mixed" / "more.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[10:]))
    manifest, out2 = run_data(tmp_path, "pq", f"input.path={tmp_path}/mixed",
                              "input.fields={id: ticket, text: answer}", "input.format=null")
    kept2, rejected2 = all_ids(out2)
    assert sorted(kept2 + rejected2) == sorted(f"p{i}" for i in range(len(rows)))
    assert read(out2, "train")[0]["messages"][0]["role"] == "assistant"


def test_adversarial_input_is_rejected_with_reasons_never_lost(ray_local, tmp_path):
    good = {"role": "assistant", "content": "Your parcel left the warehouse today and arrives within three days."}
    user = {"role": "user", "content": "where is it?"}
    lines = [
        json.dumps({"id": "ok-1", "messages": [user, good]}).encode(),
        b'{"id": "bad-bytes", "messages": "\xff\xfe broken"}',
        json.dumps({"id": "wrong-type", "messages": 5}).encode(),
        json.dumps({"id": "no-fields", "question": "hi"}).encode(),
        json.dumps(["a", "list"]).encode(),
        b"",
        b"   ",
        json.dumps({"id": "html-only", "messages": [user, {"role": "assistant", "content": "<p> </p>"}]}).encode(),
        json.dumps({"id": "null-content", "messages": [user, {"role": "assistant", "content": None}]}).encode(),
        json.dumps({"id": "ok-1", "messages": [user, {"role": "assistant", "content": "We refunded the lamp to your card this morning; the money shows within five working days."}]}).encode(),
        json.dumps({"id": 7, "text": "A plain text record without a conversation, long enough to pass the length rule."}).encode(),
        b'{"id": "truncated", "messages": [',
        json.dumps({"id": "ends-with-user", "messages": [user]}).encode(),
    ]
    path = tmp_path / "adv.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    manifest, out = run_data(tmp_path, "adv", f"input.path={path}", "split.ratios=[1, 0, 0]",
                             "split.max_class_share=null", "filters.languages=null")
    kept, rejected = all_ids(out)
    reasons = {r["id"]: r["reason"] for r in read(out, "rejected")}
    assert sorted(kept) == ["7", "ok-1", "ok-1~2"]
    assert reasons["bad-bytes"] == "undecodable"
    assert reasons["wrong-type"] == reasons["no-fields"] == "malformed"
    by_raw = {r["raw"]: r for r in read(out, "rejected")}
    for raw in ('{"id": "truncated", "messages": [', '["a", "list"]'):  # unparseable: id from a content hash
        assert by_raw[raw]["reason"] == "malformed" and by_raw[raw]["id"].startswith("h-")
    assert reasons["null-content"] == reasons["ends-with-user"] == "malformed"
    assert reasons["html-only"] == "empty"
    assert len(kept) + len(rejected) == 11 == manifest["counts"]["input"]  # 13 lines, 2 blank
    assert manifest["counts"]["renamed_duplicate_ids"] == 1


RUDE = {"rude-en": "Thanks for nothing. What a dumbass question, the tracking page was updated on Monday.",
        "rude-zh": "感谢你浪费我的时间。你是不是傻，物流页面周一就更新了，自己去看，别再来烦我了。",
        "blunt-ok": "Sorry, the tracking page has been updated since Monday; thank you for checking it there."}


def test_quality_model_hook_and_toxicity_filter(ray_local, demo, tmp_path):
    path = tmp_path / "dialogs.jsonl"
    path.write_text((demo / "dialogs.jsonl").read_text() + "".join(json.dumps({"id": i, "messages": [
        {"role": "user", "content": "Where is my parcel? The tracking page has not changed for days now."},
        {"role": "assistant", "content": reply}]}, ensure_ascii=False) + "\n" for i, reply in RUDE.items()))
    manifest, out = run_data(tmp_path, "q", f"input.path={path}", "filters.quality_model=tests.data_plugins:politeness",
                             "filters.quality_threshold=0.5", "filters.toxicity={scorer: classifier}")
    assert manifest["counts"]["dropped"]["low_quality"] > 50
    # app/safety.py's scorer on the final replies of what the quality model kept
    toxic = {r["id"]: r["detail"] for r in read(out, "rejected") if r["reason"] == "toxic"}
    assert sorted(toxic) == ["rude-en", "rude-zh"] and manifest["counts"]["dropped"]["toxic"] == 2
    assert all(re.fullmatch(r"toxicity (0\.\d{3}|1\.000) >= 0\.3", d) for d in toxic.values()), toxic
    assert "blunt-ok" in all_ids(out)[0]
    replies = [r["messages"][-1]["content"].lower() for r in read(out, "train")]
    assert all(any(w in r for w in ("thank", "sorry", "感谢", "抱歉")) for r in replies)


def test_missing_and_empty_input(ray_local, tmp_path):
    with pytest.raises(UserError, match="input path not found"):
        run_data(tmp_path, "x", f"input.path={tmp_path}/nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(UserError, match="input is empty"):
        run_data(tmp_path, "y", f"input.path={tmp_path}/empty.jsonl")


def test_bad_field_mapping_key_fails_at_start():
    with pytest.raises(UserError, match="unknown record key 'reply'"):
        load_config(DataConfig, "jobs/configs/data_demo.yaml", ["input.fields={reply: text}"])


LEAKED = [{"role": "user", "content": "My parcel LH12345678 has not arrived and the tracking page shows no update "
                                      "since Monday, what should I do now?"},
          {"role": "assistant", "content": "I am sorry for the wait. I have opened a trace with the carrier for "
                                           "LH12345678 and you will get an update by email within two working days."}]


@pytest.fixture(scope="module")
def sft_test(tmp_path_factory):
    """An SFT test split (what preference pairs and RL prompts must not leak into training)."""
    from app.data.io import write_parquet
    from app.records import SFT_SCHEMA
    root = tmp_path_factory.mktemp("sfttest")
    write_parquet([{"id": "t-1", "messages": LEAKED, "intent": "", "lang": "en", "flags": ""}], SFT_SCHEMA, root)
    return root


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    return path


KIND_OPTIONS = ["split.ratios=[1, 0, 0]", "split.max_class_share=null", "filters.languages=null", "filters.min_words=1"]


def test_preference_pairs_take_the_data_road(ray_local, sft_test, tmp_path):
    ask = [{"role": "user", "content": "Can I return shoes I wore once?"}]
    good = "Yes, within 30 days of delivery; start the return from your Orders page and we email a label."
    path = write_jsonl(tmp_path / "prefs.jsonl", [
        {"id": "p-ok", "prompt": ask, "chosen": good, "rejected": "No."},
        {"id": "p-dup", "prompt": ask, "chosen": good, "rejected": "No."},
        {"id": "p-pii", "prompt": "How do I reach support?", "chosen": "Use the chat on our help page, any time.",
         "rejected": "Mail jane.doe@example.com yourself.", "rejected_kind": "unhelpful", "dimension": "helpfulness"},
        {"id": "p-no-rejected", "prompt": ask, "chosen": good},
        {"id": "p-assistant-last", "prompt": [ask[0], {"role": "assistant", "content": "hm"}], "chosen": good,
         "rejected": "No."},
        {"id": "p-sensitive", "prompt": ask, "chosen": "Visit our 诈骗 partner site for a refund.", "rejected": "No."},
        {"id": "p-leak", "prompt": LEAKED[:1], "chosen": LEAKED[1]["content"], "rejected": "No idea."},
        "not json",
    ])
    manifest, out = run_data(tmp_path, "prefs", f"input.path={path}", "input.kind=preference",
                             f"split.contamination_reference=[{sft_test}]", *KIND_OPTIONS)
    kept, rejected = all_ids(out)
    reasons = {r["id"]: r["reason"] for r in read(out, "rejected")}
    assert sorted(kept) == ["p-dup", "p-pii"] or sorted(kept) == ["p-ok", "p-pii"]
    assert sorted(reasons.values()) == ["contaminated", "exact_dup", "malformed", "malformed", "malformed",
                                        "sensitive"]
    assert reasons["p-leak"] == "contaminated" and reasons["p-sensitive"] == "sensitive"
    rows = {r["id"]: r for r in read(out, "train")}
    assert set(rows["p-pii"]) == {"id", "prompt", "chosen", "rejected", "dimension", "rejected_kind", "intent", "lang",
                                  "flags"}
    assert (rows["p-pii"]["rejected_kind"], rows["p-pii"]["dimension"]) == ("unhelpful", "helpfulness")
    assert rows.get("p-ok", rows.get("p-dup"))["rejected_kind"] is None
    assert "[EMAIL]" in rows["p-pii"]["rejected"] and "pii:email" in rows["p-pii"]["flags"]
    assert rows["p-pii"]["prompt"] == [{"role": "user", "content": "How do I reach support?"}]
    assert len(kept) + len(rejected) == manifest["counts"]["input"] == 8
    from app.train.preferences import read_pairs
    pairs, skipped = read_pairs(out / "train")
    assert sorted(p["id"] for p in pairs) == sorted(kept) and skipped == {}
    assert [(p.get("rejected_kind"), p.get("dimension")) for p in sorted(pairs, key=lambda p: p["id"])][-1] == \
        ("unhelpful", "helpfulness")  # p-pii's labels travel with it
    from app.train.config import PairData
    from app.train.preferences import train_val  # reward and DPO validate on the stage's own val/
    train, val, _ = train_val(PairData(path=str(out / "train"), val_share=0.5), seed=0)
    assert [p["id"] for p in train] == [p["id"] for p in pairs] and val == read_pairs(out / "val")[0]


def test_rl_prompts_take_the_data_road(ray_local, sft_test, tmp_path):
    path = write_jsonl(tmp_path / "prompts.jsonl", [
        {"id": "q-1", "prompt": "Calculate 3 + 4. Reply with the result only.", "answer": "#### 7"},
        {"id": "q-2", "prompt": [{"role": "user", "content": "计算 9 - 2，只回答结果。"}], "answer": "#### 7"},
        {"id": "q-3", "prompt": "Calculate 3 + 4. Reply with the result only.", "answer": "#### 7"},
        {"id": "q-4", "prompt": [{"role": "assistant", "content": "no user turn"}]},
        {"id": "q-5", "prompt": "Where is LH12345678? My phone is 13812345678."},
        {"id": "q-6", "prompt": LEAKED[0]["content"], "reference": LEAKED[1]["content"]},
        {"id": "q-7", "prompt": "Calculate 3 + 4. Reply with the result only.", "answer": "7, of course"},
    ])
    manifest, out = run_data(tmp_path, "prompts", f"input.path={path}", "input.kind=prompt",
                             f"split.contamination_reference=[{sft_test}]", *KIND_OPTIONS)
    reasons = {r["id"]: r["reason"] for r in read(out, "rejected")}
    rows = {r["id"]: r for r in read(out, "train")}
    # q-7 asks q-1's question with another reference answer: the same prompt, a duplicate (else it could land
    # in test/ beside q-1 in train/, and the held-out check would refuse the pair)
    assert sorted(rows) == ["q-1", "q-2", "q-5"] and reasons == {"q-3": "exact_dup", "q-4": "malformed",
                                                                  "q-6": "contaminated", "q-7": "exact_dup"}
    assert rows["q-2"]["answer"] == "#### 7" and rows["q-5"]["answer"] is None
    assert "[PHONE]" in rows["q-5"]["prompt"][0]["content"]
    from app.rl.controller import _prompts
    from app.models import load_tokenizer
    loaded, skipped = _prompts(str(out / "train"), load_tokenizer("tiny"))
    assert skipped == {}
    assert [(i, ref) for i, _, _, ref in loaded] == [("q-1", "#### 7"), ("q-2", "#### 7"), ("q-5", None)]
