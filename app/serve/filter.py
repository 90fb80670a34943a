"""The output safety filter: the data stage's PII redaction and sensitive-word list applied to answers.

Modes: `redact` (PII -> [EMAIL]/[PHONE]/..., listed words -> ***), `refuse` (PII redacted; an answer that
contains a listed word is replaced by a refusal, finish_reason `content_filter`), `off`. Streaming holds
back only what could still grow into a match: the trailing run of characters PII is written with (an
e-mail, a card or phone number in digit groups, the last English word) and, for Chinese entries of the
word list, their length minus one; a match is never split. Nothing is sent before it has been checked.
Pure: no ray, no torch.
"""
from __future__ import annotations

import re

from app.pii import SensitiveWords, pii_spans, redact

TAIL = re.compile(r"(?:[0-9+()-]+[ -])*[A-Za-z0-9._%+@()-]*$")
REFUSAL = "I can't help with that request."


class OutputFilter:
    def __init__(self, mode: str, words: SensitiveWords):
        self.mode, self.words = mode, words
        self.hold = max((len(w) - 1 for w in words.words if not w.isascii()), default=0)
        self.buffer = ""
        self.refused = False
        self.redacted = False   # some text was masked or redacted (the metrics count it)

    def feed(self, delta: str) -> str:
        """Add generated text; returns the checked text that may be sent now ('' once refused)."""
        if self.mode == "off":
            return delta
        self.buffer += delta
        if self.mode == "refuse" and self.words.spans(self.buffer):
            self.refused, self.buffer = True, ""
        if self.refused:
            return ""
        cut = min(TAIL.search(self.buffer).start(), len(self.buffer) - self.hold)
        for start, end in pii_spans(self.buffer) + self.words.spans(self.buffer):
            if start < cut < end:
                cut = start
        if cut <= 0:
            return ""
        ready, self.buffer = self.buffer[:cut], self.buffer[cut:]
        return self._clean(ready)

    def finish(self) -> str:
        """The rest of the answer, checked, once generation has ended."""
        if self.mode == "off" or self.refused:
            return ""
        ready, self.buffer = self.buffer, ""
        return self._clean(ready)

    def _clean(self, text: str) -> str:
        clean = self.words.mask(redact(text)[0])
        self.redacted |= clean != text
        return clean


def filter_text(mode: str, words: SensitiveWords, text: str) -> tuple[str, bool]:
    """(filtered whole answer, refused)."""
    f = OutputFilter(mode, words)
    out = f.feed(text) + f.finish()
    return (REFUSAL, True) if f.refused else (out, False)
