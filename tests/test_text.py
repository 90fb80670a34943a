"""Normalizers and filters on English and Chinese, with exact expected outputs."""
import pytest

from app.data.filters import dup_ngram_share, quality_reason, repetition, symbol_ratio
from app.data.normalize import compile_rules, normalize
from app.text import detect_lang, tokens, word_count


@pytest.mark.parametrize("raw,expected", [
    ("您好,订单已发货.", "您好，订单已发货。"),
    ("Thanks，see you。 Bye", "Thanks, see you. Bye"),
    ("ＯＲＤ１２３ ｈｅｌｌｏ！", "ORD123 hello!"),
    ("订单 已 发货 , 请查收 !", "订单已发货，请查收！"),
    ("价格是3.5元,谢谢", "价格是3.5元，谢谢"),
    ("（括号）和(括号)", "（括号）和（括号）"),
    ("我在 Paris 旅游.", "我在 Paris 旅游。"),
    ("e.g. 3.14, ok", "e.g. 3.14, ok"),
    ('<div class="reply"><p>Hello.<br/>World &amp; more</p>&nbsp;</div>', "Hello.\nWorld & more"),
    ("<p>您好，<b>欢迎</b>光临</p>", "您好，欢迎光临"),
    ("a\u200bb\x07c\ufeff", "abc"),
    ("Line1\n\n\n\nLine2   x\t\ty", "Line1\n\nLine2 x y"),
    ("　全角空格　", "全角空格"),
    ("Café ﬁne", "Café fine"),
])
def test_normalize(raw, expected):
    assert normalize(raw) == expected


def test_normalize_rules():
    rules = compile_rules([(r"LH\d{8}", "[ORDER]"), ("亲，", "")])
    assert normalize("亲，订单LH12345678已发货", rules) == "订单[ORDER]已发货"


def test_tokens_and_counts():
    assert tokens("Hello, World! 订单到了") == ["hello", "world", "订", "单", "到", "了"]
    assert word_count("one two three") == 3
    assert word_count("您的订单已发货请查收") == 7  # 10 CJK characters / 1.5
    assert word_count("订单 LH123 已发货") == 1 + 3  # one Latin word + 5 CJK characters / 1.5 -> 3
    assert detect_lang("您的订单已发货") == "zh" and detect_lang("Your order shipped") == "en"
    assert detect_lang("Ваш заказ отправлен") == "other"


EN_OK = "Your order left our warehouse today with UPS and should reach you within three business days."
ZH_OK = "您的订单已于今天由顺丰发出，预计三个工作日内送达，请注意查收短信通知。"


@pytest.mark.parametrize("text,reason", [
    (EN_OK, None), (ZH_OK, None),
    ("ok thanks", "too_short"), ("好的", "too_short"),
    (" ".join(["word"] * 30 + ["other"] * 180), "too_long"),
    ("很" * 301, "too_long"),
    ("Price list ###### §§§§ ^^^^ {{{{}}}} |||| ~~~~ order soon please now and here today ok", "symbols"),
    ("Codes 123456 789012 345678 901234 567890 123456 789012 345678 9012", "digits"),
    ("\n".join(["Thanks for waiting here."] * 4 + ["Your order is on its way now."]), "repetition"),
    (" ".join(["buy cheap lamps now"] * 15), "repetition"),
    ("请" + "买便宜台灯吧" * 20, "repetition"),
    (" ".join(["buy now"] * 12), "repetition"),  # 24 words: below Gopher's 50, caught by distinct share
])
def test_quality_reasons(text, reason):
    got = quality_reason(text)
    assert (got[0] if got else None) == reason


def test_language_filter():
    assert quality_reason(ZH_OK, languages=["en"])[0] == "language"
    assert quality_reason(ZH_OK, languages=["en", "zh"]) is None


def test_filter_parts():
    assert symbol_ratio("a@b") == pytest.approx(0.0)  # @ is ordinary in emails
    assert symbol_ratio("ab§§") == pytest.approx(0.5)
    assert dup_ngram_share("a b c d e a b c d e".split(), 5) == pytest.approx(1.0)
    assert repetition("short text twice short text twice") is None  # n-gram rules need 50+ tokens


def test_input_files_skip_nothing_silently(tmp_path):
    from app.config import UserError
    from app.data.io import file_format, input_files
    for name in ("a.jsonl", "b.csv", "c.parquet"):
        (tmp_path / name).write_text("")
    files, fmt = input_files(str(tmp_path), None)
    assert [file_format(f, fmt) for f in files] == ["jsonl", "csv", "parquet"]
    with pytest.raises(UserError, match=r"input.format is csv but 2 file\(s\).*a.jsonl.*c.parquet"):
        input_files(str(tmp_path), "csv")
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(UserError, match="cannot tell the format of 1 file.*notes.txt"):
        input_files(str(tmp_path), None)
    assert file_format(input_files(str(tmp_path / "notes.txt"), "jsonl")[0][0], "jsonl") == "jsonl"


def test_augment_operations_en_and_zh():
    import random

    from app.data.augment import augment_text, delete, load_synonyms, pieces, swap, synonym
    from app.data.config import AugmentConfig
    en, zh = "Where is my order LH12345678? Please check it quickly.", "请问我的订单到哪了？麻烦尽快帮忙查询一下。"
    for text in (en, zh):
        assert "".join(pieces(text)) == text
    assert "订单" in pieces(zh) and "查询" in pieces(zh)  # Chinese cut into words (jieba), not characters
    table = load_synonyms()
    assert "purchase" in table["order"] and "单子" in table["订单"]
    assert "".join(synonym(pieces(en), random.Random(0), 1.0, table)) == \
        "Where is my purchase LH12345678? Kindly look into it promptly."
    words = "one two three four five six seven eight nine ten " * 20
    kept = "".join(delete(pieces(words), random.Random(0), 0.05)).split()
    assert 170 <= len(kept) < 200 and "  " not in " ".join(kept)  # about 5% of 200 words gone
    swapped = "".join(swap(pieces(en), random.Random(0), 1))
    assert swapped != en and sorted(swapped) == sorted(en)
    cfg = AugmentConfig()
    a, b = (augment_text(zh, cfg.ops, random.Random(7), cfg) for _ in range(2))
    assert a == b and a != zh  # seeded
