"""Record shapes: one `id` travels with every record from raw input to eval output.

  raw         {id, text | messages | context+response, intent?, lang?, source?}
  sft         {id, messages: [{role, content}], intent?}
  preference  {id, prompt: [messages], chosen: str, rejected: str}
  prompt      {id, prompt: [messages], reference?: str}
"""
from __future__ import annotations

import hashlib
import json

INTENTS = ("order_status", "refund", "shipping", "product_info", "account", "complaint", "invoice")
LANGS = ("en", "zh")


def content_id(record: dict, prefix: str = "r") -> str:
    """A stable id from content, for records that arrive without one."""
    body = json.dumps(record, ensure_ascii=False, sort_keys=True)
    return f"{prefix}-{hashlib.sha256(body.encode('utf-8')).hexdigest()[:16]}"
