"""Record shapes: one `id` travels with every record from raw input to eval output.

  raw         {id?, text | messages | context+response, intent?, lang?}  (columns mapped by input.fields)
  sft         {id, messages: [{role, content}], intent, lang, flags}     (the data stage's output)
  preference  {id, prompt: [messages], chosen: str, rejected: str, dimension?, rejected_kind?, intent, lang, flags}
              (PAIR_LABELS, where the source gives them: the reward head a pair trains, what makes the rejected
              answer worse)
  prompt      {id, prompt: [messages], answer?: str, intent, lang, flags}    (RL prompts; answer = reference)
The data stage writes each kind (input.kind) with its schema below; reward, DPO, PPO and GRPO read them.
"""
from __future__ import annotations

import pyarrow as pa

RAW_KEYS = ("id", "messages", "text", "context", "response", "intent", "lang", "prompt", "chosen", "rejected",
            "dimension", "rejected_kind", "answer", "reference")
PAIR_LABELS = ("dimension", "rejected_kind")
MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
SFT_SCHEMA = pa.schema([("id", pa.string()), ("messages", MESSAGES), ("intent", pa.string()),
                        ("lang", pa.string()), ("flags", pa.string())])
REJECT_SCHEMA = pa.schema([("id", pa.string()), ("reason", pa.string()), ("detail", pa.string()),
                           ("source", pa.string()), ("raw", pa.string())])
META = [("intent", pa.string()), ("lang", pa.string()), ("flags", pa.string())]
PREFERENCE_SCHEMA = pa.schema([("id", pa.string()), ("prompt", MESSAGES), ("chosen", pa.string()),
                               ("rejected", pa.string()), ("dimension", pa.string()), ("rejected_kind", pa.string()),
                               *META])
PROMPT_SCHEMA = pa.schema([("id", pa.string()), ("prompt", MESSAGES), ("answer", pa.string()), *META])
SCHEMAS = {"sft": SFT_SCHEMA, "preference": PREFERENCE_SCHEMA, "prompt": PROMPT_SCHEMA}
