"""The data stage on Ray Data: input files -> train/ val/ test/ Parquet + rejected/ + manifest.json.

    python -m jobs.data jobs/configs/data_demo.yaml [key=value ...]
    ray job submit --working-dir . -- python -m jobs.data jobs/configs/data_demo.yaml

Ray Data streams the per-record work in parallel: reading, parsing, normalizing, PII and sensitive words,
quality filters, content hashes and MinHash signatures (app/data/clean.py, app/data/dedup.py). The driver
then makes the corpus-wide decisions on compact columns: duplicate ids, exact and near-duplicate clusters
(LSH band keys grouped with numpy, clusters by connected components), the stratified split with its class
cap; Ray Data runs the contamination check on train; outputs are sorted by id and written with fixed file
names, so the same input and config give byte-identical files.
"""
from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from app.cluster import init_ray
from app.config import UserError, load_callable
from app.data import dedup
from app.data.augment import augmented_records
from app.data.clean import Rejected, clean, content_hash, conversation_text, parse_row, record_id
from app.data.config import DataConfig
from app.data.io import PARSERS, file_format, file_hashes, input_files, write_parquet
from app.data.normalize import compile_rules
from app.pii import SensitiveWords
from app.data.report import manifest_counts, print_summary
from app.data.split import assign, ngram_hashes, over_cap, overlap
from app.records import PAIR_LABELS, REJECT_SCHEMA, SCHEMAS
from app.safety import SafetyCheck
from app.runinfo import write_manifest
from app.tracking import log_summary
import app

PROCESSED = pa.schema([("id", pa.string()), ("source", pa.string()), ("reason", pa.string()),
                       ("detail", pa.string()), ("raw", pa.string()), ("messages", pa.string()),
                       ("intent", pa.string()), ("lang", pa.string()), ("flags", pa.string()),
                       ("hash", pa.string()), ("sig", pa.binary()), ("extra", pa.string()),
                       ("labels", pa.string())])


@lru_cache(maxsize=4)
def _sensitive(path: str | None) -> SensitiveWords:
    return SensitiveWords.from_file(path)


def parse_file(row: dict, fmt: str | None) -> list[dict]:
    return PARSERS[file_format(row["path"], fmt)](row["bytes"], row["path"])


def clean_batch(batch: dict, fields: dict, rules: list, pii_action: str, words_file: str | None,
                sensitive_action: str, filters: dict, quality_model: str | None, quality_threshold: float,
                num_perm: int, word_shingle: int, char_shingle: int, min_shingle: int = 2, kind: str = "sft",
                toxicity: dict | None = None) -> pa.Table:
    """Clean a batch of raw rows; kept rows get a content hash and a MinHash signature."""
    rules = compile_rules(rules)
    words = _sensitive(words_file) if sensitive_action != "off" else None
    out = []
    for raw, source, error in zip(batch["raw"], batch["source"], batch["error"]):
        parsed, rejected = None, Rejected(*error.split(": ", 1)) if error else None
        try:
            parsed = parse_row(raw)  # once: for the id (even of an undecodable line) and for cleaning
        except Rejected as rej:
            rejected = rejected or rej
        row = {"id": record_id(parsed, raw, fields), "source": source, "raw": raw, "reason": "", "detail": "",
               "messages": "", "intent": "", "lang": "", "flags": "", "hash": "", "sig": b"", "extra": "",
               "labels": "{}"}
        try:
            if rejected:
                raise rejected
            rec = clean(parsed, fields, rules, pii_action, words, sensitive_action, filters, kind)
            row.update(messages=json.dumps(rec["messages"], ensure_ascii=False), intent=rec["intent"],
                       lang=rec["lang"], flags=rec["flags"], labels=json.dumps(rec["labels"]),
                       # a prompt is the same RL item whatever reference answer it carries
                       hash=content_hash(rec["messages"], None if kind == "prompt" else rec["extra"]),
                       extra=json.dumps(rec["extra"], ensure_ascii=False), raw="")
        except Rejected as rej:
            row.update(reason=rej.reason, detail=rej.detail)
        out.append(row)
    kept = [r for r in out if not r["reason"]]
    if quality_model and kept:
        scores = load_callable(quality_model)([json.loads(r["messages"])[-1]["content"] for r in kept])
        for r, score in zip(kept, scores):
            if score < quality_threshold:
                r.update(reason="low_quality", detail=f"score {score:.3f} < {quality_threshold}")
        kept = [r for r in kept if not r["reason"]]
    if toxicity and kind == "sft" and kept:  # the assistant's final reply, by the stage's safety scorer
        check = SafetyCheck(toxicity)
        for r, score in zip(kept, check.scores([json.loads(r["messages"])[-1]["content"] for r in kept])):
            if score >= check.section.threshold:
                r.update(reason="toxic", detail=f"toxicity {score:.3f} >= {check.section.threshold}")
        kept = [r for r in kept if not r["reason"]]
    hashes, counts = dedup.shingles([conversation_text(json.loads(r["messages"]), json.loads(r["extra"])) for r in kept],
                                    word_shingle, char_shingle, min_k=min_shingle)
    for r, sig in zip(kept, dedup.signatures(hashes, counts, *dedup.permutations(num_perm))):
        r["sig"] = sig.tobytes()
    return pa.Table.from_pylist(out, schema=PROCESSED)


def unique_ids(table: pa.Table) -> tuple[pa.Table, int]:
    """Rows sorted by (id, source); a repeated id gets ~2, ~3... in source order, so each row has its own."""
    table = table.sort_by([("id", "ascending"), ("source", "ascending")])
    ids = table.column("id").to_pylist()
    seen: Counter = Counter()
    renamed = 0
    for i, rid in enumerate(ids):
        seen[rid] += 1
        if seen[rid] > 1:
            ids[i], renamed = f"{rid}~{seen[rid]}", renamed + 1
    table = table.set_column(0, "id", pa.array(ids, pa.string()))
    return table.sort_by([("id", "ascending")]), renamed


def dedup_decisions(kept: pa.Table, cfg: DataConfig) -> tuple[dict, dict]:
    """id -> (reason, detail) for exact and near duplicates; cluster stats. `kept` is sorted by id."""
    ids, decisions, stats = kept.column("id").to_pylist(), {}, {}
    alive = np.ones(len(ids), bool)
    if cfg.dedup.exact:
        label = dedup.exact_groups(kept.column("hash").to_pylist())
        for i in np.flatnonzero(label != np.arange(len(ids))):
            decisions[ids[i]] = ("exact_dup", f"same text as {ids[label[i]]}")
        alive = label == np.arange(len(ids))
        stats["exact_clusters"] = int(len(set(label[~alive].tolist())))
    if cfg.dedup.near and alive.any():
        idx = np.flatnonzero(alive)
        sig = np.frombuffer(b"".join(kept.column("sig").take(pa.array(idx)).to_pylist()), np.uint32)
        label, edges = dedup.near_duplicate_groups(sig.reshape(len(idx), -1), cfg.dedup.bands, cfg.dedup.threshold)
        sizes = Counter(label.tolist())
        for j in np.flatnonzero(label != np.arange(len(idx))):
            decisions[ids[idx[j]]] = ("near_dup", f"near-duplicate of {ids[idx[label[j]]]}")
        multi = [s for s in sizes.values() if s > 1]
        stats.update(near_clusters=len(multi), near_largest_cluster=max(multi, default=1),
                     near_verified_pairs=int(len(edges)))
    return decisions, stats


def _passing(table: pa.Table, decisions: dict) -> pa.Table:
    """Rows that no cleaning rule rejected and no later decision dropped."""
    return table.filter(pa.array([not r and i not in decisions for i, r in
                                  zip(table.column("id").to_pylist(), table.column("reason").to_pylist())], pa.bool_()))


def _labels(table: pa.Table, cfg: DataConfig) -> list[str]:
    return table.column("intent").to_pylist() if cfg.split.stratify else [""] * table.num_rows


def _subset(table: pa.Table, keep) -> pa.Table:
    return table.filter(pa.array([bool(keep(i)) for i in table.column("id").to_pylist()], pa.bool_()))


def overlap_batch(batch: dict, reference: np.ndarray, n: int) -> dict:
    shares = [overlap(conversation_text(json.loads(m), json.loads(e)), reference, n)
              for m, e in zip(batch["messages"], batch["extra"])]
    return {"id": batch["id"], "overlap": np.array(shares, np.float64)}


def reference_texts(folder: str) -> list[str]:
    """Every record's text in another data stage output (any kind): what must not leak into this train split."""
    if not Path(folder).exists():
        raise UserError(f"split.contamination_reference: {folder} not found (a data stage's test/ folder)")
    texts = []
    for r in pq.read_table(folder).to_pylist():
        messages = r.get("messages") or r.get("prompt") or []
        texts.append(conversation_text(messages, {k: r[k] for k in ("chosen", "rejected", "answer") if r.get(k)}))
    return texts


def contaminated(splits: dict, cfg: DataConfig) -> dict:
    """id -> decision for train records whose n-grams are mostly in val/test or in the reference folders (for
    preference pairs and RL prompts: the SFT test split), checked on Ray Data."""
    n, threshold = cfg.split.contamination_ngram, cfg.split.contamination_threshold
    held_out = [ngram_hashes(conversation_text(json.loads(m), json.loads(e)), n) for s in ("val", "test")
                for m, e in zip(splits[s].column("messages").to_pylist(), splits[s].column("extra").to_pylist())]
    held_out += [ngram_hashes(t, n) for folder in cfg.split.contamination_reference for t in reference_texts(folder)]
    if threshold is None or not held_out or not splits["train"].num_rows:
        return {}
    reference = np.unique(np.concatenate(held_out))
    checked = ray.data.from_arrow(splits["train"].select(["id", "messages", "extra"])).map_batches(
        overlap_batch, batch_format="numpy", fn_kwargs=dict(reference=reference, n=n))
    scores = pa.concat_tables(ray.get(checked.to_arrow_refs()))
    return {rid: ("contaminated", f"{share:.2f} of its {n}-grams are in val/test or the reference")
            for rid, share in zip(scores.column("id").to_pylist(), scores.column("overlap").to_pylist())
            if share >= threshold}


def run(cfg: DataConfig) -> dict:
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    files, fmt = input_files(cfg.input.path, cfg.input.format)
    init_ray()
    out = cfg.out("data")
    for sub in ("train", "val", "test", "rejected"):
        shutil.rmtree(out / sub, ignore_errors=True)
    f, p = cfg.filters, cfg.pii
    filters = f.model_dump(include={"min_words", "max_words", "max_symbol_ratio", "max_digit_ratio",
                                    "max_dup_line_share", "min_distinct_share", "languages",
                                    "cjk_chars_per_word"})
    cleaning = dict(
        fields=cfg.input.fields, rules=cfg.normalize.rules, pii_action=p.action, words_file=p.sensitive_words_file,
        sensitive_action=p.sensitive_action, filters=filters, quality_model=f.quality_model,
        quality_threshold=f.quality_threshold, num_perm=cfg.dedup.num_perm, word_shingle=cfg.dedup.word_shingle,
        char_shingle=cfg.dedup.char_shingle, min_shingle=cfg.dedup.min_shingle, kind=cfg.input.kind,
        toxicity=f.toxicity.model_dump() if f.toxicity else None)
    ds = ray.data.read_binary_files(files, include_paths=True).flat_map(parse_file, fn_kwargs={"fmt": fmt})
    ds = ds.map_batches(clean_batch, batch_size=cfg.batch_size, batch_format="numpy", fn_kwargs=cleaning)
    table = pa.concat_tables(ray.get(ds.to_arrow_refs()))
    if table.num_rows == 0:
        raise UserError(f"input is empty: no records in {cfg.input.path}")
    table, renamed = unique_ids(table)

    reasons = table.column("reason").to_pylist()
    kept = table.filter(pa.array([not r for r in reasons]))
    decisions, dedup_stats = dedup_decisions(kept, cfg)
    alive = _subset(kept, lambda i: i not in decisions)
    split_of = assign(alive.column("id").to_pylist(), _labels(alive, cfg), tuple(cfg.split.ratios), cfg.seed)
    splits = {s: _subset(alive, lambda i, s=s: split_of[i] == s) for s in ("train", "val", "test")}
    decisions.update(contaminated(splits, cfg))
    for name, part in splits.items():  # the class cap last, so it holds for what is written
        part = _subset(part, lambda i: i not in decisions)
        for rid in over_cap(part.column("id").to_pylist(), _labels(part, cfg), cfg.split.max_class_share, cfg.seed):
            decisions[rid] = ("class_cap", f"{name} class over its {cfg.split.max_class_share:.0%} share")
        splits[name] = _subset(part, lambda i: i not in decisions)
    originals, augmented = table, None
    if cfg.augment.enabled:
        augmented, more = augment_train(splits, kept.column("hash").to_pylist(), cfg, cleaning)
        decisions.update(more)
        splits["train"] = pa.concat_tables([splits["train"], _passing(augmented, more)]).sort_by([("id", "ascending")])
        table = pa.concat_tables([table, augmented]).sort_by([("id", "ascending")])

    written = write_outputs(out, table, splits, decisions, cfg.input.kind)
    counts = manifest_counts(originals, splits, decisions, renamed)
    if augmented is not None:
        counts["augmented"] = augment_counts(augmented, decisions)
    local_inputs = [f for f in files if "://" not in f]
    manifest = write_manifest(out, cfg.model_dump(), local_inputs, outputs=file_hashes(written, out),
                              counts=counts, dedup=dedup_stats, versions=_versions(), started=started)
    print_summary(counts, dedup_stats, out)
    if cfg.wandb:
        log_summary("data", cfg.name, cfg.model_dump(), {**counts["after_stage"], **dedup_stats}, out)
    return manifest


AS_CLEANED = {"id": "id", "messages": "messages", "intent": "intent", "lang": "lang"}


def augment_train(splits: dict, kept_hashes: list[str], cfg: DataConfig, cleaning: dict) -> tuple[pa.Table, dict]:
    """Augmented copies of the train split (app/data/augment.py) through the same cleaning and filters on Ray
    Data, then an exact-duplicate check against every kept input record and each other, and the contamination
    check against val/test. Returns (the augmented rows, id -> decision for those that do not join train);
    a row that joins carries `augmented_from:<id>` in its flags."""
    records = [{"id": r["id"], "messages": json.loads(r["messages"]), "intent": r["intent"], "lang": r["lang"]}
               for r in splits["train"].to_pylist()]
    raw = [{"raw": json.dumps({k: m[k] for k in AS_CLEANED}, ensure_ascii=False),
            "source": f"augment:{m['augmented_from']}", "error": ""}
           for m in augmented_records(records, cfg.augment, cfg.seed)]
    if not raw:
        return pa.Table.from_pylist([], schema=PROCESSED), {}
    ds = ray.data.from_items(raw).map_batches(clean_batch, batch_size=cfg.batch_size, batch_format="numpy",
                                              fn_kwargs={**cleaning, "fields": AS_CLEANED})
    table = pa.concat_tables(ray.get(ds.to_arrow_refs())).sort_by([("id", "ascending")])
    flags = [",".join(filter(None, [f, f"augmented_from:{s.removeprefix('augment:')}"]))
             for f, s in zip(table.column("flags").to_pylist(), table.column("source").to_pylist())]
    table = table.set_column(table.schema.get_field_index("flags"), "flags", pa.array(flags, pa.string()))
    decisions, seen = {}, set(kept_hashes)
    for rid, reason, h in zip(*(table.column(c).to_pylist() for c in ("id", "reason", "hash"))):
        if not reason and h in seen:
            decisions[rid] = ("exact_dup", "augmented copy identical to a kept record")
        seen.add(h)
    alive = _passing(table, decisions)
    decisions.update(contaminated({"train": alive, "val": splits["val"], "test": splits["test"]}, cfg))
    return table, decisions


def augment_counts(augmented: pa.Table, decisions: dict) -> dict:
    ids, reasons = augmented.column("id").to_pylist(), augmented.column("reason").to_pylist()
    dropped = Counter(r or decisions[i][0] for i, r in zip(ids, reasons) if r or i in decisions)
    return {"made": len(ids), "kept": len(ids) - sum(dropped.values()), "dropped": dict(sorted(dropped.items()))}


def output_record(row: dict, kind: str) -> dict:
    """A processed row -> the record shape of its kind (app/records.py)."""
    messages, extra = json.loads(row["messages"]), json.loads(row["extra"])
    meta = {"id": row["id"], "intent": row["intent"], "lang": row["lang"], "flags": row["flags"]}
    if kind == "preference":
        labels = json.loads(row["labels"])
        return {**meta, "prompt": messages[:-1], "chosen": messages[-1]["content"], "rejected": extra["rejected"],
                **{k: labels.get(k) for k in PAIR_LABELS}}
    if kind == "prompt":
        return {**meta, "prompt": messages, "answer": extra.get("answer")}
    return {**meta, "messages": messages}


def write_outputs(out, table: pa.Table, splits: dict, decisions: dict, kind: str = "sft") -> list:
    written = []
    for name, rows in splits.items():
        written += write_parquet([output_record(r, kind) for r in rows.to_pylist()], SCHEMAS[kind], out / name)
    rejected = []
    for r in table.to_pylist():  # sorted by id
        reason, detail = (r["reason"], r["detail"]) if r["reason"] else decisions.get(r["id"], ("", ""))
        if reason:
            rejected.append({"id": r["id"], "reason": reason, "detail": detail, "source": r["source"],
                             "raw": r["raw"] or r["messages"]})
    written += write_parquet(rejected, REJECT_SCHEMA, out / "rejected")
    return written


def _versions() -> dict:
    import pyarrow
    return {"ray": ray.__version__, "pyarrow": pyarrow.__version__, "numpy": np.__version__,
            "raypost": getattr(app, "__version__", "0.1.0")}



