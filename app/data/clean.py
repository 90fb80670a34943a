"""One raw row -> a cleaned record or a rejection with a reason code. Pure: no ray import.

Three kinds of record go through the same steps (input.kind): `sft` (messages ending with the assistant's
reply), `preference` (prompt messages, chosen, rejected) and `prompt` (prompt messages, an optional reference
answer, for RL). Each is held as `messages` (sft: the dialog; preference: prompt + the chosen reply; prompt:
the prompt) plus `extra` texts (rejected; answer). Steps, in order (the first that rejects names the reason):
  parse (malformed: not JSON, not a mapping, missing or mistyped fields)
  -> normalize every text (app/data/normalize.py) -> empty (a text with nothing left)
  -> PII in every text (pii: found, when the action is drop; else redacted)
  -> sensitive words in `messages` (sensitive, or a flag; a rejected reply may be bad on purpose: only flagged)
  -> quality filters on the last message (too_short, too_long, symbols, digits, repetition, language)
"""
from __future__ import annotations

import hashlib
import json

from app.chat import check_messages
from app.data.filters import quality_reason
from app.data.normalize import normalize
from app.pii import SensitiveWords, redact
from app.records import PAIR_LABELS


class Rejected(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def parse_row(raw: str) -> dict:
    try:
        row = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise Rejected("malformed", f"not JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(row, dict):
        raise Rejected("malformed", f"a JSON {type(row).__name__}, not an object")
    return row


def record_id(row: dict | None, raw: str, fields: dict) -> str:
    """The source's id when it has one, else a hash of the raw row."""
    value = row.get(fields.get("id", "id")) if row else None
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
        return str(value).strip()
    return "h-" + hashlib.sha256(raw.encode("utf-8", "replace")).hexdigest()[:16]


def _text(row: dict, fields: dict, key: str) -> str | None:
    value = row.get(fields.get(key, key))
    if value is None:
        return None
    if not isinstance(value, str):
        raise Rejected("malformed", f"field {fields.get(key, key)!r} is a {type(value).__name__}, not text")
    return value


def to_messages(row: dict, fields: dict) -> list[dict]:
    """The record shape: `messages`, or `context` + `response`, or `text` (a single assistant turn)."""
    source = fields.get("messages", "messages")
    if row.get(source) is not None:
        try:
            messages = check_messages(row[source])
        except ValueError as exc:
            raise Rejected("malformed", f"{source}: {exc}") from None
        if not any(m["role"] == "assistant" for m in messages) or messages[-1]["role"] != "assistant":
            raise Rejected("malformed", f"{source}: must end with an assistant reply")
        return messages
    context, response = _text(row, fields, "context"), _text(row, fields, "response")
    if response is not None:
        return ([{"role": "user", "content": context}] if context is not None else []) + \
            [{"role": "assistant", "content": response}]
    text = _text(row, fields, "text")
    if text is not None:
        return [{"role": "assistant", "content": text}]
    wanted = " or ".join(fields.get(k, k) for k in ("messages", "response", "text"))
    raise Rejected("malformed", f"no {wanted} field")


def _prompt_messages(row: dict, fields: dict) -> list[dict]:
    """A prompt: a message list ending with the user's turn, or a plain text (one user turn)."""
    source = fields.get("prompt", "prompt")
    value = row.get(source)
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if value is None:
        raise Rejected("malformed", f"no {source} field")
    try:
        messages = check_messages(value)
    except ValueError as exc:
        raise Rejected("malformed", f"{source}: {exc}") from None
    if messages[-1]["role"] != "user":
        raise Rejected("malformed", f"{source}: must end with a user turn")
    return messages


def to_record(row: dict, fields: dict, kind: str = "sft") -> tuple[list[dict], dict[str, str]]:
    """(messages, extra texts) of one record of `kind` (see the module docstring)."""
    if kind == "sft":
        return to_messages(row, fields), {}
    prompt = _prompt_messages(row, fields)
    if kind == "preference":
        chosen, rejected = _text(row, fields, "chosen"), _text(row, fields, "rejected")
        if chosen is None or rejected is None:
            raise Rejected("malformed", f"a preference pair needs {fields.get('chosen', 'chosen')} and "
                                        f"{fields.get('rejected', 'rejected')}")
        return prompt + [{"role": "assistant", "content": chosen}], {"rejected": rejected}
    answer = _text(row, fields, "answer")
    answer = answer if answer is not None else _text(row, fields, "reference")
    return prompt, ({"answer": answer} if answer is not None else {})


def clean(row: dict, fields: dict, rules=(), pii_action: str = "redact", sensitive: SensitiveWords | None = None,
          sensitive_action: str = "drop", filters: dict | None = None, kind: str = "sft") -> dict:
    """A parsed row (parse_row) -> a cleaned record {messages, extra, intent, lang, flags, labels (a preference
    pair's PAIR_LABELS that the row gives)}; raises Rejected."""
    messages, extra = to_record(row, fields, kind)
    intent, lang = _text(row, fields, "intent"), _text(row, fields, "lang")
    texts = [(m["role"], m, "content") for m in messages] + [(k, extra, k) for k in extra]
    for name, holder, key in texts:
        holder[key] = normalize(holder[key], rules)
        if not holder[key]:
            raise Rejected("empty", f"a {name} text is empty after normalization")
    flags = []
    if pii_action != "off":
        for _, holder, key in texts:
            holder[key], found = redact(holder[key])
            if found and pii_action == "drop":
                raise Rejected("pii", ",".join(sorted(set(found))))
            flags += [f"pii:{tag.lower()}" for tag in found]
    if sensitive is not None and sensitive_action != "off":
        hits = sorted({w for m in messages for w in sensitive.find(m["content"])})
        if hits and sensitive_action == "drop":
            raise Rejected("sensitive", ",".join(hits))
        flags += [f"sensitive:{w}" for w in hits + sorted({w for t in extra.values() for w in sensitive.find(t)})]
    if (why := quality_reason(messages[-1]["content"], **(filters or {}))):
        raise Rejected(*why)
    labels = {k: v.strip() for k in PAIR_LABELS if (v := _text(row, fields, k))} if kind == "preference" else {}
    return {"messages": messages, "extra": extra, "intent": (intent or "").strip(), "lang": (lang or "").strip(),
            "flags": ",".join(sorted(set(flags))), "labels": labels}


def conversation_text(messages: list[dict], extra: dict | None = None) -> str:
    """All of a record's text: what near-dedup and the contamination check compare."""
    return "\n".join([m["content"] for m in messages] + list((extra or {}).values()))


def content_hash(messages: list[dict], extra: dict | None = None) -> str:
    body = json.dumps([[m["role"], m["content"]] for m in messages] + sorted((extra or {}).items()),
                      ensure_ascii=False)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()
