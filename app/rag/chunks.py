"""Documents into retrieval chunks, and text into BM25 terms; pure (no model), Chinese aware.

    chunk_text(text, count_tokens, size=200, overlap=40) -> ["...", ...]
    terms("商品LM-1042的质保是几年？") -> ["商品", "lm-1042", "质保", "几年"]

Chunks are cut at sentence ends (. ! ? before a space, 。！？, line breaks) into pieces of at most `size`
tokens (a longer sentence is cut between words, or Chinese characters), each chunk starting with the last
`overlap` tokens' worth of sentences of the one before. Terms: Chinese runs segmented with jieba (search mode: words and their parts), Latin words and codes
lower-cased, punctuation and one-character Latin tokens dropped.
"""
from __future__ import annotations

import re
from typing import Callable

SENTENCE = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])|\n+")
CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+")
UNIT = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[^\s\u3400-\u9fff\uf900-\ufaff]+\s*|\s+")
WORD = re.compile(r"[0-9A-Za-z][0-9A-Za-z\-_.]*[0-9A-Za-z]|[0-9A-Za-z]")
STOP = {"的", "是", "了", "吗", "呢", "和", "the", "a", "an", "of", "is", "are", "to", "in", "and", "what", "how",
        "does", "do", "it", "for", "our"}


def sentences(text: str) -> list[str]:
    return [s.strip() for s in SENTENCE.split(text) if s and s.strip()]


def chunk_text(text: str, count_tokens: Callable[[str], int], size: int = 200, overlap: int = 40) -> list[str]:
    pieces = []
    for s in sentences(text):
        n = count_tokens(s)
        if n <= size:
            pieces.append((s, n))
        else:  # an over-long sentence: cut between words (Chinese: between characters)
            piece = ""
            for unit in UNIT.findall(s):
                if piece and count_tokens(piece + unit) > size:
                    pieces.append((piece.strip(), count_tokens(piece.strip())))
                    piece = ""
                piece += unit
            if piece.strip():
                pieces.append((piece.strip(), count_tokens(piece.strip())))
    chunks, current, used = [], [], 0
    for s, n in pieces:
        if current and used + n > size:
            chunks.append(_join(current))
            keep, kept = [], 0
            for prev, m in reversed(current):  # the overlap: the last sentences within `overlap` tokens
                if kept + m > overlap:
                    break
                keep.insert(0, (prev, m))
                kept += m
            current, used = keep, kept
        current.append((s, n))
        used += n
    if current:
        chunks.append(_join(current))
    return chunks


def _join(pieces: list[tuple[str, int]]) -> str:
    out = ""
    for s, _ in pieces:
        out += ("" if not out or CJK.match(s[:1]) or CJK.search(out[-1:]) else " ") + s
    return out


def terms(text: str) -> list[str]:
    import jieba
    out = []
    for part in re.split(f"({CJK.pattern})", text):
        if CJK.fullmatch(part):
            out += [w for w in jieba.lcut_for_search(part) if w not in STOP]
        else:
            out += [w.lower() for w in WORD.findall(part) if len(w) > 1 and w.lower() not in STOP]
    return out
