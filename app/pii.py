"""PII detection and redaction, and the sensitive-word list. Pure.

Found: emails, phone numbers (mainland China mobiles with or without +86, and international numbers
written with a leading +), Chinese resident ID numbers (18 characters, valid birth date, ISO 7064 MOD 11-2
check character), payment card numbers (13-19 digits, spaces or dashes allowed, Luhn-valid), IPv4
addresses. Redaction replaces each with a tag: [EMAIL] [PHONE] [ID] [CARD] [IP].
"""
from __future__ import annotations

import re
from pathlib import Path

ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
DEFAULT_WORDS = Path(__file__).with_name("sensitive_words.txt")

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
CN_ID = re.compile(r"(?<![0-9A-Za-z])[1-9]\d{5}(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx]"
                   r"(?![0-9A-Za-z])")
CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
CN_PHONE = re.compile(r"(?<!\d)(?:\+?86[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2}(?!\d)")
INTL_PHONE = re.compile(r"(?<![0-9A-Za-z+])\+\d{1,3}(?:[ -]?\(?\d{1,4}\)?){2,5}(?!\d)")
IPV4 = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.])")


def cn_id_valid(number: str) -> bool:
    body, check = number[:17], number[17].upper()
    return "10X98765432"[sum(int(d) * w for d, w in zip(body, ID_WEIGHTS)) % 11] == check


def luhn_valid(number: str) -> bool:
    digits = [int(d) for d in re.sub(r"\D", "", number)][::-1]
    total = sum(d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2) for i, d in enumerate(digits))
    return total % 10 == 0


def _phone_digits_ok(match: str) -> bool:
    return 7 <= len(re.sub(r"\D", "", match)) <= 15


# (tag, pattern, validator), in order: numbers written with a leading + are phones, then ID numbers, then
# mainland mobiles (an 11-digit run, optionally after 86), then cards: digit-boundary lookarounds keep
# each pattern from matching inside another's longer digit run.
DETECTORS = [
    ("EMAIL", EMAIL, None),
    ("PHONE", INTL_PHONE, _phone_digits_ok),
    ("ID", CN_ID, cn_id_valid),
    ("PHONE", CN_PHONE, None),
    ("CARD", CARD, luhn_valid),
    ("IP", IPV4, None),
]


def pii_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every valid PII value in the text, in no particular order."""
    return [m.span() for _, pattern, valid in DETECTORS for m in pattern.finditer(text)
            if valid is None or valid(m.group(0))]


def find_pii(text: str) -> list[str]:
    """Tags of the PII kinds present, in detector order (a tag may repeat)."""
    return redact(text)[1]


def redact(text: str) -> tuple[str, list[str]]:
    """(text with each PII value replaced by its [TAG], the tags found)."""
    found: list[str] = []
    for tag, pattern, valid in DETECTORS:
        def sub(m, tag=tag, valid=valid):
            if valid is not None and not valid(m.group(0)):
                return m.group(0)
            found.append(tag)
            return f"[{tag}]"
        text = pattern.sub(sub, text)
    return text, found


class SensitiveWords:
    """A case-insensitive word list: English entries match whole words, Chinese entries anywhere."""

    def __init__(self, words: list[str]):
        words = sorted({w.strip() for w in words if w.strip() and not w.startswith("#")}, key=len, reverse=True)
        self.words = words
        parts = [rf"\b{re.escape(w)}\b" if w.isascii() else re.escape(w) for w in words]
        self.pattern = re.compile("|".join(parts), re.I) if parts else None

    @classmethod
    def from_file(cls, path: str | Path | None = None) -> "SensitiveWords":
        return cls(Path(path or DEFAULT_WORDS).read_text(encoding="utf-8").splitlines())

    def spans(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in self.pattern.finditer(text)] if self.pattern else []

    def mask(self, text: str) -> str:
        """Each listed word replaced by asterisks of its length."""
        return self.pattern.sub(lambda m: "*" * len(m.group(0)), text) if self.pattern else text

    def find(self, text: str) -> list[str]:
        return sorted({m.group(0).lower() for m in self.pattern.finditer(text)}) if self.pattern else []
