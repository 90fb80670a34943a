"""Text normalization, pure functions applied to every message before filtering and dedup.

Order: HTML tags and entities -> punctuation by script -> Unicode NFKC -> control characters ->
whitespace -> configured regex rules.

The width/punctuation rule, by the script of the character before the mark:
- after a Latin letter or digit, full-width marks ，。！？：；、． become ASCII , . ! ? : ; , . plus a space
  ("Thanks，see you。" -> "Thanks, see you.");
- NFKC then makes full-width letters and digits half-width (ＡＢＣ１２３ -> ABC123);
- after a CJK character, ASCII , . ! ? : ; ( ) become ，。！？：；（） ("您好,订单已发货." -> "您好，订单已发货。"),
  except a dot or comma inside a number (3.5元 stays).
Spaces between CJK characters, or around CJK punctuation, are removed: in Chinese they are export
artefacts, not word breaks.
"""
from __future__ import annotations

import html
import re
import unicodedata

from app.text import CJK

TAG = re.compile(r"<\s*(br|/p|/div|/li|/h\d|/tr)\b[^>]*>", re.I)
ANY_TAG = re.compile(r"<!--.*?-->|<\s*/?\s*[a-zA-Z][^<>]*>", re.S)
TO_CJK = {",": "，", ".": "。", "!": "！", "?": "？", ":": "：", ";": "；", "(": "（", ")": "）"}
TO_LATIN = dict(zip("，。！？：；、．", ",.!?:;,."))
CJK_PUNCT = re.compile(f"(?<=[{CJK}])[ \\t]*([,.!?:;()])(?![0-9])")
OPEN_PAREN = re.compile(f"\\((?=[{CJK}])")
LATIN_PUNCT = re.compile(r"(?<=[A-Za-z0-9Ａ-Ｚａ-ｚ０-９])([，。！？：；、．])[ \t\u3000]*")
CJK_MARKS = "，。！？：；、（）《》"
CJK_SPACE = re.compile(f"(?<=[{CJK}{CJK_MARKS}])[ \t]+(?=[{CJK}])|[ \t]+(?=[{CJK_MARKS}])|(?<=[{CJK_MARKS}])[ \t]+")


def strip_html(text: str) -> str:
    if "<" in text:
        text = TAG.sub("\n", text)
        text = ANY_TAG.sub("", text)
    return html.unescape(text) if "&" in text else text


def latin_punctuation(text: str) -> str:
    return LATIN_PUNCT.sub(lambda m: TO_LATIN[m.group(1)] + " ", text)


def cjk_punctuation(text: str) -> str:
    return OPEN_PAREN.sub("（", CJK_PUNCT.sub(lambda m: TO_CJK[m.group(1)], text))


def drop_control(text: str) -> str:
    """Remove control and format characters (zero-width spaces, BOM, bidi marks); keep newlines and tabs."""
    return "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch)[0] != "C")


def squeeze_whitespace(text: str) -> str:
    text = CJK_SPACE.sub("", text)
    text = re.sub(r"[ \t\u00a0]+", " ", text)
    lines = [line.strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def compile_rules(rules: list[tuple[str, str]]) -> list[tuple[re.Pattern, str]]:
    return [(re.compile(pattern), repl) for pattern, repl in rules]


def normalize(text: str, rules: list[tuple[re.Pattern, str]] = ()) -> str:
    text = strip_html(text)
    text = latin_punctuation(text)
    text = unicodedata.normalize("NFKC", text)
    text = cjk_punctuation(text)
    text = drop_control(text)
    text = squeeze_whitespace(text)
    for pattern, repl in rules:
        text = pattern.sub(repl, text)
    return text.strip()
