"""Incremental detokenization with stop strings. Pure: no ray, no torch.

A generated token sequence becomes text deltas that are safe to send: a delta never ends inside a
multi-byte character (CJK decoded from byte-level BPE shows U+FFFD until its last byte arrives) and never
contains the start of a stop string, so text cut at a stop string was never sent.
"""
from __future__ import annotations

from typing import Callable


class TextStream:
    def __init__(self, decode: Callable[[list[int]], str], stop: list[str] | None = None):
        self.decode = decode
        self.stop = [s for s in (stop or []) if s]
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add one token: (text now safe to send, whether a stop string ended the output)."""
        self.ids.append(token_id)
        self.text = self.decode(self.ids)
        hit = self._find_stop()
        if hit is not None:
            delta, self.sent = self.text[self.sent:hit], hit
            self.text = self.text[:hit]
            return delta, True
        safe = len(self.text) - self._held_back()
        delta = self.text[self.sent:safe] if safe > self.sent else ""
        self.sent = max(self.sent, safe)
        return delta, False

    def flush(self) -> str:
        """The text held back, once generation has ended for another reason (EOS, length)."""
        delta, self.sent = self.text[self.sent:], len(self.text)
        return delta.rstrip("\ufffd")

    def _find_stop(self) -> int | None:
        start = max(0, self.sent - max((len(s) for s in self.stop), default=0))
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def _held_back(self) -> int:
        """Characters at the end that must wait: an unfinished character or a possible stop-string prefix."""
        text, held = self.text, 0
        while held < len(text) and text[len(text) - held - 1] == "\ufffd":
            held += 1
        tail = text[:len(text) - held]
        prefix = max((k for s in self.stop for k in range(1, len(s)) if tail.endswith(s[:k])), default=0)
        return held + prefix
