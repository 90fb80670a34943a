"""Record shapes: one `id` travels with every record from raw input to eval output.

  raw         {id?, text | messages | context+response, intent?, lang?}  (columns mapped by input.fields)
  sft         {id, messages: [{role, content}], intent, lang, flags}     (the data stage's output)
  preference  {id, prompt: [messages], chosen: str, rejected: str}
  prompt      {id, prompt: [messages], reference?: str}
"""
from __future__ import annotations

import pyarrow as pa

RAW_KEYS = ("id", "messages", "text", "context", "response", "intent", "lang")
MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
SFT_SCHEMA = pa.schema([("id", pa.string()), ("messages", MESSAGES), ("intent", pa.string()),
                        ("lang", pa.string()), ("flags", pa.string())])
REJECT_SCHEMA = pa.schema([("id", pa.string()), ("reason", pa.string()), ("detail", pa.string()),
                           ("source", pa.string()), ("raw", pa.string())])
