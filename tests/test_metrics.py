"""Metrics against hand-computed values and against sacrebleu / rouge-score used directly."""
import math

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from app.metrics import (accuracy, bleu, exact_match, normalize_answer, perplexity, rouge,
                              text_scores, token_f1)
from app.tasks import final_number


def test_exact_match_and_f1_hand_computed():
    assert exact_match("The Paris.", "paris") == 1.0
    assert exact_match("Paris, France", "Paris") == 0.0
    assert token_f1("the cat sat on the mat", "a cat on a mat") == pytest.approx(2 * (3 / 4) * (3 / 3) / (3 / 4 + 1))
    assert token_f1("", "cat") == 0.0 and token_f1("", "") == 1.0
    assert normalize_answer("您的订单，已发货！") == list("您的订单已发货")
    assert exact_match("订单已发货。", "订单已发货") == 1.0
    assert token_f1("订单已发货", "您的订单已经发货") == pytest.approx(2 * (5 / 5) * (5 / 8) / (1 + 5 / 8))


def test_bleu_matches_sacrebleu_directly():
    preds = ["the cat is on the mat", "there is a dog in the garden"]
    refs = ["the cat is on the mat", "a dog is in the garden"]
    assert bleu(preds, refs) == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    assert bleu(["the cat is on the mat"], ["the cat is on the mat"]) == pytest.approx(100.0)
    zh_p, zh_r = ["您的订单已经发货了请注意查收"], ["您的订单已发货请注意查收"]
    assert bleu(zh_p, zh_r) == pytest.approx(sacrebleu.corpus_bleu(zh_p, [zh_r], tokenize="zh").score)
    assert 0 < bleu(zh_p, zh_r) < 100
    assert bleu([""], ["a reference"]) == 0.0


def test_rouge_english_matches_rouge_score_and_chinese_by_character():
    p, r = "the quick brown fox jumps", "the quick fox jumped over"
    ours = rouge([p], [r])
    ref = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"]).score(r, p)
    for name in ours:
        assert ours[name] == pytest.approx(ref[name].fmeasure)
    zh = rouge(["我喜欢猫"], ["我喜欢狗"])
    assert zh["rouge1"] == pytest.approx(0.75) and zh["rouge2"] == pytest.approx(2 / 3)
    assert zh["rougeL"] == pytest.approx(0.75)
    # rouge-score's own tokenizer drops Chinese entirely:
    assert rouge_scorer.RougeScorer(["rouge1"]).score("我喜欢狗", "我喜欢猫")["rouge1"].fmeasure == 0.0


def test_gsm8k_answers_accuracy_perplexity():
    assert final_number("She has 3 + 4 = 7 apples.\n#### 7") == "7"
    assert final_number("So the answer is 1,250.") == "1250"
    assert final_number("It costs $18.0 in total") == "18"
    assert final_number("no number") is None
    assert accuracy(["7", "8", None], ["7", "9", "1"]) == pytest.approx(1 / 3)
    assert perplexity(2 * math.log(4), 2) == pytest.approx(4.0)


def test_bad_input():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        text_scores(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no references"):
        bleu([], [])
    scores = text_scores(["", "exact answer"], ["something", "exact answer"])
    assert scores["exact_match"] == 0.5 and 0 < scores["f1"] < 1
