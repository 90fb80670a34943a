"""jobs.harvest: the serving request log and its feedback (app/serve/requestlog.py) -> training records.

    python -m jobs.harvest logs=runs/request-log
    python -m jobs.pipeline jobs/configs/pipeline_loop.yaml     # harvest -> data -> SFT -> eval + gate

Output runs/harvest-<name>/: dialogs.jsonl (conversations ending in an answer worth learning, the data
stage's `sft` input), preferences.jsonl ({prompt, chosen, rejected}, its `preference` input) and
manifest.json: counts, what was left out and why, and each record's lineage (the request id, the served
registry version). The data stage then dedups, checks PII again and drops what overlaps the test split.

Rules (a response's feedback rows are averaged; the last preferred answer counts):
  dialog: the answer, when its mean score >= min_score; the user's preferred answer, whatever the score
  pair:   preferred answer (chosen) vs the answer given (rejected); and for the same conversation, an answer
          scored >= min_score (chosen) vs one scored <= max_rejected_score (rejected)
Only chat requests become records (a completion has no conversation); a refused answer is never chosen.
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict

from pydantic import Field

from app.config import JobConfig, UserError
from app.runinfo import write_manifest
from app.serve.requestlog import read_jsonl


class HarvestConfig(JobConfig):
    logs: str = "runs/request-log"              # a serving logging.path
    name: str = "harvest"
    min_score: float = Field(0.5, ge=-1, le=1)  # feedback on -1..1 (stars: (rating - 3) / 2)
    max_rejected_score: float = Field(-0.5, ge=-1, le=1)


def run(cfg: HarvestConfig) -> dict:
    requests = {r["id"]: r for r in read_jsonl(cfg.logs, "requests-*.jsonl")}
    feedback = read_jsonl(cfg.logs, "feedback-*.jsonl")
    if not requests:
        raise UserError(f"no request log in {cfg.logs} (serve with logging.requests: true; see app/serve/requestlog.py)")
    dialogs, pairs, skipped = harvest(requests, feedback, cfg.min_score, cfg.max_rejected_score)
    out = cfg.out("harvest")
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("dialogs.jsonl", dialogs), ("preferences.jsonl", pairs)):
        (out / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    lineage = {r["id"]: {"request": r["request_id"], "version": r["version"]} for r in dialogs + pairs}
    summary = {"requests": len(requests), "feedback": len(feedback), "dialogs": len(dialogs), "pairs": len(pairs),
               "skipped": dict(skipped)}
    write_manifest(out, cfg.model_dump(mode="json"), [out / "dialogs.jsonl", out / "preferences.jsonl"],
                   **summary, lineage=lineage)
    print(json.dumps(summary))
    print(f"harvest: {len(dialogs)} dialogs, {len(pairs)} preference pairs -> {out}")
    return summary


def harvest(requests: dict[str, dict], feedback: list[dict], min_score: float, max_rejected: float
            ) -> tuple[list[dict], list[dict], Counter]:
    """(dialog records, preference pairs, left-out counts by reason): the rules of the module docstring."""
    scores, preferred, skipped = defaultdict(list), {}, Counter()
    for fb in feedback:
        if fb["id"] not in requests:
            skipped["feedback_for_unknown_id"] += 1
            continue
        scores[fb["id"]].append(fb["score"])
        if fb.get("preferred_answer"):
            preferred[fb["id"]] = fb["preferred_answer"]
    dialogs, pairs, by_prompt = [], [], defaultdict(list)
    for rid, fbs in scores.items():
        req = requests[rid]
        if req["route"] != "chat":
            skipped["not_chat"] += 1
            continue
        answer = req["answers"][0]
        given = answer["text"] if answer["finish_reason"] != "content_filter" else None
        score = sum(fbs) / len(fbs)
        lineage = {"request_id": rid, "version": req.get("version"), "source": "served"}
        if rid in preferred:
            dialogs.append({"id": f"served-{rid}", "messages": req["messages"] + [_assistant(preferred[rid])],
                            **lineage})
            pairs.append({"id": f"served-{rid}-preferred", "prompt": req["messages"], "chosen": preferred[rid],
                          "rejected": answer["text"], **lineage})
        elif given and score >= min_score:
            dialogs.append({"id": f"served-{rid}", "messages": req["messages"] + [_assistant(given)], **lineage})
        elif score > max_rejected:
            skipped["neutral_rating"] += 1
        by_prompt[json.dumps(req["messages"], ensure_ascii=False, sort_keys=True)].append((score, rid, given))
    for rated in by_prompt.values():  # the same conversation answered well and badly
        best = max((r for r in rated if r[2] and r[0] >= min_score), default=None)
        worst = min((r for r in rated if r[0] <= max_rejected), default=None)
        rejected = worst and requests[worst[1]]["answers"][0]["text"]
        if best and worst and best[2] != rejected:
            req = requests[best[1]]
            pairs.append({"id": f"served-{best[1]}-vs-{worst[1]}", "prompt": req["messages"], "chosen": best[2],
                          "rejected": rejected, "request_id": best[1], "version": req.get("version"),
                          "source": "served"})
    skipped["requests_without_feedback"] = len(requests) - len(scores)
    return dialogs, pairs, +skipped


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}
