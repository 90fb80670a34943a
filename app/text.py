"""Script-aware text units shared by filters, dedup and the contamination check. Pure.

Latin text is measured in words; CJK text has no spaces, so each CJK character is one token and
`cjk_chars_per_word` (1.5, the mean length of a Chinese word) converts characters to words.
"""
from __future__ import annotations

import re

CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
CJK_CHAR = re.compile(f"[{CJK}]")
TOKEN = re.compile(f"[{CJK}]|[^\\W{CJK}]+")  # one CJK character, or a run of other word characters
ASCII_TOKEN = re.compile(r"\w+", re.ASCII)  # the same on ASCII text, three times faster


def tokens(text: str) -> list[str]:
    """Lower-cased Latin words and single CJK characters; punctuation and spaces dropped."""
    return (ASCII_TOKEN if text.isascii() else TOKEN).findall(text.lower())


def cjk_count(text: str) -> int:
    return 0 if text.isascii() else len(CJK_CHAR.findall(text))


def is_cjk_char(ch: str) -> bool:
    return bool(CJK_CHAR.match(ch))


def cjk_share(text: str) -> float:
    """Share of CJK characters among letters and CJK characters."""
    letters = sum(ch.isalpha() for ch in text)
    return len(CJK_CHAR.findall(text)) / letters if letters else 0.0


def word_count(text: str, cjk_chars_per_word: float = 1.5) -> int:
    toks = tokens(text)
    cjk = sum(1 for t in toks if len(t) == 1 and is_cjk_char(t))
    return (len(toks) - cjk) + round(cjk / cjk_chars_per_word)


def detect_lang(text: str) -> str:
    """'zh' when CJK characters are at least 30% of letters, 'en' for Latin letters, else 'other'.
    A script test, not a language model: enough to route English and Chinese."""
    share = cjk_share(text)
    if share >= 0.3:
        return "zh"
    latin = sum(ch.isascii() and ch.isalpha() for ch in text)
    letters = sum(ch.isalpha() for ch in text)
    return "en" if letters and latin / letters >= 0.7 else "other"
