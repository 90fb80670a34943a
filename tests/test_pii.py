import random

import pytest

from app.pii import SensitiveWords, cn_id_valid, luhn_valid, redact
from app.demo.generate import card_number, cn_id


@pytest.mark.parametrize("text,expected,tags", [
    ("mail amy.chen@example.com now", "mail [EMAIL] now", ["EMAIL"]),
    ("电话13812345678或+86 138-1234-5678", "电话[PHONE]或[PHONE]", ["PHONE", "PHONE"]),
    ("call +1 415 555 0134 today", "call [PHONE] today", ["PHONE"]),
    ("London +44 20 7946 0958", "London [PHONE]", ["PHONE"]),
    ("身份证110101199003074514", "身份证[ID]", ["ID"]),
    ("id 11010119900307002x ok", "id [ID] ok", ["ID"]),
    ("card 4111 1111 1111 1111 ok", "card [CARD] ok", ["CARD"]),
    ("card 4111-1111-1111-1111", "card [CARD]", ["CARD"]),
    ("server 192.168.1.20 is down", "server [IP] is down", ["IP"]),
])
def test_redaction(text, expected, tags):
    assert redact(text) == (expected, tags)


@pytest.mark.parametrize("text", [
    "order LH12345678 on 2026-07-12",     # order number and date
    "身份证110101199003074515",             # bad check character
    "card 4111 1111 1111 1112",            # fails Luhn
    "version 1.2.3.4.5 and 256.1.1.1",     # not IPv4 addresses
    "refund $1299.00 in 7 days",
])
def test_no_false_positives(text):
    assert redact(text) == (text, [])


def test_checksums_on_generated_values():
    rng = random.Random(5)
    for _ in range(100):
        ident, card = cn_id(rng), card_number(rng)
        assert cn_id_valid(ident) and redact(f"ID {ident}.")[1] == ["ID"]
        assert luhn_valid(card) and redact(f"pay {card}.")[1] == ["CARD"]
    assert not luhn_valid("4111111111111112") and not cn_id_valid("110101199003074515")


def test_sensitive_words_both_languages(tmp_path):
    words = SensitiveWords.from_file()
    assert words.find("This is a SCAM and 诈骗") == ["scam", "诈骗"]
    assert words.find("a scamp defrauded nobody") == []  # English entries are whole words
    path = tmp_path / "w.txt"
    path.write_text("# mine\n优惠券\nbad apple\n", encoding="utf-8")
    mine = SensitiveWords.from_file(path)
    assert mine.find("送你优惠券, a Bad Apple") == ["bad apple", "优惠券"] and mine.find("scam") == []
