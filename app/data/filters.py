"""Quality filters, pure: each returns a reason code or None. The first failing rule names the rejection.

Codes: too_short, too_long, symbols, digits, repetition, language. Lengths count Latin words plus CJK
characters / 1.5 (app/text.py). The digit ratio allows 50%: Chinese is dense, so an order number
and a date already make 30% of a short reply. Repetition follows Gopher (Rae et al. 2021, table A1): duplicate
lines, the share of text in the most frequent 2-4-gram, and the share in duplicated 5-10-grams, measured
over tokens (words, or CJK characters) instead of bytes of whitespace-split words; short texts, which the
n-gram rules leave alone, need a quarter of their tokens distinct.
"""
from __future__ import annotations

import re
from collections import Counter

from app.text import detect_lang, tokens, word_count

JUNK = re.compile(r"[^\w\s.,!?;:'\"()\-/%$&+=@#*，。！？；：“”‘’（）、《》…·~]")
TOP_NGRAM = {2: 0.20, 3: 0.18, 4: 0.16}
DUP_NGRAM = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}


def symbol_ratio(text: str) -> float:
    """Share of non-space characters that are neither letters, digits nor ordinary punctuation."""
    chars = [c for c in text if not c.isspace()]
    return len(JUNK.findall(text)) / len(chars) if chars else 0.0


def digit_ratio(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    return sum(c.isdigit() for c in chars) / len(chars) if chars else 0.0


def duplicate_line_share(text: str) -> float:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return 1 - len(set(lines)) / len(lines) if lines else 0.0


def top_ngram_share(toks: list[str], n: int) -> float:
    """Share of characters covered by the most frequent n-gram (counted once per occurrence)."""
    grams = Counter(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))
    if not grams:
        return 0.0
    gram, count = grams.most_common(1)[0]
    return count * sum(map(len, gram)) / max(1, sum(map(len, toks))) if count > 1 else 0.0


def dup_ngram_share(toks: list[str], n: int) -> float:
    """Share of characters inside n-grams that occur more than once."""
    starts: dict[tuple, list[int]] = {}
    for i in range(len(toks) - n + 1):
        starts.setdefault(tuple(toks[i:i + n]), []).append(i)
    covered = [False] * len(toks)
    for idx in starts.values():
        if len(idx) > 1:
            for i in idx:
                covered[i:i + n] = [True] * n
    return sum(len(t) for t, c in zip(toks, covered) if c) / max(1, sum(map(len, toks)))


def repetition(text: str, max_dup_line_share: float = 0.3, min_tokens: int = 50,
               min_distinct_share: float = 0.25) -> str | None:
    """Gopher's rules; the n-gram ones only from `min_tokens` tokens on (Gopher's documents have 50+
    words; in a 30-word reply one repeated phrase would already trip them). Below that, a text of 10+
    tokens needs `min_distinct_share` distinct tokens: "buy now" twelve times has 0.08; of 17,291 texts
    of 10-49 tokens from GSM8K, HH-RLHF and the demo dialogs only "*cough*" x13 falls under 0.25 (the
    lowest else is a GSM8K solution at 0.31)."""
    if duplicate_line_share(text) > max_dup_line_share:
        return "duplicate lines"
    toks = tokens(text)
    if len(toks) >= 10 and (share := len(set(toks)) / len(toks)) < min_distinct_share:
        return f"distinct token share {share:.2f} < {min_distinct_share}"
    if len(toks) < min_tokens:
        return None
    for n, limit in TOP_NGRAM.items():
        if top_ngram_share(toks, n) > limit:
            return f"top {n}-gram share > {limit}"
    for n, limit in DUP_NGRAM.items():
        if dup_ngram_share(toks, n) > limit:
            return f"duplicated {n}-gram share > {limit}"
    return None


def quality_reason(text: str, min_words: int = 10, max_words: int = 200, max_symbol_ratio: float = 0.1,
                   max_digit_ratio: float = 0.5, max_dup_line_share: float = 0.3,
                   min_distinct_share: float = 0.25, languages: list[str] | None = None, cjk_chars_per_word: float = 1.5
                   ) -> tuple[str, str] | None:
    """(reason code, detail) for the first rule `text` fails, or None when it passes them all."""
    words = word_count(text, cjk_chars_per_word)
    if words < min_words:
        return "too_short", f"{words} words < {min_words}"
    if words > max_words:
        return "too_long", f"{words} words > {max_words}"
    if (r := symbol_ratio(text)) > max_symbol_ratio:
        return "symbols", f"symbol ratio {r:.2f} > {max_symbol_ratio}"
    if (r := digit_ratio(text)) > max_digit_ratio:
        return "digits", f"digit ratio {r:.2f} > {max_digit_ratio}"
    if (why := repetition(text, max_dup_line_share, min_distinct_share=min_distinct_share)):
        return "repetition", why
    if languages and (lang := detect_lang(text)) not in languages:
        return "language", f"{lang} not in {languages}"
    return None
